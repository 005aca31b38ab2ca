"""How often is candidate 1 the best? Every click (and box) on the shared CT (or MR), cross-validated.

For every labelled structure on every slice where it covers at least
``--min-area`` pixels, one positive click at its deepest point (the simulated
user's first click) and one box (its bounding box) are given to the embedded
LiteMedSAM through :class:`napari_sam.clicks.ClickStrategy` (whole slice, no
zoom). Every hypothesis the strategy decoded is kept with its ranking
features and its Dice against the truth, so that rankings are compared on the
very same decodes:

- *old*: the pre-#14 ``rank_key`` (violations, then predicted IoU +
  consistency - 0.5 truncation);
- *shipped*: :func:`napari_sam.clicks.candidate_order` as it is in the code
  (+ stability - 1.5 truncation - 2 area, weights chosen on these very clicks);
- *truncation + area*: IoU - truncation - 2 area, the best two-weight rule
  here (not shipped: it costs the liver's one-click Dice);
- *cross-validated*: each family of rules (violations, then predicted IoU
  + a stability + c consistency - b truncation - d area, some weights held
  at 0), its weights chosen by a grid search on some structures and scored
  on the others (``--folds`` structure-level folds: every slice of a
  structure is in one fold, so a fold's score is on structures the weights
  never saw), averaged over ``--seeds`` fold assignments. This estimates how
  well fitting that family generalises to structures it was not fitted on.

Reported for each: how often the first candidate is the best of the
candidates shown (by Dice, ties within 0.005 count as best), and the mean Dice
of candidate 1.

    python benchmarks/candidate_ranking.py [--data ct|mr] [--min-area 200] [--folds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from common import deepest_point, dice, load_ct, shared_data_dir  # noqa: E402
from napari_sam import load_model, read_image, resolve_window
from napari_sam.cache import default_cache_dir
from napari_sam.clicks import DISTINCT_IOU, ORDER_AREA, ORDER_STABILITY, ORDER_TRUNCATION, ClickStrategy
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.geometry import mask_iou
from napari_sam.io import read_labels_aligned
from napari_sam.prompts import as_slice_prompt

#: feature columns kept per hypothesis
FEATURES = ("violations", "score", "consistency", "stability", "truncation", "area")
#: (stability, consistency, truncation, area) weights: the rules compared
RULES = {
    "old (pre-#14)": (0.0, 1.0, 0.5, 0.0),
    "shipped": (ORDER_STABILITY, 0.0, ORDER_TRUNCATION, ORDER_AREA),
    "truncation + area": (0.0, 0.0, 1.0, 2.0),
}
_TRUNC, _AREA = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), (0.0, 1.0, 2.0, 4.0, 8.0)
#: the families of rules whose fitting is cross-validated (grids of weights)
FAMILIES = {
    "truncation + area": list(itertools.product((0.0,), (0.0,), _TRUNC, _AREA)),
    "all four weights": list(itertools.product((0.0, 0.5, 1.0, 2.0), (0.0, 0.5, 1.0), _TRUNC, _AREA)),
}


def load_mr():
    d = shared_data_dir() / "mr_small"
    vol = read_image(d / "image.nii.gz")
    labels = read_labels_aligned(d / "labels.nii.gz", vol)
    names = {int(k): v for k, v in json.loads((d / "labels.json").read_text()).items()}
    return vol, labels, names


def record(strategy, emb, prompt, truth) -> dict:
    """Every hypothesis's features, Dice and the masks' pairwise IoU (low-res grid)."""
    hyps = strategy._box_hypotheses(emb, prompt, None)
    low = torch.stack([h.low for h in hyps])[None]
    full = (strategy.backend.upsample(low, emb)[0] > 0).cpu().numpy()
    n = len(hyps)
    iou = np.eye(n)
    for i, j in itertools.combinations(range(n), 2):
        iou[i, j] = iou[j, i] = mask_iou(hyps[i].mask, hyps[j].mask)
    feats = [[float(getattr(h, f)) for f in FEATURES] for h in hyps]
    return {"feats": feats, "dice": [dice(m, truth) for m in full], "iou": iou.round(4).tolist()}


def first_best(row: dict, weights) -> tuple[bool, float]:
    """Whether candidate 1 is the best of the (up to 3 distinct) candidates shown under ``weights``, and its Dice."""
    f = np.asarray(row["feats"])
    a, c, b, d = weights
    quality = f[:, 1] + a * f[:, 3] + c * f[:, 2] - b * f[:, 4] - d * f[:, 5]
    order = np.lexsort((-quality, f[:, 0]))  # violations first, then quality (stable: ties keep decode order)
    iou = np.asarray(row["iou"])
    shown: list[int] = []
    for i in order:
        if all(iou[i, j] < DISTINCT_IOU for j in shown):
            shown.append(int(i))
        if len(shown) == 3:
            break
    dc = [row["dice"][i] for i in shown]
    return bool(dc[0] >= max(dc) - 0.005), float(dc[0])


def rate(rows: list[dict], weights) -> tuple[float, float]:
    """(fraction of rows whose candidate 1 is best, mean Dice of candidate 1)."""
    if not rows:
        return float("nan"), float("nan")
    r = [first_best(row, weights) for row in rows]
    return float(np.mean([x[0] for x in r])), float(np.mean([x[1] for x in r]))


def fit(rows: list[dict], grid: list) -> tuple:
    """The grid's weights with the most first-best rows (the mean Dice of candidate 1 breaks ties)."""
    return max(grid, key=lambda w: rate(rows, w))


