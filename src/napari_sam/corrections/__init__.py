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
   tapers away from the click (:func:`_taper`); past the object's former
   end a click on an empty slice extends it only while no slice adds more
   than the click's slice. So a click never undoes good
   slices elsewhere (the geodesic 3D carve of earlier versions split a thin
   rib anywhere between the click and the key slice, and took half of it).

4. **A removal holds on the neighbouring slices**: outwards from the click,
   while a neighbour's mask still overlaps the region removed on the slice
   before, it is split (2D geodesic) between the pixels under that removed
   region and those under what was kept there, and the removed side goes,
   as long as it continues the removed region (IoU at least
   ``StopRules.min_iou``). A box-only model that re-adds a fused neighbour
   from the box of the corrected mask loses it again. When the click kept
   more of its slice than it removed, a cut beyond the ball of the click's
   depth may not outgrow the region removed on its slice (a thin oblique rib
   sliding under the removed footprint is not cut away slice by slice).

Errors: a click outside the volume, or on an object with no prompt to start
from, raises :class:`InputError` with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..jobs import Cancel, Job, ProgressCallback, drive
from ..propagation import PropagationState, Propagator
from .adding import MIN_ADD_RADIUS_MM, _added_region
from .local import _changed_part
from .removing import _hold_removal, _removed_region, ball_slices, carve

log = logging.getLogger(__name__)

__all__ = [
    "Correction",
    "MIN_ADD_RADIUS_MM",
    "plane_point",
    "check_correction",
    "apply_correction",
    "apply_corrections",
    "carve",
    "correction_job",
    "corrections_job",
]


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
    # the slices within the click's depth in the region it added or removed (new ^ cur: removed lies in cur)
    ball = ball_slices(new ^ cur, r, c, sp_rc, sp[state.axis])
    _changed_part(state, before, index, correction.label, affected, propagator.rules.max_growth, ball)
    if correction.label == 0:
        _hold_removal(state, index, removed, sp_rc, affected, propagator.rules.min_iou, ball)
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
