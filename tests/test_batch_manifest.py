"""Batch logic without a cluster: the manifest, finished cases, and all-or-nothing case outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_sam import outputs
from napari_sam.batch_manifest import (BatchSettings, Case, case_settings, input_hashes, is_finished,
                                       read_manifest)
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
    m.write_text("image,prompts,output,window\na.nii.gz,p.json,out/a.nii.gz,soft-tissue\n\n"
                 "/abs/b.tif,,out/b.tif,\n")
    a, b = read_manifest(m)
    assert a.image == sub / "a.nii.gz" and a.prompts == sub / "p.json" and a.output == sub / "out" / "a.nii.gz"
    assert (a.mode, a.window, a.row) == ("segment", "soft-tissue", 1)
    assert b.image == Path("/abs/b.tif") and b.mode == "auto" and b.prompts is None and b.row == 3


@pytest.mark.parametrize("text, match", [
    ("imgae,prompts,output\n", "unknown column 'imgae'; did you mean 'image'"),
    ("image,prompts,output,modes\na,b,c.tif,auto\n", "did you mean 'mode'"),
    ("image,output\n", "no cases"),
    ("image,prompts\na,b\n", "missing column 'output'"),
    ("image,output,mode\na,o.tif,segmnet\n", "did you mean 'segment'"),
    ("image,output,mode\na,o.tif,segment\n", "needs a prompts file"),
    ("image,output\na,o.png\n", "must end in one of"),
    ("image,output\na,o.tif\nb,./o.tif\n", "rows 1 and 2 write the same output"),
])
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
    return Case(row=1, image=tmp_path / "img.tif", output=tmp_path / "out" / "lab.nii.gz", mode="segment",
                prompts=tmp_path / "p.json")


def _write(case: Case, settings: BatchSettings, labels: np.ndarray) -> str:
    return write_case_outputs(case.output, labels, Geometry(), {1: "a"}, None, {"source": "x"},
                              {"inputs": input_hashes(case), "settings": case_settings(case, settings)})


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
    left = [case.output.with_name(".lab.nii.gz.1234abcd.partial.nii.gz"),
            case.output.with_name(".lab.nii.gz.1234abcd.partial.json")]
    for p in left:
        p.write_bytes(b"half")
    assert remove_partials(case.output) == 2 and not any(p.exists() for p in left)
    assert case.output.exists()
