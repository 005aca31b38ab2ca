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

   - positive: the model answers the click through the interactive 2D loop
     of :mod:`napari_sam.clicks` refining the current mask (on a slice where
     the object is missing, the nearest non-empty slice's mask moved onto
     the click), else the box of the current mask grown to take in the
     click; the part of the first answer that holds the click and keeps the
     slice within the propagation's growth limit (``StopRules.max_growth``
     times the object's area there) is added, near the click
     (:func:`_near_click`), with a 3 mm disk;
   - negative: the region the click belongs to is split off
     (:func:`_split_off`): a separate smaller blob, or a lump or leak hanging
     on the mask by a neck (2D geodesic split towards the mask's thickest
     part), else only the click's inscribed disk. A click never empties a
     slice that holds more than that.

2. The refined mask becomes a key slice (``set_user_mask``), and only the
   *affected range* (up to the nearest other key slices) is re-propagated.

3. **Local and one-signed**: on the re-propagated slices a positive click
   only adds and a negative one only removes, and only the part of the
   change that is 3D-connected to the change on the click's slice; every
   other voxel keeps its earlier value, and a positive click's addition
   tapers away from the click (:func:`_taper`). So a click never undoes good
   slices elsewhere (the geodesic 3D carve of earlier versions split a thin
   rib anywhere between the click and the key slice, and took half of it).

4. **A removal holds on the neighbouring slices**: outwards from the click,
   while a neighbour's mask still overlaps the region removed on the slice
   before, it is split (2D geodesic) between the pixels under that removed
   region and those under what was kept there, and the removed side goes,
   as long as it continues the removed region (IoU at least
   ``StopRules.min_iou``). A box-only model that re-adds a fused neighbour
   from the box of the corrected mask loses it again.

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

from .clicks import ClickStrategy
from .errors import InputError
from .geometry import box_of_mask, mask_iou
from .jobs import Cancel, Job, ProgressCallback, drive
from .prompts import SlicePrompt
from .propagation import PropagationState, Propagator, StopRules

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


def _split_off(cur: np.ndarray, r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    """The region of the (rows, cols) mask ``cur`` that a negative click at
    (r, c) removes:

    - the click's connected component when the slice holds a larger one (a
      separate wrong blob);
    - else the part of the component on the click's side of the split towards
      the mask's thickest part (the 2D :func:`carve` between the click and
      the pixel deepest inside the mask, when that lies outside the click's
      own inscribed disk), when that part is under half of the component and
      hangs on the rest by a neck (:func:`_is_neck`): a lump or a leak into
      a neighbour;
    - else the click's inscribed disk (the largest disk around the click
      inside the mask): the click lies in the body of the mask, which has no
      part to split off there, and only the wrong region around the click
      goes. A click never empties a slice that holds more than its disk.
    """
    lab, n = ndimage.label(cur, np.ones((3, 3), bool))
    comp = lab == lab[r, c]
    if n > 1 and comp.sum() < np.bincount(lab.ravel())[1:].max():
        return comp
    depth = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=sp_rc)[1:-1, 1:-1]
    dist = _distance(cur.shape, r, c, sp_rc)
    core = np.unravel_index(int(np.argmax(depth)), depth.shape)
    if dist[core] > depth[r, c] + depth[core]:  # the thickest part lies outside the click's inscribed disk
        cut = carve(comp[None], [(0, *core)], [(0, r, c)], (1.0, *sp_rc))[0]
        cut[r, c] = True
        if 2 * cut.sum() < comp.sum() and _is_neck(comp, cut):
            return cut
    return comp & (dist <= depth[r, c])


def _is_neck(comp: np.ndarray, cut: np.ndarray) -> bool:
    """Whether ``cut`` hangs on the rest of ``comp`` by a neck: the line they
    share is shorter than the side of a square of ``cut``'s area (a lump or a
    leak, not a slice through the body of a blob without one, whose cut line
    is about twice that)."""
    rest = comp & ~cut
    line = cut & ndimage.binary_dilation(rest, np.ones((3, 3), bool))
    return float(line.sum()) < float(np.sqrt(cut.sum()))


