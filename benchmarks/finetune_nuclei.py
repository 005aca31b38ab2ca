"""Fine-tune on the nuclei of the left half of nuclei_2d; evaluate on the right half.

Reports one-box Dice (every right-half nucleus, its exact box, the box path
napari-sam uses) and automatic F1@0.5 on the right half, for the base model
and the tuned one in the same run, and the training time. Nuclei cut by the
middle line belong to neither half. Usage: python benchmarks/finetune_nuclei.py [--epochs N] [--trainable head]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # before anything that may import napari

from common import ROOT, shared_data_dir  # noqa: F401  (puts src/ on sys.path)
from napari_sam.automatic import AutomaticSegmenter, AutoSettings  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.evaluation import dice, match_instances  # noqa: E402
from napari_sam.finetune.data import samples_from_volume  # noqa: E402
from napari_sam.finetune.pipeline import finetune_samples, tuned_backend  # noqa: E402
from napari_sam.finetune.train import FinetuneSettings  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.intensity import resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.predictor import SlicePredictor  # noqa: E402


def halves(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves of the instance map, without the nuclei cut by the middle."""
    mid = lab.shape[1] // 2
    left, right = lab[:, :mid].copy(), lab[:, mid:].copy()
    cut = set(np.unique(left)) & set(np.unique(right)) - {0}
    for half in (left, right):
        half[np.isin(half, list(cut))] = 0
    return left, right


def one_box_dice(backend, image01: np.ndarray, lab: np.ndarray) -> list[float]:
    pred = SlicePredictor(backend)
    pred.set_image(image01)
    out = []
    for i in np.unique(lab):
        if i == 0:
            continue
        gt = lab == i
        out.append(dice(pred.predict(box=box_of_mask(gt), multimask=False).mask, gt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--trainable", default="head")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-auto", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = shared_data_dir() / "nuclei_2d"
    raw = tifffile.imread(d / "image.tif")
    lab = tifffile.imread(d / "labels.tif").astype(np.int32)
    win = resolve_window(raw)
    mid = raw.shape[1] // 2
    left_lab, right_lab = halves(lab)
    left_img, right_img = raw[:, :mid], raw[:, mid:]
    base = load_model()
    emb = SliceEmbeddings(base, left_img[None], win, 0)
    samples = samples_from_volume(
        lambda w: emb,
        left_lab[None],
        {},
        {int(i): win for i in np.unique(left_lab)},
        "nuclei_left",
        4 * base.prompt_encoder.image_embedding_size[0],
    )
    settings = FinetuneSettings(epochs=args.epochs, trainable=args.trainable, lr=args.lr)
    t0 = time.perf_counter()
    out = finetune_samples(base, samples, settings)
    t_train = time.perf_counter() - t0
    tuned = tuned_backend(base, out.trainer)
    r01 = win.apply(right_img)
    d0, d1 = one_box_dice(base, r01, right_lab), one_box_dice(tuned, r01, right_lab)
    la = os.getloadavg()
    print(
        f"load average {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}; torch threads 1; trainable {args.trainable} "
        f"({out.trainer.n_trainable} parameters), lr {args.lr}"
    )
    print(
        f"train: {out.n_train} nuclei (left half), validation {out.n_val}; epochs run "
        f"{len(out.result.history) - 1}, best epoch {out.result.best_epoch}; training {t_train:.1f} s"
    )
    print(
        f"validation Dice (decoder grid): base {out.result.base_val_dice:.3f} -> tuned {out.result.best_val_dice:.3f}"
    )
    print(
        f"right half, one box per nucleus ({len(d0)} nuclei): Dice mean {np.mean(d0):.3f} median "
        f"{np.median(d0):.3f} (base) -> mean {np.mean(d1):.3f} median {np.median(d1):.3f} (tuned)"
    )
    if not args.no_auto:
        for name, b in (("base", base), ("tuned", tuned)):
            res = AutomaticSegmenter(b, AutoSettings.for_microscopy()).segment(r01)
            print(f"right half, automatic ({name}): {match_instances(res.labels, right_lab).summary()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
