"""Many single-slice box objects through ``segment_volume`` with LiteMedSAM.

Prints objects/s (whole ``segment_volume``: embeddings of the slices plus the
decoding and painting of every object) for N objects spread over the slices
of a synthetic (5, 256, 256) volume, ``--repeat`` times and their median, and
the process's resident memory (RSS), and its growth since the run's start,
after 1,000, 5,000 and 10,000 objects (and N) have been decoded; then the same for
K objects on the per-object path (batching switched off) as the reference,
and how many voxels of the two label maps differ.

    python benchmarks/many_objects.py [N] [K] [--repeat R] [--threads T]
    # defaults: 10000 objects, 300 for the reference (0: none), 3 runs, 2 threads
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np
import torch

from napari_sam import segmentation as seg
from napari_sam.annotation import replay
from napari_sam.io import Volume
from napari_sam.models.registry import load_model
from napari_sam.prompts import parse_prompts

#: objects decoded at which the RSS is reported
CHECKPOINTS = (1000, 5000, 10000)


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
        box = [int(r), int(c), int(r + h), int(c + w)]
        objs.append({"id": i + 1, "prompts": [{"slice": int(i % z), "box": box}]})
    return Volume(vol), parse_prompts({"objects": objs, "window": [-50, 350]})


def rss() -> int:
    """Resident set size of this process, bytes (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def peak_rss() -> int:
    """Peak resident set size of this process so far, bytes (Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssProbe:
    """Wraps ``segmentation.decode_boxes``: decodes a slice's boxes in parts of
    ``step`` (each box is decoded on its own, so the masks do not change) and
    records the RSS above ``base`` when the count of decoded boxes reaches each
    checkpoint."""

    def __init__(self, step: int = 500) -> None:
        self.step = step
        self.real = replay.decode_boxes
        self.done = 0
        self.base = rss()
        self.at: dict[int, int] = {}

    def __call__(self, backend, emb, boxes, *args, **kwargs):
        out = []
        for s in range(0, len(boxes), self.step):
            out.extend(self.real(backend, emb, boxes[s : s + self.step], *args, **kwargs))
            before, self.done = self.done, self.done + len(boxes[s : s + self.step])
            for c in CHECKPOINTS:
                if before < c <= self.done:
                    self.at[c] = rss()
        return out


def run(backend, n: int) -> tuple[float, dict[int, tuple[int, int]], seg.SegmentationResult]:
    """(objects/s, {objects decoded: (RSS, its growth since the run's start) in bytes},
    result) of one run of n objects."""
    volume, prompts = make_case(n)
    gc.collect()
    probe = RssProbe()
    replay.decode_boxes = probe
    try:
        t0 = time.perf_counter()
        result = seg.segment_volume(volume, prompts, backend)
        dt = time.perf_counter() - t0
    finally:
        replay.decode_boxes = probe.real
    probe.at[n] = rss()
    return n / dt, {c: (v, v - probe.base) for c, v in probe.at.items()}, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=10000)
    ap.add_argument("k", type=int, nargs="?", default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    backend = load_model("lite_medsam")
    run(backend, 40)  # warm-up
    rates = []
    for i in range(a.repeat):
        rate, at, _ = run(backend, a.n)
        rates.append(rate)
        mem = ", ".join(f"{c}: {v / 2**20:.0f} MiB ({g / 2**20:+.0f})" for c, (v, g) in sorted(at.items()))
        print(
            f"run {i + 1}: {a.n} objects, {rate:.1f} objects/s; RSS (growth) after {mem}; "
            f"process peak RSS {peak_rss() / 2**20:.0f} MiB",
            flush=True,
        )
    print(f"median of {a.repeat} runs: {statistics.median(rates):.1f} objects/s for {a.n} objects", flush=True)
    if a.k <= 0:
        return
    rate_b, _, batched = run(backend, a.k)
    real = replay.is_plain_box
    replay.is_plain_box = lambda p: False  # the per-object path
    try:
        rate_s, _, single = run(backend, a.k)
    finally:
        replay.is_plain_box = real
    diff = int((batched.labels != single.labels).sum())
    print(
        f"reference {a.k} objects: per-object {rate_s:.1f} objects/s vs batched {rate_b:.1f} objects/s; "
        f"label maps identical: {diff == 0} ({diff} voxels differ)"
    )


if __name__ == "__main__":
    main()
