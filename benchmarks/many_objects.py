"""Many single-slice box objects through ``segment_volume`` with LiteMedSAM.

Prints objects/s (whole ``segment_volume``: embeddings of the slices plus the
decoding and painting of every object) and the resident memory growth per
object, for N objects spread over the slices of a synthetic (Z, 256, 256)
volume; then the same for a few hundred objects on the per-object path
(batching switched off) as the reference, and how many of those objects'
masks the batched path gives identically.

    python benchmarks/many_objects.py [N] [K]   # default 10000 objects, 300 for the reference
"""

from __future__ import annotations

import gc
import sys
import time

import torch  # noqa: F401  isort: skip  (before anything that may bring napari)

import numpy as np

from napari_sam import segmentation as seg
from napari_sam.annotation import replay
from napari_sam.io import Volume
from napari_sam.models.registry import load_model
from napari_sam.prompts import parse_prompts


def make_case(n: int, z: int = 5, size: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 20, (z, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(z):  # bright blobs to segment
        for r, c in rng.integers(20, size - 20, (40, 2)):
            vol[k][(yy - r) ** 2 + (xx - c) ** 2 < 64] += 300
    objs = []
    for i in range(n):
        r, c = rng.integers(0, size - 24, 2)
        h, w = rng.integers(6, 24, 2)
        objs.append({"id": i + 1, "prompts": [{"slice": int(i % z), "box": [int(r), int(c), int(r + h), int(c + w)]}]})
    return Volume(vol), parse_prompts({"objects": objs, "window": [-50, 350]})


def rss() -> int:
    """Resident set size of this process, bytes (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def peak_rss() -> int:
    """Peak resident set size of this process so far, bytes (Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(backend, n: int) -> tuple[float, float, seg.SegmentationResult]:
    volume, prompts = make_case(n)
    gc.collect()
    rss0 = rss()
    t0 = time.perf_counter()
    result = seg.segment_volume(volume, prompts, backend)
    dt = time.perf_counter() - t0
    grown = rss() - rss0
    return n / dt, grown, result


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    torch.set_num_threads(2)
    backend = load_model("lite_medsam")
    run(backend, 40)  # warm-up
    for m in (n // 10, n):
        rate, grown, _ = run(backend, m)
        print(
            f"batched   {m:6d} objects: {rate:7.1f} objects/s, RSS growth {grown / 2**20:7.1f} MiB "
            f"({grown / m / 1024:.1f} KiB/object); process peak RSS so far {peak_rss() / 2**20:.0f} MiB"
        )
    rate_b, _, batched = run(backend, k)
    real = replay.is_plain_box
    replay.is_plain_box = lambda p: False  # the per-object path
    try:
        rate_s, _, single = run(backend, k)
    finally:
        replay.is_plain_box = real
    same = int(np.array_equal(batched.labels, single.labels))
    diff = int((batched.labels != single.labels).sum())
    print(
        f"reference {k:6d} objects: per-object {rate_s:.1f} objects/s vs batched {rate_b:.1f} objects/s; "
        f"label maps identical: {bool(same)} ({diff} voxels differ)"
    )


if __name__ == "__main__":
    main()
