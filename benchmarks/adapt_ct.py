"""In-session adaptation on the shared CT: commit k = 1, 2, 3 key slices of an
object (the reference masks, as a user who corrected them), propagate with the
base model, then adapt to those slices and propagate again.

Prints 3D Dice without / with adaptation and the adaptation time, per
structure and k. Usage: python benchmarks/adapt_ct.py [--cache-dir DIR] [--budget S]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np  # noqa: E402
import torch  # before anything that may import napari

from common import dice, load_ct  # noqa: F401  (puts src/ on sys.path)
from napari_sam.cache import content_hash  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.finetune.adapt import adapt_to_slices  # noqa: E402
from napari_sam.intensity import resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator  # noqa: E402

STRUCTURES = ("stomach", "colon", "adrenal_gland_right")


def key_slices(gt: np.ndarray, k: int) -> list[int]:
    """k slices spread evenly over the object's extent (z indices where it is present)."""
    zs = [z for z in range(gt.shape[0]) if gt[z].any()]
    return sorted({zs[int(round((i + 1) * (len(zs) + 1) / (k + 1))) - 1] for i in range(k)})


def propagate(backend, emb, gt: np.ndarray, keys: list[int]) -> np.ndarray:
    state = PropagationState(shape=gt.shape)
    for z in keys:
        state.set_user_mask(z, gt[z])
    Propagator(backend, emb).propagate(state)
    return state.volume_mask()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--ks", default="1,2,3")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vol, labels, names = load_ct()
    ids = {v: k for k, v in names.items()}
    base = load_model()
    win = resolve_window(vol.array, None, vol.metadata.get("modality"), vol.metadata.get("dicom_window"))
    emb = SliceEmbeddings(
        base, vol.array, win, 0, cache_dir=args.cache_dir, image_hash=content_hash(vol.array), max_in_memory=64
    )
    print(f"window {win.key()}; torch threads 1; adaptation budget {args.budget:.0f} s")
    print("structure             k  keys        3D Dice base  adapted  adapt s  steps")
    rows = []
    for name in STRUCTURES:
        gt = labels == ids[name]
        for k in (int(v) for v in args.ks.split(",")):
            keys = key_slices(gt, k)
            d0 = dice(propagate(base, emb, gt, keys), gt)
            t0 = time.perf_counter()
            res = adapt_to_slices(base, emb, {z: gt[z] for z in keys}, time_budget=args.budget)
            t = time.perf_counter() - t0
            d1 = dice(propagate(res.backend, emb, gt, keys), gt)
            rows.append((name, k, d0, d1, t))
            la = os.getloadavg()[0]
            print(
                f"{name:20s} {k:2d}  {str(keys):10s}  {d0:.3f}        {d1:.3f}    {t:5.1f}    {res.steps:3d}"
                f"   (load {la:.1f})",
                flush=True,
            )
    d0s, d1s = [r[2] for r in rows], [r[3] for r in rows]
    print(
        f"mean 3D Dice: base {np.mean(d0s):.3f} -> adapted {np.mean(d1s):.3f}; adaptation median "
        f"{np.median([r[4] for r in rows]):.1f} s"
    )


if __name__ == "__main__":
    main()
