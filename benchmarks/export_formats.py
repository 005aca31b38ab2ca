"""Result files for the clinic: size and write time of each output format on
the shared 20-slice CT (512 x 512 x 20), the figures of docs/export.md.

    python benchmarks/export_formats.py [--repeats 3]

Two label maps on the CT's grid: "3 objects" (liver on slices 11-13, spleen
and stomach on slice 12, the shape of the tests' propagated result) and "31
structures" (the shared reference labels, all 20 slices). Each is written as
NIfTI (.nii.gz + sidecar), Slicer .seg.nrrd, DICOM SEG BINARY and LABELMAP;
the time is the whole write (building, writing, fsync, reading back to
verify, renaming), median of the repeats. The reference for scale is the
NIfTI write, measured in the same run. The machine's load average is printed
(a shared 2-core machine: timings under load are slower than the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_sam.export import write_result  # noqa: E402
from napari_sam.io import read_image, read_labels_aligned, sidecar_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ct_abdomen_dicom"


def label_maps(volume) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
    import json

    ref = read_labels_aligned(DATA / "labels.nii.gz", volume)
    names = {int(k): v for k, v in json.loads((DATA / "labels.json").read_text()).items()}
    small = np.zeros(volume.shape, np.uint16)
    small[11:14][ref[11:14] == 5] = 1
    small[12][ref[12] == 1] = 2
    small[12][ref[12] == 6] = 3
    present = {int(i) for i in np.unique(ref) if i}
    return {
        "3 objects": (small, {1: "liver", 2: "spleen", 3: "stomach"}),
        "31 structures": (ref.astype(np.uint16), {i: n for i, n in names.items() if i in present}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    volume = read_image(DATA / "dicom")
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores)")
    print(f"{'label map':14s} {'format':22s} {'size':>10s} {'write (median)':>15s}")
    for what, (labels, names) in label_maps(volume).items():
        for fmt, suffix, enc in (
            ("NIfTI + sidecar", ".nii.gz", None),
            ("Slicer .seg.nrrd", ".seg.nrrd", None),
            ("DICOM SEG BINARY", ".dcm", "BINARY"),
            ("DICOM SEG LABELMAP", ".dcm", "LABELMAP"),
        ):
            times, size = [], 0
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / f"out{suffix}"
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    write_result(
                        out,
                        labels,
                        volume,
                        names,
                        model="lite_medsam",
                        overwrite=True,
                        notes=[],
                        seg_encoding=enc or "BINARY",
                    )
                    times.append(time.perf_counter() - t0)
                size = out.stat().st_size
                side = sidecar_path(out)
                if suffix == ".nii.gz" and side.exists():
                    size += side.stat().st_size
            print(f"{what:14s} {fmt:22s} {size / 1024:8.0f} kB {statistics.median(times):13.2f} s")


if __name__ == "__main__":
    main()
