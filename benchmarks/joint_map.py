"""Joint-map loss of the overlap rule: every structure's masks in one label map
against each structure scored alone.

    python benchmarks/joint_map.py ct mr [--cache-dir DIR] [--no-propagated] [--per-structure]

Two sets of masks per dataset, every structure of the interactive protocol
(``benchmarks/interactive_3d.py``: from the labels):

- *true boxes*: the embedded model's answers to the label's own box on every
  slice it covers (all structures at once, so neighbours overlap);
- *propagated* (step 0 of the interactive protocol): one box on each
  structure's largest slice, propagated by the product (``Propagator``, the
  key-slice rule the CLI uses for that volume), each structure on its own.

They are painted into one label map by ``napari_sam.overlaps.resolve_overlaps``
(key slices: each structure's largest slice, as the protocols prompt it) and
by the earlier first-listed-wins rule, and scored against the labels; the loss
is the mean Dice alone minus the mean Dice in the joint map; the largest
loss of one structure is printed with it (``--per-structure``: every
structure's Dice alone and in the joint map).
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
from napari_sam.prompts import SlicePrompt  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator  # noqa: E402
from napari_sam.segmentation import key_choice_for  # noqa: E402
from napari_sam.torch_threads import decoding  # noqa: E402


def first_listed_wins(shape, objects):
    out = np.zeros(shape, np.uint16)
    for o in objects:
        v = o.volume(shape)
        out[v & (out == 0)] = o.id
    return out


def true_box_objects(vol, labels, ids, embs, backend) -> list[ObjectMasks]:
    """Each structure: the model's answer to its label's box on every slice it covers."""
    objects = []
    for i in ids:
        gt = labels == i
        masks = {}
        for z in np.flatnonzero(gt.any((1, 2))):
            b = np.asarray(box_of_mask(gt[z]), np.float32)[None]
            with torch.inference_mode():
                masks[int(z)] = backend.decode(embs[i].get(int(z)), boxes_rc=b).masks[0, 0]
        objects.append(ObjectMasks(i, 0, masks, {int(gt.sum((1, 2)).argmax())}))
    return objects


def propagated_objects(vol, labels, ids, embs, backend) -> list[ObjectMasks]:
    """Each structure on its own: one box on its largest slice, propagated by the product."""
    objects = []
    for i in ids:
        gt = labels == i
        z0 = int(gt.sum((1, 2)).argmax())
        state = PropagationState(shape=labels.shape, axis=0)
        state.add_prompt(z0, SlicePrompt(box=box_of_mask(gt[z0]), slice=z0))
        with decoding():
            Propagator(backend, embs[i], key_choice=key_choice_for(vol)).propagate(state)
        objects.append(ObjectMasks(i, 0, dict(state.results), {z0}))
    return objects


def score(name: str, what: str, vol, labels, names, objects: list[ObjectMasks], per_structure: bool = False) -> None:
    alone_each = np.array([dice(o.volume(labels.shape), labels == o.id) for o in objects])
    joint = resolve_overlaps(labels.shape, objects, vol.geometry.scale_zyx)
    old = first_listed_wins(labels.shape, objects)
    joint_each = np.array([dice(joint == o.id, labels == o.id) for o in objects])
    alone, dj = alone_each.mean(), joint_each.mean()
    do = np.mean([dice(old == o.id, labels == o.id) for o in objects])
    worst = int(np.argmax(alone_each - joint_each))
    print(
        f"{name}, {what}: {len(objects)} structures; mean Dice alone {alone:.4f}; joint map, resolve_overlaps "
        f"{dj:.4f} (loss {alone - dj:.4f}; largest {alone_each[worst] - joint_each[worst]:.4f}, "
        f"{names[objects[worst].id]}); joint map, first listed wins {do:.4f} (loss {alone - do:.4f})",
        flush=True,
    )
    if per_structure:
        for o, a, j in zip(objects, alone_each, joint_each):
            print(f"  {names[o.id]:32s} alone {a:.3f}  joint {j:.3f}  loss {a - j:+.3f}")


def run(name: str, backend, cache: Path, propagated: bool = True, per_structure: bool = False) -> None:
    vol, labels, names, _path, ids, windows = dataset(name)
    by_window, embs = {}, {}
    for i in ids:
        w = windows[i]
        if w not in by_window:
            win = parse_window(w) if w else resolve_window(vol.array, None, vol.metadata.get("modality"))
            by_window[w] = SliceEmbeddings(backend, vol.array, win, 0, cache_dir=cache)
        embs[i] = by_window[w]
    score(name, "true boxes", vol, labels, names, true_box_objects(vol, labels, ids, embs, backend), per_structure)
    if propagated:
        objects = propagated_objects(vol, labels, ids, embs, backend)
        score(name, "propagated", vol, labels, names, objects, per_structure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["ct", "mr"], choices=["ct", "mr"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-propagated", action="store_true", help="only the true-box masks")
    ap.add_argument("--per-structure", action="store_true", help="every structure's Dice alone and joint")
    args = ap.parse_args()
    backend = load_model("lite_medsam")
    for name in args.datasets:
        run(name, backend, resolve_cache_dir(args.cache_dir), not args.no_propagated, args.per_structure)


if __name__ == "__main__":
    main()
