"""The interactive 3D protocol in one process, through the CLI's own code path: what each click does.

    python benchmarks/corrections_joint.py mr                 # the shared MR, every structure
    python benchmarks/corrections_joint.py ct --every 3 --json out.json

The protocol of ``benchmarks/interactive_3d.py`` (box on each structure's
largest slice, propagation, then per step one click per structure at the
deepest voxel of the largest 26-connected error component of the *joint*
label map), run in-process through :func:`napari_sam.segmentation.segment_volume`
(what ``napari-sam segment`` runs: the same key-slice rule, zoomed key
slices, overlap resolution), each step replaying the accumulated
``"corrections"`` from scratch. The Dice curve is the CLI benchmark's (the
same masks); besides, every click is listed with its error class (as in
``benchmarks/corrections_ct.py``: FN-end, FN-in, FP-run, FP-leak) and the
structure's Dice change, and the clicks that lower their structure by more
than 0.02 are counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice  # noqa: E402
from corrections_ct import error_class  # noqa: E402
from interactive_3d import dataset, next_correction, nsd, step0_objects  # noqa: E402
from napari_sam.cache import resolve_cache_dir  # noqa: E402
from napari_sam.embeddings import EmbeddingProvider  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import parse_prompts  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402

#: a click "lowers" its structure when its Dice drops by more than this
LOSS = 0.02


def step_scores(vol, labels, objects, backend, views) -> tuple[np.ndarray, dict[int, float]]:
    result = segment_volume(vol, parse_prompts({"objects": objects}), backend, embeddings_for=views, undo=False)
    seg = result.labels
    return seg, {o["id"]: dice(seg == o["id"], labels == o["id"]) for o in objects}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["ct", "mr"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    vol, labels, names, _path, ids, windows = dataset(args.dataset)
    ids = ids[args.offset :: args.every]
    backend = load_model("lite_medsam")
    views = EmbeddingProvider(backend, resolve_cache_dir(args.cache_dir), max_in_memory=64).views_of(vol.array)
    spacing = vol.geometry.scale_zyx
    objects = step0_objects(labels, names, ids, windows)
    curve, rows, clicks = [], {i: [] for i in ids}, []
    t0 = time.process_time()
    for step in range(args.steps + 1):
        seg, scores = step_scores(vol, labels, objects, backend, views)
        for i in ids:
            rows[i].append(scores[i])
        if clicks:
            for c in clicks[-1]:
                c["after"] = scores[c["id"]]
        curve.append(float(np.mean(list(scores.values()))))
        print(f"step {step}: mean Dice {curve[-1]:.3f}", flush=True)
        if step == args.steps:
            break
        made = []
        for o in objects:
            pred, gt = seg == o["id"], labels == o["id"]
            c = next_correction(pred, gt, spacing)
            if c is not None:
                o["corrections"].append(c)
                made.append(
                    {"id": o["id"], "step": step + 1, **c, "class": error_class(pred, gt, c), "before": scores[o["id"]]}
                )
        clicks.append(made)
    flat = [c for s in clicks for c in s]
    for i in ids:
        cl = " ".join(
            f"{c['class']}@{c['point'][0]}{'!' if c['after'] < c['before'] - LOSS else ''}"
            for c in flat
            if c["id"] == i
        )
        print(f"{names[i]:30s} " + " ".join(f"{v:.3f}" for v in rows[i]) + f"  {cl}")
    worse = [c for c in flat if c["after"] < c["before"] - LOSS]
    auc = float(np.trapezoid(curve[1:]))
    final_nsd = np.mean([nsd(seg == i, labels == i, spacing) for i in ids])
    print(
        f"{args.dataset} n={len(ids)} curve {' '.join(f'{v:.3f}' for v in curve)}  DSC_AUC {auc:.3f}  NSD {final_nsd:.3f}"
        f"  clicks lowering >{LOSS}: {len(worse)} of {len(flat)}  CPU s {time.process_time() - t0:.0f}"
    )
    if args.json:
        out = {"curve": curve, "auc": auc, "rows": {names[i]: rows[i] for i in ids}, "clicks": flat}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
