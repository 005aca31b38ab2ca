"""`napari-sam segment IMAGE --init LABELS`: an existing segmentation (label
map, DICOM SEG, Slicer .seg.nrrd) as objects, corrected and re-propagated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.cli import main
from napari_sam.dicom_seg import write_dicom_seg
from napari_sam.evaluation import dice
from napari_sam.geometry import box_of_mask
from napari_sam.slicer_seg import write_slicer_seg


def test_init_from_a_label_map_on_another_grid(tmp_path, data_dir, ct_dicom_dir, ct_labels, ct_label_names, capsys):
    """The shared CT labels are stored on a y-flipped grid: resampled by physical
    position, each label an object with its name (from labels.json), unchanged."""
    out = tmp_path / "out.nii.gz"
    rc = main(
        [
            "segment",
            str(ct_dicom_dir),
            "--init",
            str(data_dir / "ct_abdomen_dicom" / "labels.nii.gz"),
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.array_equal(seg, ct_labels)
    side = json.loads((tmp_path / "out.json").read_text())
    assert side["labels"][str(ct_label_names["liver"])]["name"] == "liver"
    assert side["init"]["objects"][str(ct_label_names["aorta"])] == "aorta"


@pytest.mark.parametrize("fmt", ["dcm", "seg.nrrd"])
def test_init_corrected_and_repropagated(tmp_path, fmt, ct_dicom_dir, ct_volume, ct_labels, ct_label_names):
    liver = ct_labels == ct_label_names["liver"]
    spleen = ct_labels == ct_label_names["spleen"]
    init = np.zeros(ct_volume.shape, np.uint16)
    init[9:13][liver[9:13]] = 1
    damaged = liver[10].copy()
    damaged[:, : int(np.mean(np.nonzero(damaged)[1]))] = False  # half the liver missing on slice 10
    init[10] = np.where(damaged, 1, 0)
    init[12][spleen[12]] = 2
    names = {1: "liver", 2: "spleen"}
    path = tmp_path / f"init.{fmt}"
    if fmt == "dcm":
        write_dicom_seg(path, init, ct_volume, names, model="test")
    else:
        write_slicer_seg(path, init, ct_volume.geometry, names)
    # correct slice 10 with a box; re-propagate the liver up to slice 14
    prompts = {
        "objects": [
            {
                "id": 1,
                "propagate": True,
                "range": [9, 14],
                "prompts": [{"slice": 10, "box": list(box_of_mask(liver[10]))}],
            }
        ]
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "out.nii.gz"
    assert (
        main(
            [
                "segment",
                str(ct_dicom_dir),
                "--init",
                str(path),
                "--prompts",
                str(tmp_path / "p.json"),
                "--output",
                str(out),
                "--window",
                "soft-tissue",
                "--quiet",
            ]
        )
        == 0
    )
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    for z in (9, 11, 12):  # the labels' slices are key slices, kept as they are
        assert np.array_equal(seg[z] == 1, init[z] == 1), z
    assert dice(init[10] == 1, liver[10]) < 0.75 < 0.9 < dice(seg[10] == 1, liver[10])  # corrected
    for z in (13, 14):  # re-propagated past the labelled extent
        assert dice(seg[z] == 1, liver[z]) > 0.85, z
    assert not (seg[:9] == 1).any() and not (seg[15:] == 1).any()  # the range
    assert np.array_equal(seg == 2, init == 2)  # the spleen, untouched
    side = json.loads((tmp_path / "out.json").read_text())
    assert side["labels"]["1"]["name"] == "liver" and side["labels"]["2"]["name"] == "spleen"


def test_segment_needs_prompts_or_init(tmp_path, ct_dicom_dir, capsys):
    rc = main(["segment", str(ct_dicom_dir), "--output", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "segment needs --prompts, --text, --init or --session" in capsys.readouterr().err


def test_prompts_combine_with_labels_by_id():
    """Rules of docs/export.md: same id corrects (its prompted slices leave the
    label's mask out; name and colour kept unless given), other ids are new."""
    from napari_sam.init_labels import init_objects
    from napari_sam.io import Geometry
    from napari_sam.labelset import LabelSet
    from napari_sam.prompts import parse_prompts

    lab = np.zeros((5, 20, 20), np.uint16)
    lab[1:4, 2:8, 2:8] = 3
    lab[2, 10:15, 10:15] = 4
    labels = LabelSet(lab, Geometry(), {3: "liver", 4: "spleen"}, {3: (1, 2, 3)})
    prompts = parse_prompts(
        {
            "objects": [
                {"id": 3, "propagate": True, "range": [0, 4], "prompts": [{"slice": 2, "box": [2, 2, 9, 9]}]},
                {"id": 9, "name": "kidney", "prompts": [{"slice": 0, "box": [1, 1, 5, 5]}]},
                {"id": 4, "name": "lien", "prompts": []},
            ]
        },
        allow_empty=True,
    )
    combined, masks = init_objects(labels, prompts)
    objects = combined.objects
    by_id = {o.id: o for o in objects}
    assert [o.id for o in objects] == [3, 4, 9]
    assert by_id[3].name == "liver" and by_id[3].color == (1, 2, 3) and by_id[3].propagate
    assert sorted(masks[3]) == [1, 3]  # slice 2 is prompted: the prompt wins there
    assert np.array_equal(masks[3][1], lab[1] == 3)
    assert by_id[4].name == "lien" and sorted(masks[4]) == [2]
    assert by_id[9].name == "kidney" and 9 not in masks
    with pytest.raises(Exception, match="non-empty"):
        parse_prompts({"objects": [{"id": 1, "prompts": []}]})  # without --init: still refused


def test_labels_elsewhere_in_space_are_refused(ct_volume):
    from napari_sam.errors import InputError
    from napari_sam.init_labels import labels_on_image
    from napari_sam.io import Geometry
    from napari_sam.labelset import LabelSet

    far = Geometry((1.0, 1.0, 1.0), (5000.0, 5000.0, 5000.0))
    with pytest.raises(InputError, match="no labelled voxel lies inside the image"):
        labels_on_image(LabelSet(np.ones((3, 4, 4), np.uint16), far), ct_volume)
