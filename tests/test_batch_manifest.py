"""Batch logic without a cluster: the manifest, finished cases, and all-or-nothing case outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_sam import outputs
from napari_sam.batch_manifest import BatchSettings, Case, case_settings, input_hashes, is_finished, read_manifest
from napari_sam.batch_outputs import remove_partials, write_case_outputs
from napari_sam.errors import InputError, NapariSamError
from napari_sam.io import Geometry


def _manifest(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


def test_manifest_resolves_relative_paths_and_modes(tmp_path: Path) -> None:
    sub = tmp_path / "cohort"
    sub.mkdir()
    m = sub / "m.csv"
    m.write_text("image,prompts,output,window\na.nii.gz,p.json,out/a.nii.gz,soft-tissue\n\n/abs/b.tif,,out/b.tif,\n")
    a, b = read_manifest(m)
    assert a.image == sub / "a.nii.gz" and a.prompts == sub / "p.json" and a.output == sub / "out" / "a.nii.gz"
    assert (a.mode, a.window, a.row) == ("segment", "soft-tissue", 1)
    assert b.image == Path("/abs/b.tif") and b.mode == "auto" and b.prompts is None and b.row == 3


@pytest.mark.parametrize(
    "text, match",
    [
        ("imgae,prompts,output\n", "unknown column 'imgae'; did you mean 'image'"),
        ("image,prompts,output,modes\na,b,c.tif,auto\n", "did you mean 'mode'"),
        ("image,output\n", "no cases"),
        ("image,prompts\na,b\n", "missing column 'output'"),
        ("image,output,mode\na,o.tif,segmnet\n", "did you mean 'segment'"),
        ("image,output,mode\na,o.tif,segment\n", "needs a prompts file"),
        ("image,output\na,o.png\n", "must end in one of"),
        ("image,output\na,o.tif\nb,./o.tif\n", "rows 1 and 2 write the same output"),
    ],
)
def test_manifest_refuses_bad_input(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read_manifest(_manifest(tmp_path, text))


def test_cli_batch_bad_manifest_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from napari_sam.cli import main

    assert main(["batch", str(_manifest(tmp_path, "image,outptu\n"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'output'" in err[0]


def _case(tmp_path: Path) -> Case:
    (tmp_path / "img.tif").write_bytes(b"pretend image")
    (tmp_path / "p.json").write_text("{}")
    return Case(
        row=1,
        image=tmp_path / "img.tif",
        output=tmp_path / "out" / "lab.nii.gz",
        mode="segment",
        prompts=tmp_path / "p.json",
    )


def _write(case: Case, settings: BatchSettings, labels: np.ndarray) -> str:
    return write_case_outputs(
        case.output,
        labels,
        Geometry(),
        {1: "a"},
        None,
        {"source": "x"},
        {"inputs": input_hashes(case), "settings": case_settings(case, settings)},
    )


def test_finished_case_needs_same_inputs_settings_and_output(tmp_path: Path) -> None:
    case, settings = _case(tmp_path), BatchSettings()
    labels = np.zeros((2, 8, 9), np.uint8)
    labels[1, 2:5, 3:6] = 1
    assert not is_finished(case, settings)
    _write(case, settings, labels)
    assert is_finished(case, settings)
    assert not is_finished(case, BatchSettings(model="sam_vit_b"))
    assert not is_finished(Case(**{**case.__dict__, "window": "lung"}), settings)
    case.prompts.write_text('{"objects": []}')
    assert not is_finished(case, settings)
    case.prompts.write_text("{}")
    assert is_finished(case, settings)
    case.output.write_bytes(case.output.read_bytes()[:-3])  # a damaged output
    assert not is_finished(case, settings)


def test_case_outputs_all_or_nothing_when_verification_fails(tmp_path: Path, monkeypatch) -> None:
    case, settings = _case(tmp_path), BatchSettings()
    labels = np.ones((1, 6, 6), np.uint8)

    def differs(tmp, expected, geometry):
        raise ValueError("voxel values differ from what was written")

    monkeypatch.setattr(outputs, "_read_back_label_map", differs)
    with pytest.raises(NapariSamError, match="does not read back"):
        _write(case, settings, labels)
    assert sorted(os.listdir(case.output.parent)) == []


def test_case_outputs_follow_umask_and_partials_are_removed(tmp_path: Path) -> None:
    case, settings = _case(tmp_path), BatchSettings()
    old = os.umask(0o027)
    try:
        digest = _write(case, settings, np.ones((1, 6, 6), np.uint8))
    finally:
        os.umask(old)
    assert (case.output.stat().st_mode & 0o777) == 0o640
    side = json.loads((case.output.parent / "lab.json").read_text())
    assert side["batch"]["output_sha256"] == digest and side["source"] == "x"
    left = [
        case.output.with_name(".lab.nii.gz.1234abcd.partial.nii.gz"),
        case.output.with_name(".lab.nii.gz.1234abcd.partial.json"),
    ]
    for p in left:
        p.write_bytes(b"half")
    assert remove_partials(case.output) == 2 and not any(p.exists() for p in left)
    assert case.output.exists()


def test_manifest_takes_slicer_and_dicom_seg_outputs_and_refuses_zarr(tmp_path: Path) -> None:
    a, b = read_manifest(_manifest(tmp_path, "image,prompts,output\nct,p.json,o/a.seg.nrrd\nct,p.json,o/b.dcm\n"))
    assert a.output.name == "a.seg.nrrd" and b.output.name == "b.dcm"
    with pytest.raises(InputError, match=r"must end in one of .*\.seg\.nrrd, \.dcm"):
        read_manifest(_manifest(tmp_path, "image,output\na.zarr,o.zarr\n"))


def test_slicer_seg_case_output_with_its_batch_record(tmp_path: Path) -> None:
    from napari_sam.slicer_seg import read_slicer_seg

    case = Case(**{**_case(tmp_path).__dict__, "output": tmp_path / "out" / "lab.seg.nrrd"})
    labels = np.zeros((3, 8, 9), np.uint8)
    labels[1, 2:5, 3:6], labels[2, 1:3, 1:3] = 4, 7
    geometry = Geometry((0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
    digest = write_case_outputs(
        case.output,
        labels,
        geometry,
        {4: "liver", 7: "aorta"},
        None,
        {"source": "x"},
        {"inputs": input_hashes(case), "settings": case_settings(case, BatchSettings())},
    )
    seg = read_slicer_seg(case.output)
    assert np.array_equal(seg.labels, labels) and seg.names == {4: "liver", 7: "aorta"}
    side = json.loads((case.output.parent / "lab.seg.json").read_text())
    assert side["batch"]["output_sha256"] == digest
    assert is_finished(case, BatchSettings()) and sorted(os.listdir(case.output.parent)) == [
        "lab.seg.json",
        "lab.seg.nrrd",
    ]


def test_dicom_seg_case_output_of_the_ct_series(tmp_path: Path, ct_dicom_dir: Path, ct_volume) -> None:
    import pydicom

    case = Case(row=1, image=ct_dicom_dir, output=tmp_path / "seg.dcm", mode="segment", prompts=_case(tmp_path).prompts)
    labels = np.zeros(ct_volume.shape, np.uint8)
    labels[10, 200:260, 150:230] = 5
    write_case_outputs(
        case.output,
        labels,
        ct_volume.geometry,
        {5: "liver"},
        None,
        {},
        {"inputs": input_hashes(case), "settings": case_settings(case, BatchSettings())},
        volume=ct_volume,
        model="lite_medsam",
    )
    ds = pydicom.dcmread(case.output)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "liver"
    assert is_finished(case, BatchSettings()) and (tmp_path / "seg.json").is_file()


def test_dicom_seg_case_of_a_non_dicom_image_fails_with_one_line(tmp_path: Path, data_dir: Path) -> None:
    from napari_sam.batch_cases import run_case

    (tmp_path / "p.json").write_text(
        json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 3, "box": [2, 2, 9, 9]}]}]})
    )
    case = Case(
        row=1,
        image=data_dir / "mr_small" / "image.nii.gz",
        output=tmp_path / "o" / "seg.dcm",
        mode="segment",
        prompts=tmp_path / "p.json",
    )
    rec = run_case(case, BatchSettings(), backend=None)  # refused before any model work
    assert rec["status"] == "failed" and "DICOM SEG output needs a DICOM series" in rec["reason"]
    assert "\n" not in rec["reason"] and not case.output.exists()


def test_precision_is_recorded_and_a_changed_one_reruns_the_case(tmp_path: Path) -> None:
    case = _case(tmp_path)
    _write(case, BatchSettings(precision="bf16"), np.ones((1, 6, 6), np.uint8))
    assert case_settings(case, BatchSettings(precision="bf16"))["precision"] == "bf16"
    assert is_finished(case, BatchSettings(precision="bf16"))
    assert not is_finished(case, BatchSettings()) and not is_finished(case, BatchSettings(precision="fp16"))


def test_cli_batch_bad_precision_refused_before_a_cluster_starts(tmp_path: Path, capsys) -> None:
    from napari_sam.cli import main

    m = _manifest(tmp_path, "image,output\na.tif,o.tif\n")
    assert main(["batch", str(m), "--precision", "bf61", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision 'bf61'" in err[0]