def _distance(shape: tuple[int, int], r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return np.hypot((rr - r) * sp_rc[0], (cc - c) * sp_rc[1])


def _removed_region(state: PropagationState, index: int, r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    """The region of slice ``index``'s mask that a negative click at (r, c)
    removes (:func:`_split_off`; nothing when the click is outside the mask)."""
    cur = state.mask_slice(index)
    if not cur[r, c]:
        return np.zeros_like(cur)
    return _split_off(cur, r, c, sp_rc)


def _hold_removal(
    state: PropagationState,
    index: int,
    removed: np.ndarray,
    sp_rc: tuple[float, float],
    affected: tuple[int, int],
    min_iou: float,
) -> None:
    """Make a removal hold on the neighbouring slices: outwards from slice
    ``index``, while the mask of the next (propagated) slice still overlaps
    the region removed on the slice before, that slice's mask is split (the
    2D :func:`carve`) between the pixels lying under the region removed on
    the slice before and those lying under what was kept there; the removed
    side goes too, as long as it continues the region removed on the slice
    before (IoU at least ``min_iou``: the propagation's own continuity
    threshold, ``StopRules.min_iou``)."""
    keys = set(state.key_slices)
    for d in (-1, 1):
        prev, j = removed, index + d
        while affected[0] <= j <= affected[1] and j not in keys and prev.any():
            cur, kept = state.mask_slice(j), state.mask_slice(j - d)
            neg, pos = cur & prev, cur & kept & ~prev
            if not neg.any() or not pos.any():
                break
            cut = carve(cur[None], _points(pos), _points(neg), (1.0, *sp_rc))[0]
            if not cut.any() or mask_iou(cut, prev) < min_iou:
                break
            state.results[j] = cur & ~cut
            prev, j = cut, j + d


def _points(m: np.ndarray) -> list[tuple[int, int, int]]:
    return [(0, int(a), int(b)) for a, b in np.argwhere(m)]


def _changed_part(
    state: PropagationState,
    before: dict[int, np.ndarray],
    index: int,
    label: int,
    affected: tuple[int, int],
    max_growth: float = StopRules.max_growth,
) -> None:
    """Keep a correction local and one-signed: on the re-propagated slices a
    positive click only adds, a negative one only removes, and only the part
    of the change that is connected in 3D (26-connected, through the
    re-propagated slices) to the change on the click's slice; every other
    voxel keeps its value from ``before``. A negative click removes nothing
    from a slice that the re-propagation did not reach (a pass stopped
    before it): the model gave no answer there."""
    first, last = affected
    empty = np.zeros(state.slice_shape, bool)
    diff = []
    for i in range(first, last + 1):
        old, new = before.get(i, empty), state.results.get(i, empty)
        # a slice the re-propagation no longer reached (a pass stopped before it) is not a re-answer
        diff.append(new & ~old if label == 1 else (old & ~new if new.any() else empty))
    d = np.stack(diff)
    lab, _n = ndimage.label(d, np.ones((3, 3, 3), bool))
    keep = np.isin(lab, np.unique(lab[index - first][d[index - first]]))
    if label == 1:
        _taper(keep, d, before, index - first, first, max_growth)
    for i in range(first, last + 1):
        if i == index:
            continue
        old = before.get(i, empty)
        part = d[i - first] & keep[i - first]
        res = old | part if label == 1 else old & ~part
        if res.any():
            state.results[i] = res
        else:
            state.results.pop(i, None)
            state.info.pop(i, None)


def _taper(
    keep: np.ndarray, d: np.ndarray, before: dict[int, np.ndarray], at: int, first: int, max_growth: float
) -> None:
    """Keep a positive click's addition local through the slices: outwards from
    the click's slice (``at`` in the stack ``keep``/``d`` of the re-propagated
    range, which starts at slice ``first``), on a slice that already held the
    object the addition is taken only while it overlaps the addition on the
    slice before and grows no more than the propagation's own growth limit
    allows a slice (``max_growth`` times the addition there); the first one
    that breaks this ends the addition on that side. The click marks the
    missed part where it is deepest (a user clicks in the middle of what was
    missed, the protocol at its deepest voxel); an addition that keeps
    growing away from it is the re-propagated box taking in a neighbour. Slices where the object was missing: a click on a slice
    that held the object (a missed part of it) does not extend it there (that
    is a click on the slices past its end); a click on a slice where it was
    missing extends it, as far as the propagation's own stop rules take it."""
    extends = not before.get(first + at, np.zeros(1, bool)).any()
    for step in (-1, 1):
        prev, j, ended = keep[at] & d[at], at + step, False
        while 0 <= j < len(keep):
            part = keep[j] & d[j]
            held = before.get(first + j)
            if part.any() and (held is None or not held.any()):
                ended = ended or not extends
            elif part.any():
                grown = ndimage.binary_dilation(prev, np.ones((3, 3), bool))
                ended = ended or part.sum() > max_growth * prev.sum() or not (part & grown).any()
            if ended:
                keep[j] = False
            else:
                prev = part if part.any() else prev
            j += step


def correction_job(
    state: PropagationState,
    propagator: Propagator,
    correction: Correction,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> Job[tuple[int, int]]:
    """Apply one click to an object's propagated result, in place: a job
    (:mod:`napari_sam.jobs`) yielding the Progress events of the propagation
    runs it makes, returning the inclusive range of slices (along
    ``state.axis``) that were re-propagated.

    state: the object's propagation state (run or not: it is brought up to
    date first); propagator: the model and the slice embeddings along
    ``state.axis``; correction: the click, in volume coordinates (z, row,
    col), acting on the result the earlier ones left; spacing_zyx: voxel
    size in mm, (z, y, x). Key slices (prompted, painted, corrected) are never
    changed. Closed before its end, the state keeps what was finished
    (``state.needs_run`` tells what is left).
    """
    check_correction(correction, state)
    yield from propagator.run(state)
    before = {i: m.copy() for i, m in state.results.items()}
    index, r, c = plane_point(correction.point, state.axis)
    sp = [float(s) for s in spacing_zyx]
    sp_rc = tuple(s for i, s in enumerate(sp) if i != state.axis)
    cur = state.mask_slice(index)
    if correction.label == 1:
        new = cur | _added_region(state, propagator, index, r, c, sp_rc)
    else:
        removed = _removed_region(state, index, r, c, sp_rc)
        new = cur & ~removed
    if not new.any() and correction.label == 0:
        affected = state.add_stop(index, np.array([[r, c]], np.float32))
    else:
        affected = state.set_user_mask(index, new)
    log.info(
        "correction %s (label %d): slices %d-%d re-propagated", tuple(correction.point), correction.label, *affected
    )
    yield from propagator.run(state)
    _changed_part(state, before, index, correction.label, affected, propagator.rules.max_growth)
    if correction.label == 0:
        _hold_removal(state, index, removed, sp_rc, affected, propagator.rules.min_iou)
    return affected


def apply_correction(
    state: PropagationState,
    propagator: Propagator,
    correction: Correction,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
) -> tuple[int, int]:
    """:func:`correction_job` driven to its end (:func:`napari_sam.jobs.drive`):
    returns the inclusive range of slices re-propagated. A set ``cancel`` token
    raises :class:`napari_sam.jobs.Cancelled`."""
    job = correction_job(state, propagator, correction, spacing_zyx)
    return drive(job, progress, cancel, what="correction")


def corrections_job(
    state: PropagationState,
    propagator: Propagator,
    corrections: Sequence[Correction],
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> Job[PropagationState]:
    """Apply ``corrections`` in order, each as if clicked after seeing the
    previous result (see :func:`correction_job`): a job returning ``state``."""
    for c in corrections:
        yield from correction_job(state, propagator, c, spacing_zyx)
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
