"""Geometry round trip: read an image, write a label map, read it back; print
the largest difference in origin, spacing and direction, per input format.

    python benchmarks/round_trip.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common import shared_data_dir
from napari_sam.io import read_image, write_labels


def geometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = sitk.ReadImage(str(path))
    return np.array(img.GetOrigin()), np.array(img.GetSpacing()), np.array(img.GetDirection())


def main() -> None:
    ct = shared_data_dir() / "ct_abdomen_dicom" / "dicom"
    vol = read_image(ct)
    tmp = Path(tempfile.mkdtemp())
    src_img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ct)))
    cases = {
        "DICOM series": (
            ct,
            (np.array(src_img.GetOrigin()), np.array(src_img.GetSpacing()), np.array(src_img.GetDirection())),
        )
    }
    # the same CT saved in each volume format, as acquired (axis-aligned) and
    # rotated 0.2 rad (oblique): NIfTI stores directions in float32, so an
    # oblique float64 direction from NRRD/MHA can only come back to ~1e-8
    c, s = np.cos(0.2), np.sin(0.2)
    for tag, direction in (("", src_img.GetDirection()), (" oblique", (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))):
        src_img.SetDirection(direction)
        for suffix in (".nii.gz", ".nrrd", ".mha"):
            p = tmp / f"ct{tag.strip()}{suffix}"
            sitk.WriteImage(src_img, str(p))
            cases[suffix + tag] = (p, geometry(p))
    print(f"{'input':16s} {'max |d origin| mm':>18s} {'max |d spacing|':>16s} {'max |d direction|':>18s} exact")
    for name, (path, (o, sp, d)) in cases.items():
        v = read_image(path) if name != "DICOM series" else vol
        out = write_labels(
            tmp / f"labels_{name.replace(' ', '_').strip('.')}.nii.gz",
            (v.array > 0).astype(np.uint8),
            v.geometry,
            {1: "body"},
            overwrite=True,
        )
        o2, sp2, d2 = geometry(out)
        diffs = [np.abs(o - o2).max(), np.abs(sp - sp2).max(), np.abs(d - d2).max()]
        print(f"{name:16s} {diffs[0]:18.3g} {diffs[1]:16.3g} {diffs[2]:18.3g} {all(x == 0 for x in diffs)}")


if __name__ == "__main__":
    main()
