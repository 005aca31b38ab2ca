"""How often is candidate 1 the best? Every click (and box) on the shared CT.

For every labelled structure on every slice where it covers at least
``--min-area`` pixels, one positive click at its deepest point (the simulated
user's first click) and one box (its bounding box) are given to the embedded
LiteMedSAM through :class:`napari_sam.clicks.ClickStrategy` (whole slice, no
zoom). Every hypothesis the strategy decoded is kept with its ranking
features and its Dice against the truth, so that the *old* ranking (the
pre-#14 ``rank_key``: violations, then predicted IoU + consistency - truncation)
and the *new* one (:func:`napari_sam.clicks.candidate_order`) are compared on
the very same decodes. Reported: for each, how often the first candidate is
the best of the candidates shown (by Dice, ties within 0.005 count as best),
and the mean Dice of candidate 1.

    python benchmarks/candidate_ranking.py [--min-area 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from common import deepest_point, dice, load_ct  # noqa: E402
from napari_sam import load_model, resolve_window
from napari_sam.cache import default_cache_dir
from napari_sam.clicks import ClickStrategy, candidate_order, distinct
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.prompts import as_slice_prompt


def old_order(hyps):
    """The ranking before #14 (clicks.py's rank_key at commit 08eb605)."""
    return sorted(hyps, key=lambda h: (h.violations, -(h.score + 1.0 * h.consistency - 0.5 * h.truncation)))


def evaluate(strategy, emb, prompt, truth):
    hyps = strategy._box_hypotheses(emb, prompt, None)
    low = torch.stack([h.low for h in hyps])[None]
    full = (strategy.backend.upsample(low, emb)[0] > 0).cpu().numpy()
    for h, m in zip(hyps, full):
        h.dice = dice(m, truth)
    out = {}
    for name, order in (("old", old_order), ("new", candidate_order)):
        shown = distinct(order(list(hyps)), 3)
        d = [h.dice for h in shown]
        out[name] = {"dice": d, "first_best": bool(d[0] >= max(d) - 0.005), "n": len(d)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-area", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vol, labels, names = load_ct()
    backend = load_model()
    window = resolve_window(vol.array)
    embs = SliceEmbeddings(backend, vol.array, window, cache_dir=default_cache_dir())
    strategy = ClickStrategy(backend)
    rows = []
    t0 = time.perf_counter()
    for z in range(vol.array.shape[0]):
        emb = embs.get(z)
        for lid in np.unique(labels[z]):
            truth = labels[z] == lid
            if lid == 0 or truth.sum() < args.min_area:
                continue
            rr, cc = np.nonzero(truth)
            box = (rr.min(), cc.min(), rr.max(), cc.max())
            for kind, prompt in (
                ("click", as_slice_prompt([deepest_point(truth)], [1], None)),
                ("box", as_slice_prompt(None, None, box)),
            ):
                r = evaluate(strategy, emb, prompt, truth)
                rows.append({"z": z, "id": int(lid), "name": names.get(int(lid), str(lid)), "kind": kind, **r})
    print(f"{len(rows)} prompts in {time.perf_counter() - t0:.0f} s")
    for kind in ("click", "box"):
        sel = [r for r in rows if r["kind"] == kind]
        multi = [r for r in sel if r["old"]["n"] > 1 or r["new"]["n"] > 1]
        for name in ("old", "new"):
            fb = np.mean([r[name]["first_best"] for r in sel])
            fbm = np.mean([r[name]["first_best"] for r in multi]) if multi else float("nan")
            d1 = np.mean([r[name]["dice"][0] for r in sel])
            print(
                f"{kind:5s} {name}: candidate 1 best in {fb:.1%} of {len(sel)} "
                f"({fbm:.1%} of the {len(multi)} with >1 candidate); mean Dice of candidate 1 {d1:.3f}"
            )
    sp = [r for r in rows if r["kind"] == "click" and r["name"] == "spleen"]
    for name in ("old", "new"):
        print(
            f"spleen clicks {name}: first best {np.mean([r[name]['first_best'] for r in sp]):.1%} "
            f"of {len(sp)}, mean Dice 1st {np.mean([r[name]['dice'][0] for r in sp]):.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
