"""Text prompts: find a taught class by name, then segment it like a user's box.

A text prompt names a class that the model was taught from annotations
(:mod:`napari_sam.finetune.classes`). For each named class the class head
scores every feature cell of every slice; the class's cells (where it is the
most probable class, at probability >= ``min_probability``) are grouped into
26-connected regions across slices, and the region with the largest summed
probability is the object. Its slice with the largest summed probability is
the key slice, and the box of
its cells there (one cell = 4 model-input pixels on LiteMedSAM) is the box
prompt. In 3D the object then propagates from that slice, exactly as if the
user had drawn the box: the result is an ordinary prompts file
(:func:`text_prompts_file`), so the CLI, the API and the widget run it
through the one segmentation pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .finetune.classes import ClassHead, grid_fractions
from .models.base import Embedding

__all__ = ["Found", "class_probabilities", "find_class", "name_instances", "text_prompts_file"]

#: a cell counts for a class when the class is its most probable one and at least this probable
MIN_PROBABILITY = 0.5


@dataclass(frozen=True)
class Found:
    """Where a class was found: key ``slice``, its ``box`` (r0, c0, r1, c1) in slice pixels,
    the mean class probability of the region's cells (``confidence``) and its size in cells."""

    name: str
    slice: int
    box: tuple[int, int, int, int]
    confidence: float
    cells: int


def class_probabilities(head: ClassHead, embeddings: Sequence[Embedding]) -> np.ndarray:
    """(Z, K + 1, h, w) float32 class probabilities of every feature cell of every slice."""
    with torch.no_grad():
        return np.stack([head.probabilities(e).numpy() for e in embeddings]).astype(np.float32)


def _cell_box(cells: np.ndarray, emb: Embedding, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box of the (h, w) boolean ``cells`` of one slice."""
    h, w = cells.shape
    rows, cols = np.flatnonzero(cells.any(1)), np.flatnonzero(cells.any(0))
    ih, iw = emb.input_size
    oh, ow = emb.original_size
    sr, sc = image_size / h * oh / ih, image_size / w * ow / iw  # slice pixels per cell
    r0, c0 = int(np.floor(rows[0] * sr)), int(np.floor(cols[0] * sc))
    r1, c1 = int(np.ceil((rows[-1] + 1) * sr)) - 1, int(np.ceil((cols[-1] + 1) * sc)) - 1
    return r0, c0, min(r1, oh - 1), min(c1, ow - 1)


def find_class(
    head: ClassHead,
    name: str,
    probs: np.ndarray,
    embeddings: Sequence[Embedding],
    image_size: int,
    min_probability: float = MIN_PROBABILITY,
) -> Found | None:
    """Locate class ``name`` (InputError listing the taught classes if unknown); None if no cell is its."""
    k = head.index_of(name)
    cells = (probs.argmax(1) == k) & (probs[:, k] >= min_probability)
    regions, n = ndimage.label(cells, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    mass = ndimage.sum(probs[:, k], regions, index=np.arange(1, n + 1))
    best = regions == int(np.argmax(mass)) + 1
    z = int((probs[:, k] * best).reshape(len(best), -1).sum(1).argmax())  # the most confident slice
    box = _cell_box(best[z], embeddings[z], image_size)
    return Found(head.names[k - 1], z, box, float(probs[z, k][best[z]].mean()), int(best.sum()))


def parse_class_names(text: str) -> list[str]:
    """``"liver, spleen"`` -> ["liver", "spleen"]; empty or repeated names are refused."""
    names = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise InputError(f"--text {text!r}: give class names separated by commas, e.g. 'liver,spleen'")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise InputError(f"--text {text!r}: a class is named twice")
    return names


def text_prompts_file(
    head: ClassHead,
    names: Sequence[str],
    embeddings: Sequence[Embedding],
    image_size: int,
    propagate: bool,
    warn: Callable[[str], None] | None = None,
) -> tuple[dict, list[Found]]:
    """The prompts-file document (``{"objects": [...]}``) that boxes each found class on its
    key slice (and propagates it in 3D), and what was found. Classes not found are
    left out and reported through ``warn``; InputError when none is found."""
    for name in names:
        head.index_of(name)  # every name is checked before any work is reported
    probs = class_probabilities(head, embeddings)
    objects, found = [], []
    for name in names:
        hit = find_class(head, name, probs, embeddings, image_size)
        if hit is None:
            if warn is not None:
                warn(f"class {name!r}: not found in this image (no region where it is the most probable class)")
            continue
        found.append(hit)
        objects.append(
            {
                "id": len(objects) + 1,
                "name": hit.name,
                "propagate": propagate,
                "prompts": [{"slice": hit.slice, "box": list(hit.box)}],
            }
        )
    if not objects:
        raise InputError(f"none of the classes {', '.join(names)} was found in this image")
    return {"objects": objects}, found


def name_instances(
    head: ClassHead, labels: np.ndarray, embedding_of: Callable[[int], Embedding], image_size: int
) -> dict[int, tuple[str, float]]:
    """The taught class of every instance of a (z, rows, cols) label map, with its confidence.

    An instance's class is the one with the highest mean probability over the
    feature cells it covers (area-weighted, so partial cells count by their
    share); confidence is that mean probability. The background counts as a
    class: an instance the head calls background gets ``("unknown", p)``.
    ``embedding_of(z)`` gives slice z's embedding; it is asked only for slices
    that hold an instance.
    """
    ids = [int(v) for v in np.unique(labels) if v != 0]
    if not ids:
        return {}
    sums = np.zeros((len(ids), len(head.names) + 1))
    weights = np.zeros(len(ids))
    for z in range(labels.shape[0]):
        present = [int(i) for i in np.unique(labels[z]) if i != 0]
        if not present:
            continue
        emb = embedding_of(z)
        with torch.no_grad():
            p = head.probabilities(emb).numpy().reshape(len(head.names) + 1, -1)
        frac = grid_fractions(np.stack([labels[z] == i for i in present]), emb, image_size).numpy()
        frac = frac.reshape(len(present), -1)
        rows = [ids.index(i) for i in present]
        sums[rows] += frac @ p.T
        weights[rows] += frac.sum(1)
    out = {}
    for row, i in enumerate(ids):
        mean = sums[row] / max(weights[row], 1e-9)
        k = int(mean.argmax())
        out[i] = (head.names[k - 1] if k else "unknown", float(mean[k]))
    return out
