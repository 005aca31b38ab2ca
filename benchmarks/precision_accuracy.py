"""Encoder precision judged against ground truth: fp32 against bf16 (or fp16).

    python benchmarks/precision_accuracy.py [--precisions fp32,bf16] [--json OUT]
                                            [--parts boxes,propagation,nuclei]
                                            [--keep-fp32 layers.0,neck] [--baseline OLD.json]

--keep-fp32 keeps those encoder parts in fp32 when the rest runs bf16/fp16
(napari_sam.models.precision.KEEP_FP32); --baseline takes the first precision's
figures from an earlier run's JSON instead of computing them again.

On the shared CT, for every labelled structure of at least 1000 voxels (plus
the structures that end inside the 20 slices, as ``propagation_ct.py``):

boxes        one box per slice (the label's bounding box on every slice it
             covers): mean over those slices of the 2D Dice against the label;
propagation  the ``propagation_ct.py`` protocol: one box on the structure's
             largest slice, then ``Propagator`` (default settings) through
             the volume: 3D Dice against the label.

Bone window (400/1800) for skeletal structures, soft-tissue (40/400)
otherwise. Every slice is encoded once per precision and window; all prompts
reuse those embeddings (``encoder calls`` is printed to show it).

nuclei       automatic mode on ``nuclei_2d`` (``AutoSettings.for_microscopy``):
             instance F1@0.5 against the labels, per precision.

The decoder runs in float32 throughout; only the image encoder's precision
changes. Prints per-structure rows, the worst loss, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice, load_ct  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.intensity import parse_window  # noqa: E402
from napari_sam.models import precision as P  # noqa: E402
from napari_sam.models.precision import apply_precision  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import SlicePrompt  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator  # noqa: E402
from propagation_ct import MIN_VOXELS, structures, window_for  # noqa: E402


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f}"


def set_precision(backend, precision: str) -> None:
    apply_precision(backend, precision)


def embed_volume(backend, vol, precision: str) -> dict[str, SliceEmbeddings]:
    """Both windows' embeddings of every slice, encoded once with the encoder in ``precision``."""
    set_precision(backend, precision)
    out = {}
    for w in ("soft-tissue", "bone"):
        t = time.perf_counter()
        emb = SliceEmbeddings(backend, vol.array, parse_window(w), cache_dir=None, max_in_memory=64)
        emb.fill()
        out[w] = emb
        print(f"  {precision} {w}: {emb.encoder_calls} slices encoded in {time.perf_counter() - t:.1f} s", flush=True)
    return out


@torch.inference_mode()
def box_per_slice(backend, emb: SliceEmbeddings, gt: np.ndarray) -> float:
    """Mean 2D Dice of the label's own box on every slice it covers."""
    d = []
    for z in np.flatnonzero(gt.any((1, 2))):
        b = np.asarray(box_of_mask(gt[z]), np.float32)[None]
        d.append(dice(backend.decode(emb.get(int(z)), boxes_rc=b).masks[0, 0], gt[z]))
    return float(np.mean(d))


def propagate(backend, emb: SliceEmbeddings, gt: np.ndarray) -> float:
    """3D Dice of one box on the largest slice, propagated with default settings."""
    z0 = int(gt.sum((1, 2)).argmax())
    state = PropagationState(shape=gt.shape)
    state.add_prompt(z0, SlicePrompt(box=box_of_mask(gt[z0]), slice=z0))
    Propagator(backend, emb).propagate(state)
    return dice(state.volume_mask(), gt)


def part_ct(backend, precisions: list[str], parts: set[str]) -> list[dict]:
    vol, labels, names = load_ct()
    embs = {p: embed_volume(backend, vol, p) for p in precisions}
    # decoding: one thread (under other programs' load 2 spinning OpenMP threads stall each
    # of a prompt's many small parallel regions; docs/performance.md)
    torch.set_num_threads(1)
    rows = []
    for lid in structures(labels, names):
        name = names[lid]
        gt = labels == lid
        r = {"name": name, "voxels": int(gt.sum()), "slices": int(gt.any((1, 2)).sum()), "window": window_for(name)}
        for p in precisions:
            set_precision(backend, p)  # only matters if an embedding were missing
            emb = embs[p][window_for(name)]
            if "boxes" in parts:
                r[f"box_{p}"] = box_per_slice(backend, emb, gt)
            if "propagation" in parts:
                r[f"prop_{p}"] = propagate(backend, emb, gt)
        rows.append(r)
        print(
            f"{name:30s} {r['voxels']:7d} {r['slices']:3d}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith(("box_", "prop_"))),
            flush=True,
        )
    calls = {p: sum(e.encoder_calls for e in embs[p].values()) for p in precisions}
    print(f"encoder calls per precision (both windows): {calls}")
    return rows


