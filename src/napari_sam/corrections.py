"""Corrections anywhere in the volume: one click at a voxel refines an object's 3D result.

A :class:`Correction` is a click at voxel ``(z, row, col)`` of the volume
(always volume coordinates, whatever axis the object is propagated along),
``label`` 1 ("this belongs to the object": add the missed region around it)
or 0 ("this does not": remove the wrongly included region around it).

:func:`correction_job` (a job of :mod:`napari_sam.jobs`; :func:`apply_correction`
drives it) brings the object's :class:`PropagationState` up to
date, then:

1. **On the click's slice**, refines the current mask there (the previous
   result is the context, not a restart from clicks alone):

   - positive: the model is prompted with a box around the current mask and
     the click (or, on a slice where the object is missing, the nearest
     non-empty slice's box moved onto the click); the part of its answer
     connected to the click is added to the current mask;
   - negative: the *carve* below removes the region of the mask that the
     click belongs to.

2. The refined mask becomes a key slice (``set_user_mask``), and only the
   *affected range* (up to the nearest other key slices) is re-propagated.

3. **Carve, so that a removal holds on the neighbouring slices**: the
   object's 3D mask is split by a watershed on its depth (Euclidean distance
   to the boundary, in mm) between seeds: every negative click of the object
   on one side; every positive click and the centre of every prompted key
   slice on the other. The basins of the negative clicks are removed on every
   slice (painted key slices excepted). A box-only model that answers "the
   whole lung" to any box around a lobe keeps re-adding the other lobe; the
   carve takes it away again, in 3D, after each re-propagation.

Errors: a click outside the volume, or on an object with no prompt to start
from, raises :class:`InputError` with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .geometry import box_of_mask
from .jobs import Cancel, Job, ProgressCallback, drive
from .propagation import PropagationState, Propagator

log = logging.getLogger(__name__)

__all__ = ["Correction", "plane_point", "check_correction", "apply_correction", "apply_corrections", "carve"]

#: radius (mm) of the region a positive click adds when the model's answer misses the click
MIN_ADD_RADIUS_MM = 3.0


@dataclass(frozen=True)
class Correction:
    """A click at volume voxel ``point`` = (z, row, col) (integers, array indices);
    ``label`` 1 adds the missed region around it, 0 removes the wrongly included one."""

    point: tuple[int, int, int]
    label: int

    def to_json(self) -> dict:
        return {"point": [int(v) for v in self.point], "label": int(self.label)}


def plane_point(point: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(slice index along ``axis``, row, col) of volume voxel ``point`` (z, y, x)."""
    p = [int(v) for v in point]
    idx = p.pop(axis)
    return idx, p[0], p[1]


