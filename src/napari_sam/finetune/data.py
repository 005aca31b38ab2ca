"""Training data for fine-tuning: (image, label map) pairs -> cached embeddings + targets,
and prompts simulated the way users prompt.

A :class:`TrainingSample` is one object on one slice: the slice's encoder
embedding (shared by every object of the slice, read from the embedding cache
:class:`napari_sam.embeddings.SliceEmbeddings`), the object's mask on the slice
grid (rows, cols) and the same mask on the model's low-resolution output grid
(the padded model input; LiteMedSAM: 256 x 256), plus the boxes of the same
object on the neighbouring slices (what propagation prompts with).

Prompts (:func:`simulate_box`) are boxes in napari's (r0, c0, r1, c1)
slice-pixel order, inclusive:

- ``user``: the object's box with each side jittered (a hand-drawn box);
- ``propagation``: the box of the object on a neighbouring slice plus the
  margin :class:`napari_sam.propagation.Propagator` adds (the trained model is
  then the one propagation uses);
- ``correction``: a click on the largest error region of the current
  prediction, turned into the box hypothesis :mod:`napari_sam.clicks` builds
  for it (the predicted mask's box grown to a missed region, cut back at a
  wrong one): the embedded LiteMedSAM takes boxes only, so iterative clicks
  reach it as boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..embeddings import SliceEmbeddings
from ..errors import InputError
from ..evaluation import deepest_point
from ..geometry import box_of_mask
from ..intensity import Window

#: smallest object (pixels on the slice grid) used for training
MIN_AREA = 16
#: label names that suggest the bone / lung window (a user's choice for those structures)
_BONE_WORDS = (
    "vertebra",
    "rib",
    "sacrum",
    "hip",
    "femur",
    "humerus",
    "scapula",
    "clavicula",
    "sternum",
    "skull",
    "costal",
    "bone",
    "spine",
)
_LUNG_WORDS = ("lung", "trachea", "bronch")

Progress = Callable[[int, int, str], None]


@dataclass
class TrainingSample:
    """One object on one slice, ready for the decoder.

    features: (1, C, h, w) float32 slice embedding (shared between samples of a slice).
    original_size: (H, W) of the slice, pixels; input_size: (h', w') of the
        resized slice inside the model's padded input.
    mask: (H, W) bool, the object on the slice grid.
    target: (s, s) float32 in {0, 1}, the object on the decoder's output grid
        (the padded model frame; zeros in the padding).
    neighbour_boxes: boxes (r0, c0, r1, c1) of the object on the adjacent slices.
    name / label: the structure; group: the held-out unit (image and slice).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    mask: np.ndarray
    target: torch.Tensor
    name: str
    label: int
    group: str
    neighbour_boxes: list[np.ndarray] = field(default_factory=list)


def window_for_structure(name: str, default: Window, bone: Window | None, lung: Window | None) -> Window:
    """The window a user would pick for a structure: bone for bones, lung for lungs, else ``default``."""
    low = name.lower()
    if bone is not None and any(w in low for w in _BONE_WORDS):
        return bone
    if lung is not None and any(w in low for w in _LUNG_WORDS):
        return lung
    return default


def target_on_model_grid(mask: np.ndarray, input_size: tuple[int, int], model_size: int, side: int) -> torch.Tensor:
    """(H, W) bool mask -> (side, side) float32 target on the decoder's padded output grid.

    input_size: (h', w') of the slice inside the model's square input of
    ``model_size`` pixels; the decoder's output covers that input at ``side``
    pixels. The mask is area-resized to the image's part of the output (a
    pixel is in when half of it is) and zero-padded like the model input.
    """
    h, w = (max(1, int(round(v * side / model_size))) for v in input_size)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(h, w), mode="area")[0, 0]
    out = torch.zeros(side, side)
    out[:h, :w] = (t >= 0.5).float()
    return out


def samples_for_slice(
    embeddings: SliceEmbeddings,
    index: int,
    labels2d: dict[int, np.ndarray],
    names: dict[int, str],
    group: str,
    out_side: int,
    neighbours: dict[int, list[np.ndarray]] | None = None,
) -> list[TrainingSample]:
    """The samples of one slice: one per label present with at least :data:`MIN_AREA` pixels.

    labels2d: label id -> (H, W) bool mask on slice ``index``.
    neighbours: label id -> boxes of that label on the adjacent slices.
    """
    present = {k: m for k, m in labels2d.items() if int(m.sum()) >= MIN_AREA}
    if not present:
        return []
    emb = embeddings.get(index)
    feats = emb.features.detach().float().cpu().clone()  # a normal tensor (not an inference one)
    out = []
    for lab, m in present.items():
        out.append(
            TrainingSample(
                features=feats,
                original_size=tuple(emb.original_size),
                input_size=tuple(emb.input_size),
                mask=m,
                target=target_on_model_grid(m, emb.input_size, embeddings.backend.image_size, out_side),
                name=names.get(lab, f"label_{lab}"),
                label=int(lab),
                group=group,
                neighbour_boxes=list((neighbours or {}).get(lab, [])),
            )
        )
    return out


