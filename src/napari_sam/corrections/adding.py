"""What a positive click adds on its own slice (see :mod:`napari_sam.corrections`).

The model answers the click (the interactive 2D loop refining the current
mask, else the current mask's box grown to take in the click); the part of
the first plausible answer near the click is added, with a small disk.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..clicks import ClickStrategy
from ..geometry import box_of_mask
from ..prompts import SlicePrompt
from ..propagation import PropagationState, Propagator
from .removing import _distance

#: radius (mm) of the region a positive click adds when the model's answer misses the click
MIN_ADD_RADIUS_MM = 3.0


def _full_embedding(propagator: Propagator, index: int):
    return propagator.embeddings.get(index)


def _nearest_nonempty(state: PropagationState, index: int) -> np.ndarray | None:
    filled = [i for i, m in state.results.items() if m.any()]
    if not filled:
        return None
    return state.results[min(filled, key=lambda i: (abs(i - index), i))]


def _disk(shape: tuple[int, int], r: int, c: int, radius_px: tuple[float, float]) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return ((rr - r) / max(radius_px[0], 0.5)) ** 2 + ((cc - c) / max(radius_px[1], 0.5)) ** 2 <= 1.0


@torch.inference_mode()
def _answers(propagator: Propagator, index: int, cur: np.ndarray, ref: np.ndarray | None, r: int, c: int) -> list:
    """The model's answers on slice ``index`` to a positive click at (r, c), in
    order of preference: the interactive 2D loop of :mod:`napari_sam.clicks`
    refining ``cur`` (or, on a slice where the object is missing, the nearest
    non-empty slice's mask ``ref`` moved onto the click), then the box of
    ``cur`` grown to take in the click (or ``ref``'s box moved onto it)."""
    emb = _full_embedding(propagator, index)
    H, W = cur.shape
    prev = cur
    if not cur.any() and ref is not None:
        pts = np.argwhere(ref)
        shift = np.array([r, c]) - np.round(pts.mean(0)).astype(int)
        pts = pts + shift
        pts = pts[(pts >= 0).all(1) & (pts < [H, W]).all(1)]
        prev = np.zeros_like(cur)
        prev[pts[:, 0], pts[:, 1]] = True
    prompt = SlicePrompt(points=np.array([[r, c]], np.float32), labels=np.array([1], np.int64), slice=index)
    clicked = ClickStrategy(propagator.backend).predict(
        emb, prompt, previous=prev if prev.any() else None, multimask=False
    )
    out = [clicked.masks[0]]
    if prev.any():
        r0, c0, r1, c1 = box_of_mask(prev)
        r0, c0, r1, c1 = min(r0, r), min(c0, c), max(r1, r), max(c1, c)
        box = np.array([[max(0, r0 - 3), max(0, c0 - 3), min(H - 1, r1 + 3), min(W - 1, c1 + 3)]], np.float32)
        out.append(propagator.backend.decode(emb, boxes_rc=box).masks[0, 0])
    return out


def _reference_area(state: PropagationState, index: int) -> int:
    """The object's largest area on slice ``index`` and its two neighbours (else
    on the nearest non-empty slice): what one slice of it may plausibly hold."""
    near = [state.results[i].sum() for i in (index - 1, index, index + 1) if i in state.results]
    if any(near):
        return int(max(near))
    ref = _nearest_nonempty(state, index)
    return 0 if ref is None else int(ref.sum())


def _added_region(
    state: PropagationState, propagator: Propagator, index: int, r: int, c: int, spacing_rc: tuple[float, float]
) -> np.ndarray:
    """The region a positive click at (r, c) of slice ``index`` adds: the part of
    the model's answer (:func:`_answers`, the first that is plausible) that is
    connected to the click; plus a small disk around the click. An answer is
    plausible when it holds the click and leaves the slice's mask no larger
    than the propagation's growth limit (``rules.max_growth``) times the
    object's area on the slice and its neighbours: a click adds the missed
    region around it, not a neighbouring organ."""
    cur = state.mask_slice(index)
    disk = _disk(cur.shape, r, c, (MIN_ADD_RADIUS_MM / spacing_rc[0], MIN_ADD_RADIUS_MM / spacing_rc[1]))
    limit = propagator.rules.max_growth * max(_reference_area(state, index), int(disk.sum()))
    near = _near_click(cur, r, c, spacing_rc)
    for answer in _answers(propagator, index, cur, _nearest_nonempty(state, index), r, c):
        if not answer[r, c]:
            continue
        lab, _n = ndimage.label(answer, np.ones((3, 3), bool))
        part = ((lab == lab[r, c]) & ~cur & near) | disk
        if (cur | part).sum() <= limit:
            return part
    return disk


def _near_click(cur: np.ndarray, r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    """Where a positive click at (r, c) may add on a slice that holds the
    object (``cur``): within twice the click's distance to the mask (at least
    ``MIN_ADD_RADIUS_MM``). The click marks the middle of a missed region
    next to the mask (a user clicks there, the protocol at its deepest
    voxel), so that region reaches about as far beyond the click as the mask
    lies from it; an answer reaching further is the box taking in a
    neighbour. On a slice without the object: anywhere."""
    if not cur.any():
        return np.ones_like(cur)
    gap = float(ndimage.distance_transform_edt(~cur, sampling=sp_rc)[r, c])
    return _distance(cur.shape, r, c, sp_rc) <= max(MIN_ADD_RADIUS_MM, 2.0 * gap)
