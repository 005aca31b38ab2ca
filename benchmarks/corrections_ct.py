"""The interactive 3D protocol in one process, one object at a time: what each click does.

    python benchmarks/corrections_ct.py                       # every CT structure >= 1000 voxels
    python benchmarks/corrections_ct.py --only rib_left_9 liver --steps 5 --json out.json
    python benchmarks/corrections_ct.py --dataset mr          # the shared MR, every structure

The same protocol as ``benchmarks/interactive_3d.py`` (box on the largest
slice, propagation, then one click per step at the deepest voxel of the
largest 26-connected error component), but in-process, each object scored
alone (no joint label map) and the clicks applied incrementally with
:func:`napari_sam.corrections.apply_correction` (the same result as replaying
the accumulated corrections: each is applied after the previous result). On MR the
key slice picks its mask by the rule the CLI uses there
(``segmentation.key_choice_for``: the candidate that best explains the box)
and the window is the automatic one. It is for looking at the corrections: each click's error class is printed:

- ``FN-end``: a missed component lying on slices where the result is empty
  (the object goes on beyond where propagation stopped);
- ``FN-in``: a missed part of slices that hold the result;
- ``FP-run``: a wrongly included component on slices where the label is empty
  (propagation ran past the end);
- ``FP-leak``: a wrongly included part of slices that hold the label.
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
from interactive_3d import dataset, next_correction, nsd  # noqa: E402
from napari_sam.cache import resolve_cache_dir  # noqa: E402
from napari_sam.corrections import Correction, apply_correction  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.intensity import parse_window, resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import SlicePrompt  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator  # noqa: E402
from napari_sam.segmentation import key_choice_for  # noqa: E402
from napari_sam.torch_threads import decoding  # noqa: E402


def error_class(pred: np.ndarray, gt: np.ndarray, click: dict) -> str:
    """FN-end, FN-in, FP-run or FP-leak for the click's slice (see the module docstring)."""
    z = click["point"][0]
    if click["label"] == 1:
        return "FN-in" if pred[z].any() else "FN-end"
    return "FP-leak" if gt[z].any() else "FP-run"


def run_structure(backend, emb, gt: np.ndarray, spacing, steps: int, key_choice: str = "single") -> dict:
    z0 = int(gt.sum((1, 2)).argmax())
    state = PropagationState(shape=gt.shape)
    state.add_prompt(z0, SlicePrompt(box=box_of_mask(gt[z0]), slice=z0))
    prop = Propagator(backend, emb, key_choice=key_choice)
    t0 = time.process_time()
    prop.propagate(state)
    pred = state.volume_mask()
    curve, clicks, ranges = [dice(pred, gt)], [], []
    for _ in range(steps):
        c = next_correction(pred, gt, spacing)
        if c is None:
            curve.append(curve[-1])
            continue
        c["class"] = error_class(pred, gt, c)
        clicks.append(c)
        ranges.append(apply_correction(state, prop, Correction(tuple(c["point"]), c["label"]), spacing))
        pred = state.volume_mask()
        curve.append(dice(pred, gt))
    return {
        "key": z0,
        "dice": curve,
        "nsd2": nsd(pred, gt, spacing),
        "clicks": clicks,
        "ranges": [list(r) for r in ranges],
        "cpu_s": time.process_time() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["ct", "mr"], default="ct")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="structure names")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    vol, labels, names, _path, chosen, windows = dataset(args.dataset)
    if args.only:
        chosen = [i for i in chosen if names[i] in args.only]
    chosen = chosen[args.offset :: args.every]
    backend = load_model()
    cache = resolve_cache_dir(args.cache_dir)
    embs = {}
    for w in set(windows[i] for i in chosen):
        win = parse_window(w) if w else resolve_window(vol.array, None, vol.metadata.get("modality"))
        embs[w] = SliceEmbeddings(backend, vol.array, win, cache_dir=cache, max_in_memory=64)
    key_choice = key_choice_for(vol)
    spacing = tuple(float(s) for s in vol.geometry.scale_zyx)
    rows = []
    with decoding():
        for i in chosen:
            gt = labels == i
            r = {
                "id": i,
                "name": names[i],
                **run_structure(backend, embs[windows[i]], gt, spacing, args.steps, key_choice),
            }
            rows.append(r)
            cl = " ".join(f"{c['class']}@{c['point'][0]}" for c in r["clicks"])
            print(
                f"{names[i]:30s} " + " ".join(f"{v:.3f}" for v in r["dice"]) + f"  nsd {r['nsd2']:.3f}"
                f"  cpu {r['cpu_s']:.1f}s  {cl}",
                flush=True,
            )
    curve = np.mean([r["dice"] for r in rows], axis=0)
    auc = float(np.trapezoid(curve[1:]))
    print(
        f"n={len(rows)} curve {' '.join(f'{v:.3f}' for v in curve)}  DSC_AUC {auc:.3f}  "
        f"NSD {np.mean([r['nsd2'] for r in rows]):.3f}  CPU s/structure {np.mean([r['cpu_s'] for r in rows]):.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"curve": curve.tolist(), "auc": auc, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
