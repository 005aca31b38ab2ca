"""The pieces of a run: the segments between key slices, a run's tally of
steps, and how the two passes across a gap are reconciled.

A run (:class:`~napari_sam.propagation.Propagator`) splits the axis at the key
slices into segments (:func:`plan_segments`): outwards from the outermost key
slices one pass runs; between two key slices both ends propagate across the
gap and each slice takes the distance-weighted mean of the two passes'
probabilities (:func:`reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..geometry import Crop
from ..jobs import Progress
from .rules import StepAnswer
from .state import PropagationState, SliceInfo, SliceUpdate

__all__ = ["Segment", "Tally", "drop", "info_of", "paste", "plan_segments", "reconcile", "store"]


class Segment(NamedTuple):
    """Slices first..last (inclusive) between key slices ``below`` and ``above``
    (None: no positive key slice on that side); work: planned steps."""

    first: int
    last: int
    kind: str  # "gap" | "out_up" | "out_down" | "none"
    work: int
    below: int | None
    above: int | None


@dataclass
class Tally:
    """Steps done and the current estimate of a run's total (an upper bound
    that shrinks when a pass stops early)."""

    done: int
    total: int

    def event(self, state: PropagationState, index: int, message: str) -> Progress:
        self.done += 1
        self.total = max(self.total, self.done)
        mask = state.results.get(index, np.zeros(state.slice_shape, bool))
        return Progress(self.done, self.total, message, SliceUpdate(index, mask))


def paste(frame: Crop, a: np.ndarray, full: tuple[int, int], fill: float | bool = False) -> np.ndarray:
    """A frame-grid array on the whole (rows, cols) slice (itself when the frame is the slice)."""
    return a if frame.is_whole(full) else frame.paste(a, full, fill)


def store(state: PropagationState, i: int, mask: np.ndarray, info: SliceInfo) -> None:
    state.results[i] = mask
    state.info[i] = info


def drop(state: PropagationState, i: int) -> None:
    state.results.pop(i, None)
    state.info.pop(i, None)


def info_of(step: StepAnswer, origin: int) -> SliceInfo:
    return SliceInfo(
        "bridged" if step.bridged else "propagated",
        origin,
        step.score,
        step.iou_prev,
        step.area_ratio,
        step.intensity_shift,
    )


def plan_segments(state: PropagationState, lo: int, hi: int) -> list[Segment]:
    """The segments between key slices (within [lo, hi]) that hold slices to recompute."""
    keys = [k for k in state.key_slices if lo <= k <= hi]
    positive = {k for k in keys if not state.is_stop_slice(k)}
    bounds = [lo - 1] + keys + [hi + 1]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        first, last = a + 1, b - 1
        if first > last or not any(first <= i <= last for i in state.dirty):
            continue
        n = last - first + 1
        below = a if a in positive else None
        above = b if b in positive else None
        if below is not None and above is not None:
            out.append(Segment(first, last, "gap", 2 * n, below, above))  # both passes, at most
        elif below is not None:
            out.append(Segment(first, last, "out_up", n, below, None))
        elif above is not None:
            out.append(Segment(first, last, "out_down", n, None, above))
        else:
            out.append(Segment(first, last, "none", 0, None, None))
    return out


def reconcile(state: PropagationState, i: int, a: int, b: int, su: StepAnswer | None, sd: StepAnswer | None) -> None:
    """Slice i between key slices a < b from the pass up (su) and the pass down (sd):
    the distance-weighted mean probability when both reached it, else the one that did."""
    if su is None and sd is None:
        drop(state, i)
    elif su is not None and sd is not None:
        wa = (b - i) / (b - a)
        prob = wa / (1 + np.exp(-su.logits)) + (1 - wa) / (1 + np.exp(-sd.logits))
        near, o = (su, a) if wa >= 0.5 else (sd, b)
        store(
            state,
            i,
            prob > 0.5,
            SliceInfo("reconciled", o, near.score, near.iou_prev, near.area_ratio, near.intensity_shift),
        )
    else:
        s, o = (su, a) if su is not None else (sd, b)
        store(state, i, s.mask, info_of(s, o))
    state.dirty.discard(i)
