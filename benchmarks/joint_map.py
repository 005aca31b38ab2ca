"""Joint-map loss of the overlap rule: every structure's masks in one label map
against each structure scored alone.

    python benchmarks/joint_map.py ct mr [--cache-dir DIR] [--no-propagated]

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
is the mean Dice alone minus the mean Dice in the joint map.
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


def score(name: str, what: str, vol, labels, objects: list[ObjectMasks]) -> None:
    alone = np.mean([dice(o.volume(labels.shape), labels == o.id) for o in objects])
    joint = resolve_overlaps(labels.shape, objects, vol.geometry.scale_zyx)
    old = first_listed_wins(labels.shape, objects)
    dj = np.mean([dice(joint == o.id, labels == o.id) for o in objects])
    do = np.mean([dice(old == o.id, labels == o.id) for o in objects])
    print(
        f"{name}, {what}: {len(objects)} structures; mean Dice alone {alone:.4f}; joint map, resolve_overlaps "
        f"{dj:.4f} (loss {alone - dj:.4f}); joint map, first listed wins {do:.4f} (loss {alone - do:.4f})",
        flush=True,
    )


def run(name: str, backend, cache: Path, propagated: bool = True) -> None:
    vol, labels, names, _path, ids, windows = dataset(name)
    by_window, embs = {}, {}
    for i in ids:
        w = windows[i]
        if w not in by_window:
            win = parse_window(w) if w else resolve_window(vol.array, None, vol.metadata.get("modality"))
            by_window[w] = SliceEmbeddings(backend, vol.array, win, 0, cache_dir=cache)
        embs[i] = by_window[w]
    score(name, "true boxes", vol, labels, true_box_objects(vol, labels, ids, embs, backend))
    if propagated:
        score(name, "propagated", vol, labels, propagated_objects(vol, labels, ids, embs, backend))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["ct", "mr"], choices=["ct", "mr"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-propagated", action="store_true", help="only the true-box masks")
    args = ap.parse_args()
    backend = load_model("lite_medsam")
    for name in args.datasets:
        run(name, backend, resolve_cache_dir(args.cache_dir), not args.no_propagated)


if __name__ == "__main__":
    main()