def check_correction(c: Correction, state: PropagationState, where: str = "correction") -> None:
    """Raise InputError (one line) when ``c`` lies outside the volume or the object has no prompt."""
    if len(c.point) != 3:
        raise InputError(f"{where}: 'point' must be [z, row, col]")
    if c.label not in (0, 1):
        raise InputError(f"{where}: 'label' must be 1 (add) or 0 (remove)")
    if not all(0 <= int(v) < n for v, n in zip(c.point, state.shape)):
        raise InputError(f"{where}: point {list(c.point)} lies outside the volume of shape {list(state.shape)}")
    if not state.key_slices:
        raise InputError(f"{where}: the object has no prompt to start from; give a box or a click first")


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
def _added_region(
    state: PropagationState, propagator: Propagator, index: int, r: int, c: int, spacing_rc: tuple[float, float]
) -> np.ndarray:
    """The region a positive click at (r, c) of slice ``index`` adds: the part of
    the model's answer to a box around the current mask and the click that is
    connected to the click (a small disk when the answer misses it)."""
    cur = state.mask_slice(index)
    H, W = cur.shape
    if cur.any():
        r0, c0, r1, c1 = box_of_mask(cur)
        r0, c0, r1, c1 = min(r0, r), min(c0, c), max(r1, r), max(c1, c)
    else:
        ref = _nearest_nonempty(state, index)
        if ref is None:
            h = w = max(8, min(H, W) // 16)
        else:
            b = box_of_mask(ref)
            h, w = b[2] - b[0] + 1, b[3] - b[1] + 1
        r0, c0, r1, c1 = r - h // 2, c - w // 2, r + h // 2, c + w // 2
    m = 3
    box = np.array([[max(0, r0 - m), max(0, c0 - m), min(H - 1, r1 + m), min(W - 1, c1 + m)]], np.float32)
    answer = propagator.backend.decode(_full_embedding(propagator, index), boxes_rc=box).masks[0, 0]
    disk = _disk(cur.shape, r, c, (MIN_ADD_RADIUS_MM / spacing_rc[0], MIN_ADD_RADIUS_MM / spacing_rc[1]))
    if answer[r, c]:
        lab, _n = ndimage.label(answer & ~cur)
        part = lab == lab[r, c] if lab[r, c] else answer & ~cur
        return part | disk
    return disk


def _seeds(state: PropagationState, corrections: Sequence[Correction]) -> tuple[list, list]:
    """(positive, negative) seed voxels (z, y, x) for the carve."""
    neg = [tuple(int(v) for v in c.point) for c in corrections if c.label == 0]
    pos = [tuple(int(v) for v in c.point) for c in corrections if c.label == 1]
    for k, p in state.prompts.items():
        if p.only_negative:
            continue
        if p.box is not None:
            rc = ((p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2)
        else:
            rc = tuple(p.positive.mean(0))
        m = state.results.get(k)
        if m is not None and m.any():  # the mask pixel nearest to the box centre
            pts = np.argwhere(m)
            rc = pts[np.argmin(((pts - np.asarray(rc)) ** 2).sum(1))]
        v = [int(round(rc[0])), int(round(rc[1]))]
        v.insert(state.axis, int(k))
        pos.append(tuple(v))
    return pos, neg


def carve(
    mask: np.ndarray,
    positive: Sequence[Sequence[int]],
    negative: Sequence[Sequence[int]],
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The voxels of ``mask`` (z, y, x) bool that the ``negative`` seeds (z, y, x)
    claim against the ``positive`` ones. Each voxel goes to the seed set it is
    nearer to along paths inside the mask, a path costing 1 / depth per mm
    (depth: distance to the mask's boundary in mm, ``spacing_zyx``): crossing
    a thick part is cheap, a thin neck dear, so the split falls on the necks
    between them, and halfway through a blob without one. Voxels that no
    negative seed reaches are kept; with no positive seed, the negative seeds
    take their whole connected components. A negative seed outside the mask
    (its voxel already removed on its own slice) still claims the mask voxels
    touching it. Returns a bool volume of the voxels to remove."""
    from skimage.graph import MCP_Geometric

    out = np.zeros(mask.shape, bool)
    neg = [tuple(int(v) for v in p) for p in negative]
    if not neg or not mask.any():
        return out
    grown = mask.copy()
    for p in neg:
        grown[p] = True
    zz, yy, xx = np.nonzero(grown)
    lo = np.maximum([zz.min() - 1, yy.min() - 1, xx.min() - 1], 0)
    hi = np.minimum([zz.max() + 2, yy.max() + 2, xx.max() + 2], mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = grown[sl]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing_zyx)
    costs = np.where(sub, 1.0 / np.maximum(depth, min(spacing_zyx)), np.inf)

    def local(points):
        q = [tuple(int(v) - int(o) for v, o in zip(p, lo)) for p in points]
        return [p for p in q if all(0 <= a < n for a, n in zip(p, sub.shape)) and sub[p]]

    def reach(points) -> np.ndarray:
        starts = local(points)
        if not starts:
            return np.full(sub.shape, np.inf)
        cum, _ = MCP_Geometric(costs, sampling=tuple(float(s) for s in spacing_zyx)).find_costs(starts)
        return cum

    dn, dp = reach(neg), reach(positive)
    out[sl] = np.isfinite(dn) & (dn < dp)
    return out & mask


def _apply_carve(state: PropagationState, corrections: Sequence[Correction], spacing_zyx, painted: set[int]) -> None:
    pos, neg = _seeds(state, corrections)
    if not neg:
        return
    remove = carve(state.volume_mask(), pos, neg, spacing_zyx)
    for i in list(state.results):
        if i in painted:
            continue
        sl: list = [slice(None)] * 3
        sl[state.axis] = i
        cut = remove[tuple(sl)]
        if cut.any():
            state.results[i] = state.results[i] & ~cut
            if i in state.user_masks:
                state.user_masks[i] = state.results[i].copy()


def correction_job(
    state: PropagationState,
    propagator: Propagator,
    correction: Correction,
    earlier: Sequence[Correction] = (),
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    painted: set[int] | None = None,
) -> Job[tuple[int, int]]:
    """Apply one click to an object's propagated result, in place: a job
    (:mod:`napari_sam.jobs`) yielding the Progress events of the propagation
    runs it makes, returning the inclusive range of slices (along
    ``state.axis``) that were re-propagated.

    state: the object's propagation state (run or not: it is brought up to
    date first); propagator: the model and the slice embeddings along
    ``state.axis``; correction: the click, in volume coordinates (z, row,
    col); earlier: the object's earlier corrections (their negative clicks
    keep carving); spacing_zyx: voxel size in mm, (z, y, x); painted: slices
    the user painted by hand (never carved). Closed before its end, the state
    keeps what was finished (``state.needs_run`` tells what is left).
    """
    check_correction(correction, state)
    painted = set() if painted is None else painted
    everything = list(earlier) + [correction]
    yield from propagator.run(state)
    index, r, c = plane_point(correction.point, state.axis)
    sp = [float(s) for s in spacing_zyx]
    sp_rc = tuple(s for i, s in enumerate(sp) if i != state.axis)
    cur = state.mask_slice(index)
    if correction.label == 1:
        new = cur | _added_region(state, propagator, index, r, c, sp_rc)
    else:
        pos, neg = _seeds(state, everything)
        new = cur & ~carve(state.volume_mask(), pos, [correction.point], sp)[_plane(state.axis, index)]
        if cur[r, c] and new[r, c]:  # the click's own voxel always goes
            lab, _n = ndimage.label(cur)
            new = cur & (lab != lab[r, c])
    if not new.any() and correction.label == 0:
        affected = state.add_stop(index, np.array([[r, c]], np.float32))
    else:
        affected = state.set_user_mask(index, new)
    log.info(
        "correction %s (label %d): slices %d-%d re-propagated", tuple(correction.point), correction.label, *affected
    )
    yield from propagator.run(state)
    _apply_carve(state, everything, sp, painted)
    return affected


def apply_correction(
    state: PropagationState,
    propagator: Propagator,
    correction: Correction,
    earlier: Sequence[Correction] = (),
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    painted: set[int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
) -> tuple[int, int]:
    """:func:`correction_job` driven to its end (:func:`napari_sam.jobs.drive`):
    returns the inclusive range of slices re-propagated. A set ``cancel`` token
    raises :class:`napari_sam.jobs.Cancelled`."""
    job = correction_job(state, propagator, correction, earlier, spacing_zyx, painted)
    return drive(job, progress, cancel, what="correction")


def _plane(axis: int, index: int) -> tuple:
    sl: list = [slice(None)] * 3
    sl[axis] = index
    return tuple(sl)


def corrections_job(
    state: PropagationState,
    propagator: Propagator,
    corrections: Sequence[Correction],
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> Job[PropagationState]:
    """Apply ``corrections`` in order, each as if clicked after seeing the
    previous result (see :func:`correction_job`): a job returning ``state``."""
    for i, c in enumerate(corrections):
        yield from correction_job(state, propagator, c, earlier=corrections[:i], spacing_zyx=spacing_zyx)
    if not corrections:
        yield from propagator.run(state)
    return state


def apply_corrections(
    state: PropagationState,
    propagator: Propagator,
    corrections: Sequence[Correction],
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
) -> PropagationState:
    """:func:`corrections_job` driven to its end; returns ``state``."""
    return drive(corrections_job(state, propagator, corrections, spacing_zyx), progress, cancel, what="corrections")
