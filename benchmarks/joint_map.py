"""Joint-map loss of the overlap rule: every structure's masks in one label map
against each structure scored alone.

    python benchmarks/joint_map.py ct mr [--cache-dir DIR]

Each structure's masks are the embedded model's answers to the label's own
box on every slice it covers (all structures at once, so neighbours overlap
as they do after propagation). They are painted into one label map by
``napari_sam.overlaps.resolve_overlaps`` (key slices: each structure's
largest slice, as the benchmark protocols prompt it) and by the earlier
first-listed-wins rule, and scored against the labels; the loss is the mean
Dice alone minus the mean Dice in the joint map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice  # noqa: E402
from interactive_3d import dataset  # noqa: E402
from napari_sam.cache import resolve_cache_dir  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.intensity import parse_window, resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.overlaps import ObjectMasks, resolve_overlaps  # noqa: E402


def first_listed_wins(shape, objects):
    out = np.zeros(shape, np.uint16)
    for o in objects:
        v = o.volume(shape)
        out[v & (out == 0)] = o.id
    return out


def run(name: str, backend, cache: Path) -> None:
    vol, labels, names, _path, ids, windows = dataset(name)
    embs = {}
    objects = []
    for i in ids:
        w = windows[i]
        if w not in embs:
            win = parse_window(w) if w else resolve_window(vol.array, None, vol.metadata.get("modality"))
            embs[w] = SliceEmbeddings(backend, vol.array, win, 0, cache_dir=cache)
        gt = labels == i
        masks = {}
        for z in np.flatnonzero(gt.any((1, 2))):
            b = np.asarray(box_of_mask(gt[z]), np.float32)[None]
            with torch.inference_mode():
                masks[int(z)] = backend.decode(embs[w].get(int(z)), boxes_rc=b).masks[0, 0]
        objects.append(ObjectMasks(i, 0, masks, {int(gt.sum((1, 2)).argmax())}))
    alone = np.mean([dice(o.volume(labels.shape), labels == o.id) for o in objects])
    joint = resolve_overlaps(labels.shape, objects, vol.geometry.scale_zyx)
    old = first_listed_wins(labels.shape, objects)
    dj = np.mean([dice(joint == o.id, labels == o.id) for o in objects])
    do = np.mean([dice(old == o.id, labels == o.id) for o in objects])
    print(
        f"{name}: {len(ids)} structures; mean Dice alone {alone:.4f}; joint map, resolve_overlaps {dj:.4f} "
        f"(loss {alone - dj:.4f}); joint map, first listed wins {do:.4f} (loss {alone - do:.4f})",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["ct", "mr"], choices=["ct", "mr"])
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    backend = load_model("lite_medsam")
    for name in args.datasets:
        run(name, backend, resolve_cache_dir(args.cache_dir))


if __name__ == "__main__":
    main()
