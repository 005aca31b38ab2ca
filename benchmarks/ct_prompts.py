"""2D prompts on the shared CT with the embedded model: one box per slice
(mean Dice) and clicks only (NoC@85 capped at 10, Dice after one click).

    python benchmarks/ct_prompts.py [--structures liver,spleen,stomach,aorta] [--every 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import dice, load_ct, simulate_clicks
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.geometry import box_of_mask
from napari_sam.intensity import parse_window
from napari_sam.models.registry import load_model
from napari_sam.predictor import SlicePredictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--structures", default="liver,spleen,stomach,aorta")
    ap.add_argument("--every", type=int, default=1, help="use every k-th slice")
    ap.add_argument("--min-pixels", type=int, default=100)
    args = ap.parse_args()
    vol, labels, names = load_ct()
    ids = {v: k for k, v in names.items()}
    model = load_model("lite_medsam")
    emb = SliceEmbeddings(model, vol.array, parse_window("soft-tissue"), max_in_memory=64)
    pred = SlicePredictor(model)
    print(f"{'structure':12s} {'slices':>6s} {'box Dice':>9s} {'NoC@85':>7s} {'1-click':>8s} {'ms/click':>9s}")
    for name in args.structures.split(","):
        lid = ids[name]
        zs = [z for z in range(vol.shape[0]) if (labels[z] == lid).sum() >= args.min_pixels][:: args.every]
        box_d, nocs, first, times = [], [], [], []
        for z in zs:
            gt = labels[z] == lid
            pred.set_embedding(emb.get(z))
            box_d.append(dice(pred.predict(box=box_of_mask(gt), multimask=False).mask, gt))
            t = time.perf_counter()
            run = simulate_clicks(pred, gt, max_clicks=10, stop_at=0.85)
            times.append((time.perf_counter() - t) / len(run.dices))
            nocs.append(run.clicks_to(0.85, cap=10))
            first.append(run.dices[0])
        print(
            f"{name:12s} {len(zs):6d} {np.mean(box_d):9.4f} {np.mean(nocs):7.2f} {np.mean(first):8.3f} "
            f"{statistics.median(times) * 1000:9.0f}"
        )


if __name__ == "__main__":
    main()