def summarise(rows: list[dict], precisions: list[str]) -> None:
    base = precisions[0]
    big = [r for r in rows if r["voxels"] >= MIN_VOXELS]
    for kind in ("box", "prop"):
        if any(f"{kind}_{p}" not in rows[0] for p in precisions):
            continue
        for p in precisions[1:]:
            losses = [(r[f"{kind}_{base}"] - r[f"{kind}_{p}"], r["name"]) for r in big]
            worst = max(losses)
            mean_base = np.mean([r[f"{kind}_{base}"] for r in big])
            mean_p = np.mean([r[f"{kind}_{p}"] for r in big])
            over = [n for loss, n in losses if loss > 0.005]
            print(
                f"{kind}: {len(big)} structures >= {MIN_VOXELS} voxels; mean Dice {base} {mean_base:.4f}, "
                f"{p} {mean_p:.4f}; worst loss {worst[0]:+.4f} ({worst[1]}); "
                f"losing > 0.005: {', '.join(over) or 'none'}"
            )


def part_nuclei(backend, precisions: list[str]) -> dict[str, float]:
    from automatic import load_nuclei
    from napari_sam.automatic import AutomaticSegmenter, AutoSettings
    from napari_sam.embeddings import CropEmbeddings
    from napari_sam.evaluation import match_instances

    img, lab = load_nuclei()
    torch.set_num_threads(1)
    out = {}
    for p in precisions:
        set_precision(backend, p)
        t = time.perf_counter()
        res = AutomaticSegmenter(
            backend, AutoSettings.for_microscopy(), CropEmbeddings(backend, max_in_memory=256)
        ).segment(img)
        s = match_instances(res.labels, lab)
        out[p] = s.f1
        print(f"nuclei automatic, encoder {p}: {s.summary()} ({time.perf_counter() - t:.1f} s)", flush=True)
    for p in precisions[1:]:
        print(f"nuclei F1 loss {precisions[0]} -> {p}: {out[precisions[0]] - out[p]:+.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="fp32,bf16", help="the first is the baseline")
    ap.add_argument("--parts", default="boxes,propagation,nuclei")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--keep-fp32", default="", help="encoder parts kept fp32 in bf16/fp16, e.g. layers.0,neck")
    ap.add_argument("--baseline", default=None, help="JSON of an earlier run: the first precision's figures")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    parts = set(args.parts.split(","))
    if args.keep_fp32:
        P.KEEP_FP32["TinyViT"] = tuple(args.keep_fp32.split(","))
    print(f"encoder parts kept fp32 in half precision: {P.KEEP_FP32.get('TinyViT', ())}")
    old = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    todo = precisions[1:] if old else precisions
    print(load(), f"torch threads {torch.get_num_threads()}", flush=True)
    backend = load_model("lite_medsam")  # set_dtype picks each precision below
    result: dict = {}
    if parts & {"boxes", "propagation"}:
        rows = part_ct(backend, todo, parts)
        if old:
            base = {r["name"]: r for r in old["ct"]}
            for r in rows:
                r.update({k: v for k, v in base[r["name"]].items() if k.endswith("_" + precisions[0])})
        summarise(rows, precisions)
        result["ct"] = rows
    if "nuclei" in parts:
        f1 = part_nuclei(backend, todo)
        if old:
            f1 = {precisions[0]: old["nuclei_f1"][precisions[0]], **f1}
            for p in precisions[1:]:
                print(f"nuclei F1 loss {precisions[0]} -> {p}: {f1[precisions[0]] - f1[p]:+.4f}")
        result["nuclei_f1"] = f1
    print(load())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
