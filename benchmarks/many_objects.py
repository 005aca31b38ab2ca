"""Many single-slice box objects through ``segment_volume`` with LiteMedSAM.

Prints objects/s (whole ``segment_volume``: embeddings of the slices plus the
decoding and painting of every object) and the process's CPU time per object
(``time.process_time``: all threads, so it holds on a shared machine where the
wall clock does not) for N objects spread over the slices of a synthetic
(5, 256, 256) volume (neither CT nor 2D: the "box_fit" key-slice rule),
``--repeat`` times and their median; how many boxes took the batched path; the
process's resident memory (RSS), and its growth since the run's start, after
1,000, 5,000 and 10,000 objects (and N) have been decoded, and the flatness rule
(after the first 1,000 objects RSS grows by at most 16 KiB per object); then the same for K objects on
the per-object path (batching switched off) as the reference, and how many
voxels of the two label maps differ.

``--cli``: instead, what a user of the command line sees: ``napari-sam segment``
on the same volume (written as NIfTI) with 1,000 and with N objects, each in a
new process: objects/s, CPU ms per object and each process's own peak RSS; flat
memory is the same rule on the two peaks (the objects' own bookkeeping, a few
KiB each, is all that may grow with their number).

    python benchmarks/many_objects.py [N] [K] [--repeat R] [--threads T] [--quick] [--cli]
    # defaults: 10000 objects, 300 for the reference (0: none), 3 runs, 2 threads
    # --quick: 2000 objects, 100 for the reference, 1 run
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_sam import segmentation as seg
from napari_sam.annotation import replay
from napari_sam.io import Volume
from napari_sam.models.registry import load_model
from napari_sam.prompts import parse_prompts
from napari_sam.synthetic import blob_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_cli  # noqa: E402

#: objects decoded at which the RSS is reported
CHECKPOINTS = (1000, 5000, 10000)
#: the flatness rule: after the first 1,000 objects, RSS grows by at most this much per object
#: (a quarter of one 256 x 256 slice's bool mask, which the per-object path kept per object;
#: what an object itself keeps, its state, its crop and its undo snapshot, is ~5 KB)
FLAT_BYTES_PER_OBJECT = 16 * 1024


def make_case(n: int, z: int = 5, size: int = 256, seed: int = 0):
    vol, doc = blob_boxes(n, z, size, seed)
    return Volume(vol), parse_prompts(doc)


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
        self.batched = getattr(self, "batched", 0) + len(boxes)
        out = []
        for s in range(0, len(boxes), self.step):
            out.extend(self.real(backend, emb, boxes[s : s + self.step], *args, **kwargs))
            before, self.done = self.done, self.done + len(boxes[s : s + self.step])
            for c in CHECKPOINTS:
                if before < c <= self.done:
                    self.at[c] = rss()
        return out


@dataclass
class Run:
    """One run: objects/s (wall), CPU seconds per object, boxes decoded in batches,
    {objects decoded: (RSS, its growth since the run's start) in bytes}, the result."""

    rate: float
    cpu: float
    batched: int
    at: dict[int, tuple[int, int]]
    result: seg.SegmentationResult


def run(backend, n: int) -> Run:
    """One run of n objects."""
    volume, prompts = make_case(n)
    gc.collect()
    probe = RssProbe()
    replay.decode_boxes = probe
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        result = seg.segment_volume(volume, prompts, backend)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    finally:
        replay.decode_boxes = probe.real
    probe.at[n] = rss()
    at = {c: (v, v - probe.base) for c, v in probe.at.items()}
    return Run(n / dt, dc / n, getattr(probe, "batched", 0), at, result)


def report(i: int, n: int, r: Run) -> None:
    mem = ", ".join(f"{c}: {v / 2**20:.0f} MiB ({g / 2**20:+.0f})" for c, (v, g) in sorted(r.at.items()))
    print(
        f"run {i}: {n} objects, {r.rate:.1f} objects/s, {1000 * r.cpu:.1f} ms CPU per object, "
        f"{r.batched} boxes batched; RSS (growth) after {mem}; process peak RSS {peak_rss() / 2**20:.0f} MiB",
        flush=True,
    )
    if 1000 in r.at and n > 1000:
        grow = r.at[n][0] - r.at[1000][0]
        per = grow / (n - 1000)
        print(
            f"  flat memory (RSS from 1000 to {n} objects grows <= {FLAT_BYTES_PER_OBJECT // 1024} KiB per object): "
            f"{per <= FLAT_BYTES_PER_OBJECT} ({grow / 2**20:+.1f} MiB, {per / 1024:.1f} KiB per object)",
            flush=True,
        )


def cli(n: int, repeat: int) -> None:
    """The command line with 1,000 and with n objects, each in a new process (see the module's doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        import SimpleITK as sitk

        base = Path(tmp)
        peaks = {}
        sitk.WriteImage(sitk.GetImageFromArray(blob_boxes(0)[0]), str(base / "vol.nii.gz"))  # seeded: one volume
        for count in (1000, n):
            (base / f"p{count}.json").write_text(json.dumps(blob_boxes(count)[1]))
            args = ["segment", base / "vol.nii.gz", "--prompts", base / f"p{count}.json", "--no-cache"]
            runs = [run_cli([*args, "--output", base / f"o{count}_{i}.nii.gz", "--quiet"]) for i in range(repeat)]
            peak, wall, cpu = (statistics.median(r[k] for r in runs) for k in range(3))
            peaks[count] = peak
            print(
                f"napari-sam segment, {count} objects (median of {repeat}): {count / wall:.1f} objects/s "
                f"(whole process, model load included), {1000 * cpu / count:.1f} ms CPU per object, "
                f"peak RSS {peak:.0f} MiB",
                flush=True,
            )
    per = (peaks[n] - peaks[1000]) * 2**20 / (n - 1000)
    print(
        f"  flat memory (peak RSS from 1000 to {n} objects grows <= {FLAT_BYTES_PER_OBJECT // 1024} KiB per object): "
        f"{per <= FLAT_BYTES_PER_OBJECT} ({peaks[n] - peaks[1000]:+.1f} MiB, {per / 1024:.1f} KiB per object)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=None)
    ap.add_argument("k", type=int, nargs="?", default=None)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2000 objects, 100 for the reference, 1 run")
    ap.add_argument("--cli", action="store_true", help="napari-sam segment with 1000 and N objects instead")
    a = ap.parse_args()
    n = a.n if a.n is not None else (2000 if a.quick else 10000)
    k = a.k if a.k is not None else (100 if a.quick else 300)
    repeat = a.repeat if a.repeat is not None else (1 if a.quick else 3)
    if a.cli:
        return cli(n, repeat)
    torch.set_num_threads(a.threads)
    backend = load_model("lite_medsam")
    run(backend, 40)  # warm-up
    runs = []
    for i in range(repeat):
        runs.append(run(backend, n))
        report(i + 1, n, runs[-1])
        runs[-1].result = None  # type: ignore[assignment]
    print(
        f"median of {repeat} runs: {statistics.median(r.rate for r in runs):.1f} objects/s, "
        f"{1000 * statistics.median(r.cpu for r in runs):.1f} ms CPU per object for {n} objects "
        f"({a.threads} torch threads)",
        flush=True,
    )
    if k <= 0:
        return
    batched = run(backend, k)
    real = replay.is_plain_box
    replay.is_plain_box = lambda p: False  # the per-object path
    try:
        single = run(backend, k)
    finally:
        replay.is_plain_box = real
    diff = int((batched.result.labels != single.result.labels).sum())
    print(
        f"reference {k} objects: per-object {single.rate:.1f} objects/s ({1000 * single.cpu:.1f} ms CPU each) "
        f"vs batched {batched.rate:.1f} objects/s ({1000 * batched.cpu:.1f} ms CPU each); "
        f"label maps identical: {diff == 0} ({diff} voxels differ)"
    )


if __name__ == "__main__":
    main()
