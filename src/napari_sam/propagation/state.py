"""The state of one object's propagation: a plain, typed object the GUI holds and tests inspect.

:class:`PropagationState` holds the user's key slices and corrections, the
per-slice results (:class:`SliceInfo` says why each is what it is), the stop
decisions (:class:`StopDecision`, :class:`StopReason`) and what the next run
must recompute. A run (:mod:`napari_sam.propagation.tracker`) reports each
finished slice as a :class:`SliceUpdate`, the payload of its
:class:`napari_sam.jobs.Progress` events.

Slices, axes and coordinates. ``shape`` is the volume's (z, y, x) shape and
``axis`` the axis propagated along; "slice i" is the 2D plane at index i
along that axis, whose (row, col) are the two remaining axes in order. Key
slice masks and results are (rows, cols) bool arrays of that plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from ..errors import InputError
from ..prompts import SlicePrompt

__all__ = ["PropagationState", "SliceInfo", "SliceUpdate", "StopDecision", "StopReason"]


class StopReason(str, Enum):
    """Why propagation in one direction ended."""

    EDGE = "edge"  #: reached the first/last slice of the volume
    RANGE = "range"  #: reached the end of the user's range
    USER_STOP = "user_stop"  #: next slice is a stop slice (only negative clicks)
    KEY_SLICE = "key_slice"  #: reached another key slice (the gap is reconciled)
    EMPTY = "empty"  #: the mask vanished
    LOW_SCORE = "low_score"  #: the model's predicted IoU fell under the threshold
    DISCONTINUITY = "discontinuity"  #: too little overlap with the neighbouring slice
    GROWTH = "growth"  #: the area grew suddenly (leak into a neighbour)
    INTENSITY = "intensity"  #: intensities unlike the object on the key slices
    APPEARANCE = "appearance"  #: image features unlike the object on the key slices


@dataclass(frozen=True)
class StopDecision:
    """Where and why one propagation pass ended.

    origin: the key slice the pass started from; direction: +1 towards higher
    slice indices, -1 towards lower; last: the last slice the pass kept (the
    origin when it kept none); rejected: the slice that was tried and refused
    (None when the pass ran into an edge, range end, key or stop slice);
    reason and a human-readable detail ("predicted IoU 0.41 < 0.50").
    """

    origin: int
    direction: int
    last: int
    rejected: int | None
    reason: StopReason
    detail: str = ""


@dataclass(frozen=True)
class SliceInfo:
    """Why a slice holds its result.

    source: "key" (the user's prompt), "user_mask" (painted by the user),
    "stop" (a stop slice), "propagated" (one pass), "bridged" (a slice the
    stop rules refused but the next one continued the object: re-prompted
    from both neighbours), "reconciled" (two passes between key slices);
    origin: the key slice it was propagated from (the nearer one when
    reconciled); score: the model's predicted IoU; iou_prev: IoU with the
    neighbour it was prompted from; area_ratio: area / neighbour's area;
    intensity_shift: distance of the mask's median intensity from the key
    slices' object in units of its spread (0 when unknown).
    """

    source: str
    origin: int
    score: float = float("nan")
    iou_prev: float = float("nan")
    area_ratio: float = float("nan")
    intensity_shift: float = 0.0


@dataclass(frozen=True)
class SliceUpdate:
    """One finished slice of a run: the ``payload`` of each
    :class:`napari_sam.jobs.Progress` event :meth:`Propagator.run` yields.

    index: the slice just finished (along the state's axis); mask: its
    (rows, cols) bool result (a view into the state: do not modify). A slice
    may be reported twice in one run: a gap between key slices shows the
    first pass's answer, then the reconciled one.
    """

    index: int
    mask: np.ndarray


def _check_mask(mask: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"{where}: mask of shape {mask.shape}, expected {shape}")
    return mask.astype(bool, copy=True)


@dataclass
class PropagationState:
    """Everything about one object's propagation along one axis (a plain object).

    shape: (z, y, x) of the volume; axis: 0, 1 or 2, the axis propagated along.
    prompts: slice -> the user's :class:`SlicePrompt` on that slice (key
        slices and corrections; a prompt with only negative clicks is a stop
        slice).
    user_masks: slice -> (rows, cols) bool mask painted by the user (also a
        key slice; wins over a prompt on the same slice).
    results: slice -> (rows, cols) bool mask, for every slice computed so far
        (key slices included). Slices absent hold no object.
    info: slice -> :class:`SliceInfo`, why each result is what it is.
    stops: the :class:`StopDecision` of every pass of the latest runs, sorted
        by (origin, direction).
    range: optional inclusive (first, last) slice limits of the object.
    dirty: slices to (re)compute on the next run; dirty_keys: key slices
        whose prompt must be (re)decoded.
    roi: the zoomed region (r0, c0, r1, c1) inclusive the model looks at
        (chosen by the :class:`Propagator` for small objects, kept across
        corrections that stay inside it), None for the whole slice.

    Use the methods to change prompts: they keep ``dirty`` right.
    """

    shape: tuple[int, int, int]
    axis: int = 0
    prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    user_masks: dict[int, np.ndarray] = field(default_factory=dict)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[int, SliceInfo] = field(default_factory=dict)
    stops: list[StopDecision] = field(default_factory=list)
    range: tuple[int, int] | None = None
    dirty: set[int] = field(default_factory=set)
    dirty_keys: set[int] = field(default_factory=set)
    roi: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3:
            raise InputError(f"volume shape {self.shape}: expected (z, y, x)")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis {self.axis}: must be 0, 1 or 2")
        if self.range is not None:
            self.set_range(self.range)

    # ------------------------------------------------------------ geometry
    @property
    def n_slices(self) -> int:
        """Number of slices along ``axis``."""
        return self.shape[self.axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows, cols) of one slice."""
        return tuple(s for i, s in enumerate(self.shape) if i != self.axis)  # type: ignore[return-value]

    @property
    def bounds(self) -> tuple[int, int]:
        """Inclusive (first, last) slices the object may occupy: the range or the whole axis."""
        return self.range if self.range is not None else (0, self.n_slices - 1)

    # ------------------------------------------------------------ key slices
    @property
    def key_slices(self) -> list[int]:
        """Sorted slices given by the user (prompts, painted masks, stop slices)."""
        return sorted(set(self.prompts) | set(self.user_masks))

    @property
    def stop_slices(self) -> list[int]:
        """Sorted key slices that say "the object is not here" (only negative clicks)."""
        return sorted(z for z, p in self.prompts.items() if p.only_negative and z not in self.user_masks)

    def is_stop_slice(self, index: int) -> bool:
        p = self.prompts.get(index)
        return p is not None and p.only_negative and index not in self.user_masks

    def affected_range(self, index: int) -> tuple[int, int]:
        """Inclusive (first, last) slices that a change of the prompt on ``index``
        affects: up to the nearest other key slices (exclusive) on either side,
        within the range."""
        lo, hi = self.bounds
        keys = [k for k in self.key_slices if k != index]
        below = [k for k in keys if k < index]
        above = [k for k in keys if k > index]
        first = max(lo, below[-1] + 1) if below else lo
        last = min(hi, above[0] - 1) if above else hi
        return min(first, index), max(last, index)

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_slices:
            raise InputError(f"slice {index} outside 0..{self.n_slices - 1} along axis {self.axis}")
        return int(index)

    def _mark(self, first: int, last: int) -> None:
        self.dirty.update(range(first, last + 1))

    def add_prompt(self, index: int, prompt: SlicePrompt) -> tuple[int, int]:
        """Add or replace the user's prompt on slice ``index`` (a key slice or a
        correction). Returns the inclusive range of slices marked for recomputation."""
        index = self._check_index(index)
        prompt.check_inside(self.slice_shape)
        if prompt.slice != index:
            prompt = SlicePrompt(points=prompt.points, labels=prompt.labels, box=prompt.box, slice=index)
        affected = self.affected_range(index)
        self.prompts[index] = prompt
        self.dirty_keys.add(index)
        self._mark(*affected)
        return affected

    def set_user_mask(self, index: int, mask: np.ndarray) -> tuple[int, int]:
        """Make the user's own (rows, cols) bool mask the key result of slice
        ``index`` (e.g. painted in napari). Returns the range marked."""
        index = self._check_index(index)
        mask = _check_mask(mask, self.slice_shape, f"slice {index}")
        affected = self.affected_range(index)
        self.user_masks[index] = mask
        self.dirty_keys.add(index)
        self._mark(*affected)
        return affected

    def add_stop(self, index: int, points: np.ndarray | None = None) -> tuple[int, int]:
        """Mark slice ``index`` as a stop slice (the object is absent there).
        points: optional (N, 2) (row, col) negative clicks; the slice centre otherwise."""
        if points is None:
            points = np.array([[(self.slice_shape[0] - 1) / 2, (self.slice_shape[1] - 1) / 2]], np.float32)
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        self.user_masks.pop(index, None)
        stop = SlicePrompt(points=pts, labels=np.zeros(len(pts), np.int64), slice=index)
        return self.add_prompt(index, stop)

    def remove_prompt(self, index: int) -> tuple[int, int] | None:
        """Remove the user's prompt and painted mask on slice ``index``; the
        slice becomes an ordinary propagated one. Returns the range marked, or
        None when the slice held no key."""
        index = self._check_index(index)
        if index not in self.prompts and index not in self.user_masks:
            return None
        self.prompts.pop(index, None)
        self.user_masks.pop(index, None)
        self.dirty_keys.discard(index)
        affected = self.affected_range(index)
        self._mark(*affected)
        return affected

    def set_range(self, rng: tuple[int, int] | None) -> None:
        """Limit the object to the inclusive slices (first, last), or None for
        the whole axis. Marks everything for recomputation."""
        if rng is not None:
            a, b = (int(v) for v in rng)
            a, b = min(a, b), max(a, b)
            if not (0 <= a and b < self.n_slices):
                raise InputError(f"range [{a}, {b}] outside 0..{self.n_slices - 1} along axis {self.axis}")
            rng = (a, b)
        self.range = rng
        self._mark(0, self.n_slices - 1)
        self.dirty_keys.update(self.key_slices)

    def mark_all(self) -> None:
        """Recompute everything on the next run (e.g. after changing the stop rules)."""
        self._mark(0, self.n_slices - 1)
        self.dirty_keys.update(self.key_slices)

    @property
    def needs_run(self) -> bool:
        """Whether a run has work to do."""
        return bool(self.dirty or self.dirty_keys)

    # ------------------------------------------------------------ results
    def mask_slice(self, index: int) -> np.ndarray:
        """The (rows, cols) bool result of slice ``index`` (zeros when none)."""
        m = self.results.get(index)
        return m.copy() if m is not None else np.zeros(self.slice_shape, bool)

    def volume_mask(self) -> np.ndarray:
        """The object as a (z, y, x) bool volume."""
        out = np.zeros(self.shape, bool)
        for i, m in self.results.items():
            sl: list[slice | int] = [slice(None)] * 3
            sl[self.axis] = i
            out[tuple(sl)] = m
        return out

    @property
    def extent(self) -> tuple[int, int] | None:
        """Inclusive (first, last) slices holding a non-empty result, None when empty."""
        idx = [i for i, m in self.results.items() if m.any()]
        return (min(idx), max(idx)) if idx else None

    def summary(self) -> dict:
        """Plain data (JSON-ready) about the object's propagation: axis, key
        slices, extent and every stop decision (a label map's sidecar)."""
        return {
            "axis": self.axis,
            "key_slices": self.key_slices,
            "extent": list(self.extent) if self.extent else None,
            "stops": [
                {
                    "from": s.origin,
                    "direction": s.direction,
                    "last": s.last,
                    "refused": s.rejected,
                    "reason": s.reason.value,
                    "detail": s.detail,
                }
                for s in self.stops
            ],
        }

    def stops_at(self, index: int) -> list[StopDecision]:
        """Stop decisions whose pass ended at (last kept) or was refused on slice ``index``."""
        return [s for s in self.stops if s.last == index or s.rejected == index]
