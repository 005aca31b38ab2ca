"""3D automatic mode on seeded synthetic nuclei stacks (napari_sam.synthetic).

python benchmarks/automatic3d.py [--only accuracy|designs|big|cli] [--seeds 30,31,32,33]

accuracy: F1@0.5, precision, recall, merges, splits per contrast level (3D proposals);
designs:  slice-wise + linking (the earlier design, embedded model) vs 3D proposals vs
          3D proposals + model check, on one 31 x 61 x 57 stack per contrast, with stage timings;
big:      a 100 x 512 x 512 stack end to end with the stage breakdown;
cli:      `napari-sam auto STACK.tif --output LABELS.tif` cold (new process, model loading included).
Prints load averages; run on a quiet machine for timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (before anything that could import napari)

from napari_sam.automatic import AutomaticSegmenter, AutoSettings, Stack3DSettings, StackSegmenter
from napari_sam.evaluation import match_instances
from napari_sam.instance_errors import merge_split_counts
from napari_sam.intensity import resolve_window
from napari_sam.synthetic import nuclei_stack

CONTRASTS = (3.0, 2.0, 1.5, 1.3)


def _vol(s):
    return resolve_window(s.image, None, None, None).apply(s.image)


def _row(name, labels, ref, timings=None):
    m, ms = match_instances(labels, ref), merge_split_counts(labels, ref)
    t = "" if timings is None else "  " + " ".join(f"{k} {v:.2f}" for k, v in timings.items())
    print(
        f"{name:34s} F1 {m.f1:.3f} P {m.precision:.3f} R {m.recall:.3f} IoU {m.mean_matched_iou:.3f} "
        f"merges {ms.merges} splits {ms.splits} (ref {int(ref.max())}){t}",
        flush=True,
    )
    return m, ms


def accuracy(seeds):
    for c in CONTRASTS:
        f, p, r, mg, sp = [], [], [], [], []
        for seed in seeds:
            s = nuclei_stack(contrast=c, seed=seed)
            res = StackSegmenter(None, Stack3DSettings(spacing=s.spacing)).segment(_vol(s))
            m, ms = match_instances(res.labels, s.labels), merge_split_counts(res.labels, s.labels)
            (f.append(m.f1), p.append(m.precision), r.append(m.recall), mg.append(ms.merges), sp.append(ms.splits))
        print(
            f"contrast {c}: F1 {np.mean(f):.3f} (min {np.min(f):.3f}) P {np.mean(p):.3f} R {np.mean(r):.3f} "
            f"merges {np.mean(mg):.1f} splits {np.mean(sp):.1f} per stack (~98 nuclei; seeds {seeds})",
            flush=True,
        )


def designs(seed, contrasts=(3.0, 1.3)):
    from napari_sam.models.registry import load_model

    backend = load_model()
    for c in contrasts:
        s = nuclei_stack(contrast=c, seed=seed)
        vol = _vol(s)
        print(f"-- contrast {c}, seed {seed}")
        t = time.perf_counter()
        res = AutomaticSegmenter(backend, AutoSettings.for_microscopy()).segment_volume(vol)
        res.timings["wall"] = time.perf_counter() - t
        _row("slice-wise + linking (model)", res.labels, s.labels, res.timings)
        res = StackSegmenter(None, Stack3DSettings(spacing=s.spacing)).segment(vol)
        _row("3D proposals (default)", res.labels, s.labels, res.timings)
        res = StackSegmenter(backend, Stack3DSettings(spacing=s.spacing, use_model=True)).segment(vol)
        _row("3D proposals + model check", res.labels, s.labels, res.timings)


def big():
    t = time.perf_counter()
    s = nuclei_stack((100, 512, 512), spacing=(1.0, 0.25, 0.25), n_nuclei=6000, contrast=1.3, seed=2)
    print(f"generated 100x512x512, {int(s.labels.max())} nuclei, {time.perf_counter() - t:.1f} s", flush=True)
    t, c = time.perf_counter(), time.process_time()
    vol = _vol(s)
    tw = time.perf_counter() - t
    res = StackSegmenter(None, Stack3DSettings(spacing=s.spacing)).segment(vol)
    res.timings["window"] = tw
    res.timings["wall incl. window"] = time.perf_counter() - t
    res.timings["cpu s (process_time)"] = time.process_time() - c  # load-independent: mostly one thread
    _row("100x512x512 3D proposals", res.labels, s.labels, res.timings)


def cli(seed, runs=3):
    import tifffile

    s = nuclei_stack(contrast=1.3, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "stack.tif"
        tifffile.imwrite(
            src,
            s.image,
            imagej=True,
            resolution=(1 / s.spacing[2], 1 / s.spacing[1]),
            metadata={"spacing": s.spacing[0], "unit": "um", "axes": "ZYX"},
        )
        times = []
        for k in range(runs):
            out = Path(d) / f"labels{k}.tif"
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "napari_sam.cli",
                    "auto",
                    str(src),
                    "--output",
                    str(out),
                    "--quiet",
                    "--no-cache",
                ],
                check=True,
                env=os.environ,
            )
            times.append(time.perf_counter() - t)
        labels = tifffile.imread(out)
    print(
        f"CLI cold 31x61x57 (new process, model loading incl.): median {np.median(times):.1f} s of {times}", flush=True
    )
    _row("CLI output", labels, s.labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--seeds", default="30,31,32,33")
    a = ap.parse_args()
    seeds = [int(v) for v in a.seeds.split(",")]
    print("load average", os.getloadavg(), flush=True)
    for name, fn in (
        ("accuracy", lambda: accuracy(seeds)),
        ("cli", lambda: cli(seeds[0])),
        ("designs", lambda: designs(seeds[0])),
        ("big", big),
    ):
        if a.only in (None, name):
            fn()
    print("load average", os.getloadavg(), flush=True)


if __name__ == "__main__":
    main()
