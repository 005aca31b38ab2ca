"""``napari-sam embed`` on a local Dask cluster against one process, on the shared CT.

Embeds the same slices of the CT DICOM series into a cold cache three ways,
each a ``napari-sam embed`` process: plain (one process, its own threads),
``--workers 1`` and ``--workers 2`` (single-threaded worker processes; the
wall time includes starting the cluster and loading the model in each
worker). Prints wall time and slices per second for each, measured in the
same run, checks that the three cache entries hold the same slices, and
times a re-run on the warm cache (the cluster's fixed cost).

    PYTHONPATH=src python benchmarks/embed_cluster.py [--slices 0:11] [--out /tmp/embed_bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_SAM_DATA", ROOT.parent / "shared" / "data"))


def _embed(extra: list[str], cache: Path, slices: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sam.cli",
            "embed",
            str(DATA / "ct_abdomen_dicom" / "dicom"),
            "--slices",
            slices,
            "--cache-dir",
            str(cache),
            "--quiet",
            *extra,
        ],
        env=env,
        check=True,
    )
    return time.perf_counter() - t0


def _stored(cache: Path) -> np.ndarray:
    import zarr

    [entry] = list(cache.glob("*.zarr"))
    return np.asarray(zarr.open_array(str(entry / "crc"), mode="r")[:]) != 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", default="0:11")
    ap.add_argument("--out", default="/tmp/embed_bench")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    a, b = (int(v) for v in args.slices.split(":"))
    n = b - a + 1
    print(f"{n} CT slices (512 x 512); load average at start: {os.getloadavg()}", flush=True)
    stored = []
    for name, extra in (("one process", []), ("--workers 1", ["--workers", "1"]), ("--workers 2", ["--workers", "2"])):
        cache = root / name.replace(" ", "_").strip("-")
        wall = _embed(extra, cache, args.slices)
        stored.append(_stored(cache))
        print(f"{name}: wall {wall:.1f} s = {n / wall:.2f} slices/s; load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"same slices stored by all three: {all(np.array_equal(s, stored[0]) for s in stored)}")
    warm = _embed(["--workers", "2"], root / "workers_2", args.slices)
    print(
        f"--workers 2 again, all cached (the fixed cost: cluster start, model loads, image read and hash): "
        f"wall {warm:.1f} s; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