def structure_folds(rows: list[dict], folds: int, seed: int) -> dict[int, int]:
    """Structure id -> fold: every prompt of a structure is in one fold."""
    ids = sorted({r["id"] for r in rows})
    return {int(i): k % folds for k, i in enumerate(np.random.default_rng(seed).permutation(ids))}


def cross_validate(rows: list[dict], grid: list, folds: int, seed: int = 0) -> dict:
    """Fit on the other structures' prompts, score on the held-out structure's: the
    held-out (first-best rate, mean Dice of candidate 1) and the weights each fold chose."""
    fold_of = structure_folds(rows, folds, seed)
    held, chosen = [], []
    for k in range(folds):
        w = fit([r for r in rows if fold_of[r["id"]] != k], grid)
        chosen.append(w)
        held += [first_best(r, w) for r in rows if fold_of[r["id"]] == k]
    return {
        "rate": float(np.mean([x[0] for x in held])),
        "dice": float(np.mean([x[1] for x in held])),
        "weights": chosen,
    }


def collect(data: str, min_area: int) -> list[dict]:
    vol, labels, names = load_ct() if data == "ct" else load_mr()
    backend = load_model()
    embs = SliceEmbeddings(backend, vol.array, resolve_window(vol.array), cache_dir=default_cache_dir())
    strategy = ClickStrategy(backend)
    rows = []
    for z in range(vol.array.shape[0]):
        emb = embs.get(z)
        for lid in np.unique(labels[z]):
            truth = labels[z] == lid
            if lid == 0 or truth.sum() < min_area:
                continue
            rr, cc = np.nonzero(truth)
            box = (rr.min(), cc.min(), rr.max(), cc.max())
            for kind, prompt in (
                ("click", as_slice_prompt([deepest_point(truth)], [1], None)),
                ("box", as_slice_prompt(None, None, box)),
            ):
                rec = record(strategy, emb, prompt, truth)
                rows.append({"z": z, "id": int(lid), "name": names.get(int(lid), str(lid)), "kind": kind, **rec})
    return rows


def report(rows: list[dict], folds: int, seeds: int) -> None:
    for kind in ("click", "box"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        print(f"{kind}s: {len(sel)} on {len({r['id'] for r in sel})} structures")
        for name, w in RULES.items():
            fb, d1 = rate(sel, w)
            print(f"  {name:22s} {w}: candidate 1 best in {fb:.1%}; mean Dice of candidate 1 {d1:.3f}")
        for organ in ("liver", "spleen", "stomach"):
            sp = [r for r in sel if r["name"] == organ]
            for name, w in RULES.items():
                fb, d1 = rate(sp, w)
                print(f"    {organ}, {name:22s}: first best {fb:.1%} of {len(sp)}, mean Dice 1st {d1:.3f}")
        if folds < 2 or len({r["id"] for r in sel}) < folds:
            continue
        for fam, grid in FAMILIES.items():
            w_all = fit(sel, grid)
            print(f"  {fam}: fitted on all {w_all}: {rate(sel, w_all)[0]:.1%} (in-sample, optimistic)")
            cvs = [cross_validate(sel, grid, folds, seed) for seed in range(seeds)]
            each = ", ".join(f"{c['rate']:.1%}" for c in cvs)
            print(
                f"    {folds}-fold structure-level CV, {seeds} fold assignments: held-out candidate 1 best in "
                f"{np.mean([c['rate'] for c in cvs]):.1%} ({each}); "
                f"mean Dice of candidate 1 {np.mean([c['dice'] for c in cvs]):.3f}"
            )
            print(f"    weights chosen per fold (first assignment): {cvs[0]['weights']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("ct", "mr"), default="ct")
    ap.add_argument("--min-area", type=int, default=200)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="fold assignments averaged")
    ap.add_argument("--json", default=None, help="write the decodes' features here")
    ap.add_argument("--from-json", default=None, help="rank the decodes of an earlier --json run (no model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)
    else:
        rows = collect(args.data, args.min_area)
    print(f"{args.data}: {len(rows)} prompts in {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    report(rows, args.folds, args.seeds)


if __name__ == "__main__":
    main()
