"""A correction stays local and one-signed on the re-propagated slices (see
:mod:`napari_sam.corrections`): only the 3D-connected part of the change is
kept, and a positive click's addition tapers away from the click."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..propagation import PropagationState, StopRules


def _changed_part(
    state: PropagationState,
    before: dict[int, np.ndarray],
    index: int,
    label: int,
    affected: tuple[int, int],
    max_growth: float = StopRules.max_growth,
    ball: int = 0,
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
        _taper(keep, d, before, index - first, first, max_growth, ball)
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
    keep: np.ndarray,
    d: np.ndarray,
    before: dict[int, np.ndarray],
    at: int,
    first: int,
    max_growth: float,
    ball: int = 0,
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
    missing extends it, as far as the propagation's own stop rules take it,
    and, on the side away from the object's body (past its former end), only
    while no slice adds more than the click's slice: an object tapers to its
    end, and the click's answer is the most the click's evidence supports; an
    extension that grows away from it is the moved box taking in a neighbour
    (an adrenal walking down the whole volume). Within ``ball`` slices of the
    click it may grow: the click lies at the deepest point of the missed
    region, which holds the ball around it as deep as the click lies in the
    region added on its slice (:func:`napari_sam.corrections.removing.ball_slices`).
    And it reaches past the click no further than the click lies from the
    former end (``gap`` slices): the click marks the middle of the missed
    run of slices, as :func:`napari_sam.corrections.adding._near_click` reads
    it in the plane (a pancreas at the edge of the shared CT, clicked one
    slice past its end, otherwise ran 8 slices into its neighbours).
    """

    extends = not before.get(first + at, np.zeros(1, bool)).any()
    body, gap = _body_side(before, first + at)
    added = int((keep[at] & d[at]).sum())
    for step in (-1, 1):
        prev, j, ended = keep[at] & d[at], at + step, False
        while 0 <= j < len(keep):
            part = keep[j] & d[j]
            held = before.get(first + j)
            if part.any() and (held is None or not held.any()):
                far = abs(j - at)
                past_end = step != body and body != 0 and (far > gap or (far > ball and part.sum() > added))
                ended = ended or not extends or past_end
            elif part.any():
                grown = ndimage.binary_dilation(prev, np.ones((3, 3), bool))
                ended = ended or part.sum() > max_growth * prev.sum() or not (part & grown).any()
            if ended:
                keep[j] = False
            else:
                prev = part if part.any() else prev
            j += step


def _body_side(before: dict[int, np.ndarray], index: int) -> tuple[int, int]:
    """(-1 or 1, n): the side of slice ``index`` where the nearest slice that held
    the object before the click lies, and how many slices away it is ((0, 0)
    when it held it nowhere)."""
    held = [i for i, m in before.items() if m.any() and i != index]
    if not held:
        return 0, 0
    near = min(held, key=lambda i: (abs(i - index), i))
    return (1 if near > index else -1), abs(near - index)
