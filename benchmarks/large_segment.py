"""Memory of ``napari-sam segment`` on volumes read lazily, against the volume's size.

Builds OME-Zarr volumes of N slices of 512 x 512 float64 (the shared MR's 20
slices placed at the middle, the rest zarr's fill value so the files stay
small) and segments each with the same prompts (liver propagated over 3
slices, spleen on one) in its own ``napari-sam segment ... --output OUT.zarr``
process; prints each process's peak RSS and wall time, next to a plain
in-memory ``segment`` of the 20 slices alone (NIfTI in, NIfTI out) measured in
the same run, and checks that every run gives the same labels.

    PYTHONPATH=src python benchmarks/large_segment.py [--slices 20,600,3000] [--out /tmp/large_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from napari_sam.sample_prompts import mr_liver_spleen, shifted

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_SAM_DATA", ROOT.parent / "shared" / "data"))
PROMPTS = mr_liver_spleen(window=[0, 600])
SIDE = 512


def _run(args: list) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of one ``napari-sam`` process."""
    peak, wall, _ = run_cli([*args, "--quiet"])
    return peak, wall


def main() -> None:
    import SimpleITK as sitk
    import zarr

    from napari_sam.io import read_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", default="20,600,3000", help="volume depths to try")
    ap.add_argument("--out", default="/tmp/large_bench")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    mr = read_image(DATA / "mr_small" / "image.nii.gz").array
    sub = np.zeros((20, SIDE, SIDE), np.float64)
    sub[:, : mr.shape[1], : mr.shape[2]] = mr
    img = sitk.GetImageFromArray(sub)
    img.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(img, str(root / "sub.nii.gz"))
    (root / "p.json").write_text(json.dumps(PROMPTS))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    peak, wall = _run(
        [
            "segment",
            root / "sub.nii.gz",
            "--prompts",
            root / "p.json",
            "--output",
            root / "ref.nii.gz",
            "--cache-dir",
            root / "cache_ref",
        ]
    )
    want = read_image(root / "ref.nii.gz").array
    print(
        f"in memory, 20 slices ({sub.nbytes / 2**30:.2f} GiB): peak RSS {peak:.0f} MiB, wall {wall:.1f} s", flush=True
    )
    for n in (int(v) for v in args.slices.split(",")):
        k0 = (n - 20) // 2
        store = root / f"v{n}.ome.zarr"
        g = zarr.open_group(str(store), mode="w")
        arr = g.create_array("0", shape=(n, SIDE, SIDE), chunks=(1, SIDE, SIDE), dtype="float64", fill_value=0.0)
        arr[k0 : k0 + 20] = sub
        g.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"],
                    "datasets": [
                        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [3.0, 3.0, 3.0]}]}
                    ],
                }
            ],
        }
        (root / f"p{n}.json").write_text(json.dumps(shifted(PROMPTS, k0)))
        peak, wall = _run(
            [
                "segment",
                store,
                "--prompts",
                root / f"p{n}.json",
                "--output",
                root / f"o{n}.zarr",
                "--cache-dir",
                root / f"cache{n}",
            ]
        )
        out = zarr.open_array(str(root / f"o{n}.zarr"), mode="r")
        same = np.array_equal(out[k0 : k0 + 20], want) and out.nchunks_initialized == sum(
            1 for z in range(20) if want[z].any()
        )
        print(
            f"lazy, {n} slices ({arr.nbytes / 2**30:.2f} GiB image, {out.nbytes / 2**30:.2f} GiB labels): "
            f"peak RSS {peak:.0f} MiB, wall {wall:.1f} s, labels as in memory: {same}; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