def _neighbour_boxes(labels: np.ndarray, z: int, lab: int) -> list[np.ndarray]:
    boxes = []
    for n in (z - 1, z + 1):
        if 0 <= n < labels.shape[0]:
            b = box_of_mask(labels[n] == lab)
            if b is not None and int((labels[n] == lab).sum()) >= MIN_AREA:
                boxes.append(np.asarray(b, np.float32))
    return boxes


def samples_from_volume(
    embeddings_for: Callable[[Window], SliceEmbeddings],
    labels: np.ndarray,
    names: dict[int, str],
    windows: dict[int, Window],
    source: str,
    out_side: int,
    progress: Progress | None = None,
) -> list[TrainingSample]:
    """Training samples of every labelled object on every slice of one volume.

    embeddings_for: window -> the volume's SliceEmbeddings (axis 0) in that window.
    labels: (z, y, x) integer label map on the image's grid.
    windows: label id -> the window it is trained in.
    source: names the volume in the samples' groups (held-out slices are whole slices).
    """
    if labels.ndim != 3:
        raise InputError(f"{source}: labels of shape {labels.shape}; expected (z, y, x)")
    ids = [int(v) for v in np.unique(labels) if v != 0]
    by_window: dict[str, tuple[Window, list[int]]] = {}
    for lab in ids:
        w = windows[lab]
        by_window.setdefault(w.key(), (w, []))[1].append(lab)
    samples: list[TrainingSample] = []
    total = labels.shape[0] * len(by_window)
    done = 0
    for win, labs in by_window.values():
        emb = embeddings_for(win)
        for z in range(labels.shape[0]):
            sl = labels[z]
            masks = {lab: sl == lab for lab in labs}
            neigh = {lab: _neighbour_boxes(labels, z, lab) for lab in labs}
            samples += samples_for_slice(emb, z, masks, names, f"{source}#{z}", out_side, neigh)
            done += 1
            if progress:
                progress(done, total, f"embeddings {source} slice {z}")
    return samples


def split_samples(
    samples: list[TrainingSample], val_fraction: float, rng: np.random.Generator
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Hold out whole groups (slices) for validation; with a single group, hold out objects.

    Returns (train, validation); validation is empty when ``val_fraction`` is 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction {val_fraction}: expected 0 <= F < 1")
    if val_fraction == 0 or len(samples) < 2:
        return samples, []
    groups = sorted({s.group for s in samples})
    if len(groups) >= 3:
        n_val = max(1, int(round(val_fraction * len(groups))))
        val_groups = set(rng.permutation(groups)[:n_val].tolist())
        return ([s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups])
    order = rng.permutation(len(samples))
    n_val = max(1, int(round(val_fraction * len(samples))))
    val = set(order[:n_val].tolist())
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]


# ------------------------------------------------------------------ prompts


def _clip_box(b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    r0, c0, r1, c1 = (float(v) for v in b)
    r0, r1 = sorted((np.clip(r0, 0, h - 1), np.clip(r1, 0, h - 1)))
    c0, c1 = sorted((np.clip(c0, 0, w - 1), np.clip(c1, 0, w - 1)))
    return np.array([r0, c0, r1, c1], np.float32)


def jittered_box(
    mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.08, max_pixels: float = 20.0
) -> np.ndarray:
    """The mask's box with each side moved by N(0, jitter x side length), at most ``max_pixels``."""
    b = np.asarray(box_of_mask(mask), np.float32)
    size = np.array([b[2] - b[0] + 1, b[3] - b[1] + 1] * 2, np.float32)
    d = np.clip(rng.normal(0.0, jitter, 4) * size, -max_pixels, max_pixels)
    return _clip_box(b + d, mask.shape)


def propagation_box(
    sample: TrainingSample, rng: np.random.Generator, margin: float = 3.0, margin_fraction: float = 0.05
) -> np.ndarray:
    """A neighbour's box plus propagation's margin (falls back to the object's own box)."""
    b = (
        sample.neighbour_boxes[rng.integers(len(sample.neighbour_boxes))]
        if sample.neighbour_boxes
        else np.asarray(box_of_mask(sample.mask), np.float32)
    )
    m = max(margin, margin_fraction * max(b[2] - b[0] + 1, b[3] - b[1] + 1))
    return _clip_box(b + np.array([-m, -m, m, m], np.float32), sample.mask.shape)


def correction_box(gt: np.ndarray, pred: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box hypothesis of one corrective click on the largest error of ``pred``.

    A missed region (false negative) gets a positive click at its deepest
    point: the box of the prediction grown to take it in. A wrong region
    (false positive) gets a negative click: the prompt box is cut back to
    the click on the side nearest to it. Returns (r0, c0, r1, c1).
    """
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return box
    if fn.sum() >= fp.sum():
        r, c = deepest_point(fn)
        base = box_of_mask(pred) if pred.any() else (r, c, r, c)
        b = np.array([min(base[0], r), min(base[1], c), max(base[2], r), max(base[3], c)], np.float32)
        return _clip_box(b + np.array([-3, -3, 3, 3], np.float32), gt.shape)
    r, c = deepest_point(fp)
    b = box.astype(np.float32).copy()
    side = int(np.argmin([r - b[0], c - b[1], b[2] - r, b[3] - c]))
    b[side] = (r + 1, c + 1, r - 1, c - 1)[side]
    return _clip_box(b, gt.shape)
