"""Stop rules judged by structure-level cross-validation on the shared CT and MR.

    python benchmarks/stop_rules_cv.py [ct|mr|pooled] [--folds 5] [--cache-dir DIR] [--json PATH] [--walks PREFIX]

(``--walks PREFIX``: the recorded walks are saved to PREFIX.ct.pkl and
PREFIX.mr.pkl, and read back from them on a later run instead of running the
model again.) ``ct`` (the default) and ``mr`` cross-validate over one
dataset's structures; ``pooled`` over the structures of both (folds mix CT
and MR structures), with the totals also given per dataset.

For every structure of the shared CT (at least 1000 voxels, or ending inside
the volume; read from the labels) and of the shared MR (every labelled
structure; automatic window, key slices chosen by box fit as the CLI does on
MR): one box (the label's bounding box) on its largest slice, then

- **product**: the propagation as shipped (``Propagator`` with the default
  ``StopRules``: growth ratio, forward IoU + backward check, intensity,
  appearance; patience 1), not tuned here;
- **unrestricted walk**: the same propagation with every stop rule off but
  EMPTY, each pass walking to the volume's edge or until its mask vanishes.
  For each transition (slice z-s -> z) it records what the candidate designs
  look at: the backward IoU (the answer's box + 3 px prompted back on the
  neighbour's slice, IoU with the neighbour's mask), the area change in mm^2
  per mm travelled, and the jump of the centroid in mm relative to the
  neighbour's size. A design with threshold t stops a pass at its first
  refused transition (patience 0), so every design and threshold is scored
  on the recorded walk without running the model again.

Designs, each with one threshold:

- ``backward``: forward/backward agreement; refuse when the backward IoU < t;
- ``area_mm``: area continuity in physical units; refuse when
  |ln((A + a0) / (A_prev + a0))| / dz > t (A in mm^2, a0 = 25 mm^2, dz the
  slice spacing in mm): the same t for 1 mm and 5 mm slices;
- ``jump``: jump to the next instance; refuse when the centroid moved more
  than t times the neighbour's equivalent radius sqrt(A_prev / pi) per 5 mm;
- ``backward+area_mm``: both, thresholds tuned jointly;
- ``key_area``: runaway beyond the object's extent on its key slice; refuse
  when the mask's area exceeds t times the key slice's mask (in the
  protocol the box is on the object's largest slice);
- ``product+key_area``: the product as shipped, each pass then cut at its
  first slice whose area exceeds t times the key slice's (t tuned the same
  way): whether the key-area rule adds anything to the shipped rules.

Cross-validation: the structures are split into ``--folds`` folds (by label
id, round robin); each design's threshold is tuned on the other folds (least
slices added past the end + cut short, Dice breaking ties) and reported on
the held-out fold; a second pass tunes by mean Dice instead. Per structure: slices added past the true end and cut
short before it (both ends, wherever they are), and the 3D Dice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice, load_ct  # noqa: E402
from interactive_3d import load_mr  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.geometry import box_of_mask, mask_iou  # noqa: E402
from napari_sam.intensity import parse_window, resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import SlicePrompt  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator, StopRules  # noqa: E402
from napari_sam.torch_threads import decoding  # noqa: E402
from propagation_ct import structures, window_for  # noqa: E402

OPEN = StopRules(growth_min_area=2**62, min_iou=-1.0, max_intensity_shift=None, min_feature_similarity=0.0, patience=0)
A0_MM2 = 25.0
GRIDS = {
    "backward": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6],
    "area_mm": [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, np.inf],
    "jump": [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, np.inf],
    "key_area": [1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, np.inf],
}
DESIGNS = {
    "backward": [("backward",)],
    "area_mm": [("area_mm",)],
    "jump": [("jump",)],
    "backward+area_mm": [("backward", "area_mm")],
    "key_area": [("key_area",)],
}
#: the product's rules, then the key-area rule on top (the product's walk cut
#: at its first slice whose area exceeds t times the key slice's)
PRODUCT_PLUS = "product+key_area"


@dataclass
class Walk:
    """One structure: its key slice, the unrestricted passes (per direction, the
    masks in walking order with each transition's measures), the truth."""

    name: str
    key: int
    key_mask: np.ndarray
    passes: dict[int, list[dict]] = field(default_factory=dict)
    gt: np.ndarray | None = None
    product: np.ndarray | None = None
    dataset: str = "ct"


def _backward_iou(backend, emb, z_prev: int, answer: np.ndarray, prev: np.ndarray) -> float:
    h, w = answer.shape
    r0, c0, r1, c1 = box_of_mask(answer)
    box = np.array([[max(0, r0 - 3), max(0, c0 - 3), min(h - 1, r1 + 3), min(w - 1, c1 + 3)]], np.float32)
    back = backend.decode(emb.get(z_prev), boxes_rc=box).masks[0, 0]
    return mask_iou(back, prev)


def _centroid(m: np.ndarray, sp) -> np.ndarray:
    rr, cc = np.nonzero(m)
    return np.array([rr.mean() * sp[1], cc.mean() * sp[2]])


@torch.inference_mode()
def record(backend, emb, gt: np.ndarray, name: str, spacing, key_choice: str = "single", dataset: str = "ct") -> Walk:
    n = gt.shape[0]
    z0 = int(gt.sum((1, 2)).argmax())
    box = box_of_mask(gt[z0])
    state = PropagationState(shape=gt.shape)
    state.add_prompt(z0, SlicePrompt(box=box, slice=z0))
    Propagator(backend, emb, rules=OPEN, key_choice=key_choice).propagate(state)
    walk = Walk(name, z0, state.mask_slice(z0), gt=gt, dataset=dataset)
    px_mm2 = spacing[1] * spacing[2]
    for s in (1, -1):
        steps, prev, z = [], walk.key_mask, z0 + s
        while 0 <= z < n and z in state.results and state.results[z].any():
            m = state.results[z]
            a, ap = m.sum() * px_mm2, prev.sum() * px_mm2
            steps.append(
                {
                    "z": z,
                    "mask": m,
                    "backward": _backward_iou(backend, emb, z - s, m, prev),
                    "area_mm": abs(np.log((a + A0_MM2) / (ap + A0_MM2))) / spacing[0],
                    "jump": float(np.linalg.norm(_centroid(m, spacing) - _centroid(prev, spacing)))
                    / max(np.sqrt(ap / np.pi), 1e-6)
                    * (5.0 / spacing[0]),
                    "key_area": float(m.sum()) / max(float(walk.key_mask.sum()), 1.0),
                }
            )
            prev, z = m, z + s
        walk.passes[s] = steps
    prod = PropagationState(shape=gt.shape)
    prod.add_prompt(z0, SlicePrompt(box=box, slice=z0))
    Propagator(backend, emb, key_choice=key_choice).propagate(prod)
    walk.product = prod.volume_mask()
    return walk


def add_key_area(walks: list[Walk]) -> None:
    """The key-area measure on walks recorded before it existed: area / the key slice's area."""
    for w in walks:
        key = max(float(w.key_mask.sum()), 1.0)
        for steps in w.passes.values():
            for st in steps:
                st.setdefault("key_area", float(st["mask"].sum()) / key)


def product_cut(walk: Walk, t: float) -> np.ndarray:
    """The product's prediction, each pass cut at its first slice whose area
    exceeds ``t`` times the key slice's (the key-area rule added to the product)."""
    out = walk.product.copy()
    key = max(float(walk.product[walk.key].sum()), 1.0)
    n = out.shape[0]
    for s in (1, -1):
        z, cut = walk.key + s, False
        while 0 <= z < n:
            cut = cut or out[z].sum() > t * key
            if cut:
                out[z] = False
            z += s
    return out


def refuses(step: dict, rule: dict[str, float]) -> bool:
    return any((step[k] < t) if k == "backward" else (step[k] > t) for k, t in rule.items())


def simulate(walk: Walk, rule: dict[str, float]) -> np.ndarray:
    out = np.zeros_like(walk.gt)
    out[walk.key] = walk.key_mask
    for steps in walk.passes.values():
        for st in steps:
            if refuses(st, rule):
                break
            out[st["z"]] = st["mask"]
    return out


def errors(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(slices added past the true ends, slices cut short before them), both ends."""
    ps = np.flatnonzero(pred.any((1, 2)))
    gs = np.flatnonzero(gt.any((1, 2)))
    g0, g1 = gs[0], gs[-1]
    added = int(((ps < g0) | (ps > g1)).sum())
    p0, p1 = (ps[0], ps[-1]) if ps.size else (g1 + 1, g0 - 1)
    short = int(max(0, p0 - g0) + max(0, g1 - p1))
    return added, short


def score(walks: list[Walk], rule: dict[str, float]) -> tuple[int, float]:
    errs, ds = 0, []
    for w in walks:
        pred = simulate(w, rule)
        errs += sum(errors(pred, w.gt))
        ds.append(dice(pred, w.gt))
    return errs, float(np.mean(ds))


def tune(walks: list[Walk], keys: tuple[str, ...], objective: str = "slices") -> dict[str, float]:
    """The threshold(s) with the fewest slices added + cut short (Dice breaking
    ties), or with the best mean Dice (objective "dice")."""
    best = None
    for values in itertools.product(*(GRIDS[k] for k in keys)):
        rule = dict(zip(keys, values))
        e, d = score(walks, rule)
        key = (e, -d) if objective == "slices" else (-d, e)
        if best is None or key < best[0]:
            best = (key, rule)
    return best[1]


def record_dataset(name: str, backend, cache: Path) -> list[Walk]:
    """The walks of every structure of the shared CT or MR (see the module docstring)."""
    if name == "ct":
        vol, labels, names = load_ct()
        embs = {
            w: SliceEmbeddings(backend, vol.array, parse_window(w), cache_dir=cache) for w in ("soft-tissue", "bone")
        }
        ids, emb_of, choice = structures(labels, names), lambda i: embs[window_for(names[i])], "single"
    else:
        vol, labels, names, _path = load_mr()
        win = resolve_window(vol.array, None, vol.metadata.get("modality"))
        emb = SliceEmbeddings(backend, vol.array, win, cache_dir=cache)
        ids, emb_of, choice = [int(i) for i in np.unique(labels) if i], lambda i: emb, "box_fit"
    walks = []
    with decoding():
        for i in ids:
            walks.append(record(backend, emb_of(i), labels == i, names[i], vol.geometry.scale_zyx, choice, name))
            print(f"recorded {name} {names[i]}", file=sys.stderr, flush=True)
    return walks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", default="ct", choices=["ct", "mr", "pooled"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--walks", default=None, help="save the recorded walks to PREFIX.ct.pkl / .mr.pkl (or read them)")
    args = ap.parse_args()
    from napari_sam.cache import resolve_cache_dir

    backend = load_model("lite_medsam")
    cache = resolve_cache_dir(args.cache_dir)
    walks = []
    for name in ("ct", "mr") if args.dataset == "pooled" else (args.dataset,):
        path = Path(f"{args.walks}.{name}.pkl") if args.walks else None
        if path is not None and path.exists():
            with open(path, "rb") as f:
                walks += pickle.load(f)
            continue
        got = record_dataset(name, backend, cache)
        if path is not None:
            with open(path, "wb") as f:
                pickle.dump(got, f)
        walks += got
    add_key_area(walks)
    rows = {}
    for objective in ("slices", "dice"):
        rows[objective] = report(walks, args.folds, objective)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def cross_validate(walks: list[Walk], n_folds: int, objective: str) -> dict[str, dict[int, tuple[dict, np.ndarray]]]:
    """design -> structure index -> (threshold tuned without its fold, held-out prediction)."""
    folds = [list(range(k, len(walks), n_folds)) for k in range(n_folds)]
    held: dict[str, dict[int, tuple[dict, np.ndarray]]] = {d: {} for d in [*DESIGNS, PRODUCT_PLUS]}
    for design, (keys,) in DESIGNS.items():
        for fold in folds:
            rule = tune([w for j, w in enumerate(walks) if j not in fold], keys, objective)
            for j in fold:
                held[design][j] = (rule, simulate(walks[j], rule))
    for fold in folds:
        train = [w for j, w in enumerate(walks) if j not in fold]
        best = None
        for t in GRIDS["key_area"]:
            preds = [product_cut(w, t) for w in train]
            e = sum(sum(errors(p, w.gt)) for p, w in zip(preds, train))
            d = float(np.mean([dice(p, w.gt) for p, w in zip(preds, train)]))
            key = (e, -d) if objective == "slices" else (-d, e)
            if best is None or key < best[0]:
                best = (key, t)
        for j in fold:
            held[PRODUCT_PLUS][j] = ({"key_area": best[1]}, product_cut(walks[j], best[1]))
    return held


def report(walks: list[Walk], n_folds: int, objective: str) -> list[dict]:
    held = cross_validate(walks, n_folds, objective)
    rows = []
    cols = ["product", PRODUCT_PLUS] + list(DESIGNS)
    print(f"\n== thresholds tuned by {objective} on the other folds; figures on the held-out structures")
    print(f"{'structure':30s} " + " ".join(f"{c:>18s}" for c in cols) + "   (added/short Dice)")
    totals = {c: [0, 0, []] for c in cols}
    for j, w in enumerate(walks):
        cells, row = [], {"name": w.name}
        for c in cols:
            pred = w.product if c == "product" else held[c][j][1]
            a, s = errors(pred, w.gt)
            d = dice(pred, w.gt)
            totals[c][0] += a
            totals[c][1] += s
            totals[c][2].append(d)
            row[c] = {"added": a, "short": s, "dice": d}
            if c != "product":
                row[c]["rule"] = {k: float(v) for k, v in held[c][j][0].items()}
            cells.append(f"{a:2d}/{s:<2d} {d:.3f}")
        rows.append(row)
        print(f"{w.name:30s} " + " ".join(f"{x:>18s}" for x in cells))
    e, d = score(walks, {})
    print(f"{'no rule but EMPTY':18s}: {e} slice(s) added + cut short, mean Dice {d:.3f}")
    for c in cols:
        a, s, d = totals[c]
        print(f"{c:18s}: {a} slice(s) added past the end, {s} cut short, mean Dice {np.mean(d):.3f} (n={len(d)})")
    for ds in sorted({getattr(w, "dataset", "ct") for w in walks}):
        sel = [j for j, w in enumerate(walks) if getattr(w, "dataset", "ct") == ds]
        e, d = score([walks[j] for j in sel], {})
        print(f"-- {ds}, {len(sel)} structures; no rule but EMPTY: {e} slice(s) added + cut short, mean Dice {d:.3f}")
        for c in cols:
            a = sum(rows[j][c]["added"] for j in sel)
            s_ = sum(rows[j][c]["short"] for j in sel)
            print(f"   {c:18s}: {a} added, {s_} cut short, mean Dice {np.mean([rows[j][c]['dice'] for j in sel]):.3f}")
    for c in [*DESIGNS, PRODUCT_PLUS]:
        chosen = sorted({json.dumps({k: float(v) for k, v in r.items()}) for r, _ in held[c].values()})
        print(f"{c:18s}: thresholds chosen per fold {', '.join(chosen)}")
    return rows


if __name__ == "__main__":
    main()
