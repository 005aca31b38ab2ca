"""`napari-sam segment` end to end on real data, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from napari_sam.evaluation import dice
from napari_sam.geometry import box_of_mask
from napari_sam.io import read_image


def test_segment_dicom_to_nifti_with_overview(tmp_path, ct_dicom_dir, ct_volume, ct_labels, ct_label_names):
    liver, spleen = ct_label_names["liver"], ct_label_names["spleen"]
    z = 12
    prompts = {
        "window": "soft-tissue",
        "objects": [
            {"id": 1, "name": "liver", "prompts": [{"slice": z, "box": list(box_of_mask(ct_labels[z] == liver))}]},
            {
                "id": 2,
                "name": "spleen",
                "window": [-160, 240],
                "prompts": [{"slice": z, "box": list(box_of_mask(ct_labels[z] == spleen))}],
            },
        ],
    }
    pfile = tmp_path / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    out, ov = tmp_path / "seg.nii.gz", tmp_path / "overview.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sam.cli",
            "segment",
            str(ct_dicom_dir),
            "--prompts",
            str(pfile),
            "--output",
            str(out),
            "--overview",
            str(ov),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stderr and "100%" in proc.stderr  # progress shown
    img = sitk.ReadImage(str(out))
    assert img.GetOrigin() == ct_volume.geometry.origin
    assert img.GetSpacing() == ct_volume.geometry.spacing
    assert img.GetDirection() == ct_volume.geometry.direction
    seg = sitk.GetArrayFromImage(img)
    assert dice(seg[z] == 1, ct_labels[z] == liver) > 0.95
    assert dice(seg[z] == 2, ct_labels[z] == spleen) > 0.93
    assert seg[:z].max() == 0 and seg[z + 1 :].max() == 0  # only prompted slices (no propagation asked)
    side = json.loads((tmp_path / "seg.json").read_text())
    assert side["labels"]["1"]["name"] == "liver" and side["labels"]["2"]["name"] == "spleen"
    assert ov.stat().st_size > 1000 and ov.read_bytes()[:4] == b"\x89PNG"


def test_segment_2d_tiff_with_clicks(tmp_path, data_dir):
    import tifffile

    lab = tifffile.imread(str(data_dir / "nuclei_2d" / "labels.tif"))
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    nid = int(ids[np.argmax(counts)])
    gt = lab == nid
    box = box_of_mask(gt)
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"id": 3, "name": "nucleus", "prompts": [{"box": list(box)}]}]}))
    out = tmp_path / "nuc.tif"
    from napari_sam.cli import main

    assert (
        main(
            ["segment", str(data_dir / "nuclei_2d" / "image.tif"), "--prompts", str(p), "--output", str(out), "--quiet"]
        )
        == 0
    )
    seg = tifffile.imread(str(out))
    assert seg.shape == gt.shape
    assert dice(seg == 3, gt) > 0.7
    assert read_image(out).array.shape == (1,) + gt.shape


def test_segment_2d_nuclei_with_zoom(tmp_path, data_dir):
    """`--zoom`: boxes on small nuclei are decoded on magnified crops, with
    better outlines than at the model's 256 px view of the whole image."""
    import tifffile

    from napari_sam.cli import main

    image = data_dir / "nuclei_2d" / "image.tif"
    truth = tifffile.imread(data_dir / "nuclei_2d" / "labels.tif")
    ids = [int(i) for i in np.unique(truth) if i][::25][:5]
    objects = [
        {"id": k + 1, "name": f"nucleus {i}", "prompts": [{"box": list(box_of_mask(truth == i))}]}
        for k, i in enumerate(ids)
    ]
    (tmp_path / "p.json").write_text(json.dumps({"objects": objects}))
    scores = {}
    for zoom in (False, True):
        out = tmp_path / f"zoom_{zoom}.tif"
        args = [
            "segment",
            str(image),
            "--prompts",
            str(tmp_path / "p.json"),
            "--output",
            str(out),
            "--quiet",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
        assert main(args + (["--zoom"] if zoom else [])) == 0
        got = tifffile.imread(out)
        scores[zoom] = float(np.mean([dice(got == k + 1, truth == i) for k, i in enumerate(ids)]))
    assert scores[True] > scores[False] + 0.03 and scores[True] > 0.85, scores
    assert any((tmp_path / "cache").glob("crop-*.zarr"))
