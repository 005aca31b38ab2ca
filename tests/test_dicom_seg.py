"""DICOM SEG out of `napari-sam segment` on the shared CT, read back with
highdicom and pydicom; refusals; the dciodvfy validator when installed."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from napari_sam.cli import main
from napari_sam.dicom_seg import read_dicom_seg, source_headers, write_dicom_seg
from napari_sam.errors import InputError
from napari_sam.geometry import box_of_mask
from napari_sam.init_labels import labels_on_image
from napari_sam.io import read_image

NAMES = {1: "liver", 2: "spleen", 3: "stomach"}


def _prompts(ct_labels, ct_label_names) -> dict:
    z = 12

    def box(name):
        return list(box_of_mask(ct_labels[z] == ct_label_names[name]))

    return {
        "window": "soft-tissue",
        "objects": [
            {
                "id": 1,
                "name": "liver",
                "propagate": True,
                "range": [11, 13],
                "prompts": [{"slice": z, "box": box("liver")}],
            },
            {"id": 2, "name": "spleen", "prompts": [{"slice": z, "box": box("spleen")}]},
            {"id": 3, "name": "stomach", "color": [0, 200, 255], "prompts": [{"slice": z, "box": box("stomach")}]},
        ],
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, ct_dicom_dir, ct_labels, ct_label_names):
    """The same propagated segmentation written as NIfTI and as DICOM SEG by the CLI."""
    d = tmp_path_factory.mktemp("seg")
    (d / "p.json").write_text(json.dumps(_prompts(ct_labels, ct_label_names)))
    for name in ("seg.nii.gz", "seg.dcm"):
        assert (
            main(["segment", str(ct_dicom_dir), "--prompts", str(d / "p.json"), "--output", str(d / name), "--quiet"])
            == 0
        )
    return d


def test_seg_decodes_to_the_nifti_label_map(outputs, ct_volume):
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "seg.nii.gz")))
    assert set(np.unique(nifti)) == {0, 1, 2, 3} and (nifti[11:14] == 1).any(axis=(1, 2)).all()  # propagated
    seg = read_dicom_seg(outputs / "seg.dcm", ct_volume)  # frames placed by their referenced SOP Instance UIDs
    assert seg.labels.shape == nifti.shape and np.array_equal(seg.labels, nifti)
    own = read_dicom_seg(outputs / "seg.dcm")  # on the SEG's own grid (plane positions), then resampled
    assert own.labels.shape[0] < nifti.shape[0]  # empty frames were left out
    assert np.array_equal(labels_on_image(own, ct_volume).labels, nifti)
    assert seg.names == NAMES
    assert all(abs(a - b) <= 1 for a, b in zip(seg.colors[3], (0, 200, 255)))  # CIELab round trip


def test_seg_references_the_source_series(outputs, ct_volume):
    import highdicom as hd

    import napari_sam

    ds = pydicom.dcmread(outputs / "seg.dcm")
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    headers, notes = source_headers(ct_volume)  # this anonymised series lacks Study/Series UIDs: derived
    assert len(notes) == 2
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} == set(by_uid)
    # each frame names the CT image it was segmented on, at the same position
    for frame in ds.PerFrameFunctionalGroupsSequence:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        h = by_uid[str(src.ReferencedSOPInstanceUID)]
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(pos, [float(v) for v in h.ImagePositionPatient])
    segs = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert {n: str(s.SegmentLabel) for n, s in segs.items()} == NAMES
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT liver
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segs[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert segs[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # spleen
    alg = segs[1].SegmentationAlgorithmIdentificationSequence[0]
    assert segs[1].SegmentAlgorithmType == "SEMIAUTOMATIC" and segs[1].SegmentAlgorithmName == "napari-sam"
    assert alg.AlgorithmVersion == napari_sam.__version__ and "lite_medsam" in str(alg.AlgorithmParameters)
    assert all("RecommendedDisplayCIELabValue" in s for s in segs.values())
    assert hd.seg.segread(outputs / "seg.dcm").segment_numbers == [1, 2, 3]


def _copy_series(src, dst, study: str, series: str, shift_mm: float = 0.0):
    """The CT series copied with Study/Series/SOP UIDs filled in (and optionally moved along z)."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[series, f.name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + shift_mm
        ds.save_as(dst / f.name)
    return read_image(dst)


def test_seg_of_a_series_with_uids_references_them_and_other_series(tmp_path, ct_dicom_dir, ct_labels):
    study = "1.2.826.0.1.3680043.8.498.1"
    a = _copy_series(ct_dicom_dir, tmp_path / "a", study, study + ".1")
    labels = np.zeros(a.shape, np.uint16)
    labels[ct_labels == 5] = 7  # liver as object 7: BINARY renumbers it 1, with a note
    notes: list[str] = []
    write_dicom_seg(tmp_path / "a.dcm", labels, a, {7: "liver"}, model="m", notes=notes)
    assert len(notes) == 1 and "7->1" in notes[0]
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert ds.StudyInstanceUID == study and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == study + ".1"
    back = read_dicom_seg(tmp_path / "a.dcm", a)
    assert np.array_equal(back.labels, (labels > 0).astype(back.labels.dtype)) and back.names == {1: "liver"}
    # LABELMAP keeps the ids as they are
    write_dicom_seg(tmp_path / "l.dcm", labels, a, {7: "liver"}, encoding="LABELMAP")
    assert np.array_equal(read_dicom_seg(tmp_path / "l.dcm", a).labels, labels)
    # another series of the same study, 4 mm (2 slices) further: resampled, with a note saying so
    b = _copy_series(ct_dicom_dir, tmp_path / "b", study, study + ".2", shift_mm=4.0)
    notes = []
    moved = labels_on_image(read_dicom_seg(tmp_path / "l.dcm", b), b, notes)
    assert any("references series" in n and "resampled" in n for n in notes)
    assert np.array_equal(moved.labels[:-2], labels[2:]) and not moved.labels[-2:].any()
    # another study: refused
    c = _copy_series(ct_dicom_dir, tmp_path / "c", study + "9", study + ".3")
    with pytest.raises(InputError, match="another study"):
        labels_on_image(read_dicom_seg(tmp_path / "l.dcm", c), c)


def test_dcm_output_for_non_dicom_input_is_refused(tmp_path, data_dir, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 5, "box": [10, 10, 40, 40]}]}]}))
    out = tmp_path / "out.dcm"
    rc = main(["segment", str(data_dir / "mr_small" / "image.nii.gz"), "--prompts", str(p), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists() and len(err.splitlines()) == 1
    assert "needs a DICOM series" in err and "SOP Instance UID" in err


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed: apt-get install dicom3tools"
)
def test_dciodvfy_finds_no_error(outputs):
    proc = subprocess.run(["dciodvfy", str(outputs / "seg.dcm")], capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    assert "Segmentation" in report  # it recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
