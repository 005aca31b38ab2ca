"""3D propagation: from prompted key slices to a volume mask, steerable by corrections.

The state of one object's propagation lives in one plain, typed object,
:class:`PropagationState` (the user's key slices and corrections, the
per-slice results, the stop decisions and what still has to be computed).
A :class:`Propagator` (a backend plus a provider of slice embeddings) brings
a state up to date; :meth:`Propagator.run` is a generator that yields one
:class:`SliceUpdate` per finished slice, so that a GUI worker can show
progress and abort between slices, and :meth:`Propagator.propagate` is the
same loop with a ``progress`` callback and a ``cancel`` flag for scripts and
the CLI::

    state = PropagationState(shape=volume.shape, axis=0)
    state.add_prompt(12, SlicePrompt(box=(r0, c0, r1, c1), slice=12))
    prop = Propagator(backend, SliceEmbeddings(backend, volume, window))
    for update in prop.run(state):           # one slice at a time
        print(update.index, update.done, update.total, update.message)
    mask = state.volume_mask()               # (z, y, x) bool

    state.add_prompt(17, SlicePrompt(box=..., slice=17))   # a correction
    prop.propagate(state)                    # redoes only the affected slices

Slices, axes and coordinates. ``shape`` is the volume's (z, y, x) shape and
``axis`` the axis propagated along; "slice i" is the 2D plane at index i
along that axis, whose (row, col) are the two remaining axes in order. Key
slice masks and results are (rows, cols) bool arrays of that plane.

How a run works.

1. Every key slice whose prompt changed is segmented from its prompt (a
   user-painted mask is taken as it is; a slice with only negative clicks is
   a *stop slice*: empty, and propagation never crosses it).
2. The key slices split the axis into segments. Beyond the outermost key
   slices, the mask is propagated outwards slice by slice until a stop rule
   fires (or the range / volume edge is reached). Between two key slices it
   is propagated from both ends across the whole gap, and the two passes are
   reconciled: each slice's probability is the distance-weighted mean of the
   two passes' probabilities (the nearer key slice weighs more); where only
   one pass reached a slice, that pass is taken.
3. Propagation never writes a key slice: the user's slices are kept as given.

Each next slice is prompted from its neighbour's result (see
:meth:`Propagator.step`): box hypotheses around the neighbour's mask (tight,
with a small margin, and grown), each decoded; the hypothesis whose mask best
agrees with the neighbour (IoU) and that the model rates best (predicted IoU)
is refined once with the box of its own mask. The stop rules
(:class:`StopRules`) look at the chosen mask: vanished, predicted IoU too
low, too little overlap with the neighbour, sudden growth (a leak into a
neighbouring structure), and intensities unlike the key slices' object.

Corrections. :meth:`PropagationState.add_prompt` on any slice makes it a key
slice and marks for recomputation only the *affected range*: the slices
between the nearest key slices on either side (exclusive), clipped to the
range. Everything outside that range is kept bit for bit.
:meth:`PropagationState.remove_prompt` does the reverse.

Cancel. A run stopped between slices (generator closed, ``cancel`` set)
keeps every finished slice; the unfinished ones stay marked and the next
run does only those.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError, UsageError
from .models.base import Backend, Embedding
from .candidates import choose_candidate
from .predictor import SlicePredictor
from .prompts import SlicePrompt
from .geometry import box_of_mask, mask_iou

__all__ = [
    "StopReason", "StopDecision", "SliceInfo", "SliceUpdate", "PropagationState", "StopRules",
    "Propagator", "SliceEmbeddingProvider", "Cancel",
]


class StopReason(str, Enum):
    """Why propagation in one direction ended."""

    EDGE = "edge"                  #: reached the first/last slice of the volume
    RANGE = "range"                #: reached the end of the user's range
    USER_STOP = "user_stop"        #: next slice is a stop slice (only negative clicks)
    KEY_SLICE = "key_slice"        #: reached another key slice (the gap is reconciled)
    EMPTY = "empty"                #: the mask vanished
    LOW_SCORE = "low_score"        #: the model's predicted IoU fell under the threshold
    DISCONTINUITY = "discontinuity"  #: too little overlap with the neighbouring slice
    GROWTH = "growth"              #: the area grew suddenly (leak into a neighbour)
    INTENSITY = "intensity"        #: intensities unlike the object on the key slices
    APPEARANCE = "appearance"      #: image features unlike the object on the key slices


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
    from both neighbours), "reconciled" (two passes between key slices); origin: the key slice it was propagated from (the
    nearer one when reconciled); score: the model's predicted IoU;
    iou_prev: IoU with the neighbour it was prompted from; area_ratio: area /
    neighbour's area; intensity_shift: distance of the mask's median intensity
    from the key slices' object in units of its spread (0 when unknown).
    """

    source: str
    origin: int
    score: float = float("nan")
    iou_prev: float = float("nan")
    area_ratio: float = float("nan")
    intensity_shift: float = 0.0


@dataclass(frozen=True)
class SliceUpdate:
    """One step of a run, as yielded by :meth:`Propagator.run`.

    index: the slice just finished; mask: its (rows, cols) bool result (a
    view into the state: do not modify); done / total: slices processed so
    far and the current estimate of the run's total, an upper bound that
    shrinks when a pass stops early (the run has ended when the generator is
    exhausted; :meth:`Propagator.propagate` then reports done == total);
    message: a short status line.
    """

    index: int
    mask: np.ndarray
    done: int
    total: int
    message: str


class SliceEmbeddingProvider(Protocol):
    """What a :class:`Propagator` needs to read slices: :class:`napari_sam.cache.SliceEmbeddings` is one.

    ``get(i)`` returns slice i's embedding (computed lazily); ``model_input(i)``
    the (rows, cols) float32 image in [0, 1] the model sees (used for the
    intensity stop rule); ``axis`` the axis the slices are taken along.
    """

    axis: int

    def __len__(self) -> int: ...

    def get(self, index: int) -> Embedding: ...

    def model_input(self, index: int) -> np.ndarray: ...


#: a cancel request: a callable returning True to stop, or a threading.Event
Cancel = Callable[[], bool] | threading.Event

#: progress callback for :meth:`Propagator.propagate`: (done, total, message)
Progress = Callable[[int, int, str], None]


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
        return self.add_prompt(index, SlicePrompt(points=pts, labels=np.zeros(len(pts), np.int64), slice=index))

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

    def stops_at(self, index: int) -> list[StopDecision]:
        """Stop decisions whose pass ended at (last kept) or was refused on slice ``index``."""
        return [s for s in self.stops if s.last == index or s.rejected == index]


@dataclass(frozen=True)
class StopRules:
    """Thresholds of the stop rules, checked on the answer for each next slice.

    min_area: a mask smaller than this many pixels has vanished (EMPTY).
    min_score: the model's predicted IoU under this stops (LOW_SCORE). Off
        (0) by default: on the shared CT, continuing slices of small
        structures often score under 0.3 while the slices past an object's
        end scored 0.42-0.81, so the score does not tell them apart.
    max_growth: area / neighbour's area above this stops (GROWTH, a leak into
        a neighbouring structure), for neighbours of at least
        ``growth_min_area`` pixels.
    min_iou, min_backward_iou: the answer is refused (DISCONTINUITY) when
        its IoU with the neighbour's mask is under ``min_iou`` *and* the
        backward check fails: the answer's box, prompted on the neighbour's
        slice, gives back less than ``min_backward_iou`` (IoU) of the
        neighbour's mask. A real continuation maps back onto where it came
        from; a jump to another structure does not.
    max_intensity_shift: |median intensity of the answer - the key slices'
        object median| / its robust spread (half the 10-90 percentile
        range); above this stops (INTENSITY). None disables the rule.
    min_feature_similarity: cosine similarity between the image encoder's
        features averaged over the answer and over the key slices' masks;
        under this stops (APPEARANCE: the pass has moved onto another kind
        of tissue). 0 disables the rule.
    patience: slices a pass may look past a refused slice: when the slice
        after it (prompted from the last kept mask) passes every rule, the
        refused slice is bridged (re-prompted with the union of its two
        neighbours' boxes) and the pass goes on. 0 stops at the first refusal.
    """

    min_area: int = 4
    min_score: float = 0.0
    max_growth: float = 2.5
    growth_min_area: int = 64
    min_iou: float = 0.4
    min_backward_iou: float = 0.5
    max_intensity_shift: float | None = 2.0
    min_feature_similarity: float = 0.6
    patience: int = 1


@dataclass
class _Step:
    """The chosen answer for one slice (masks and logits on the full slice grid)."""

    mask: np.ndarray
    score: float
    logits: np.ndarray  # (rows, cols) float32 slice-grid logits
    iou_prev: float
    area_ratio: float
    intensity_shift: float = 0.0
    box: np.ndarray | None = None
    backward_iou: float = 1.0
    bridged: bool = False
    feature_similarity: float = 1.0


def _is_set(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _pooled_features(emb: Embedding, mask: np.ndarray, image_size: int) -> torch.Tensor | None:
    """Mean of the image encoder's features (C,) over a (rows, cols) mask of its slice, or None when empty."""
    import torch.nn.functional as F

    if not mask.any():
        return None
    f = emb.features[0].float()
    _c, h, w = f.shape
    ih, iw = emb.input_size
    m = torch.from_numpy(mask.astype(np.float32))[None, None].to(f.device)
    m = F.interpolate(m, size=(ih, iw), mode="area")
    m = F.pad(m, (0, image_size - iw, 0, image_size - ih))
    m = F.interpolate(m, size=(h, w), mode="area")[0, 0]
    total = float(m.sum())
    if total < 1e-6:
        return None
    return (f * m).sum((1, 2)) / total


@dataclass
class _Intensity:
    """What the object looks like on its key slices: robust intensity
    statistics, and (per frame, computed when first needed) the mean image
    features over its masks."""

    median: float | None
    spread: float | None
    key_masks: dict[int, np.ndarray] = field(default_factory=dict)
    prototypes: dict[tuple[int, int, int, int], torch.Tensor | None] = field(default_factory=dict)

    def prototype(self, frame: _Frame, image_size: int) -> torch.Tensor | None:
        key = (frame.r0, frame.c0, frame.h, frame.w)
        if key not in self.prototypes:
            feats = [f for k, m in sorted(self.key_masks.items())
                     if (f := _pooled_features(frame.provider.get(k), frame.crop(m), image_size)) is not None]
            self.prototypes[key] = torch.stack(feats).mean(0) if feats else None
        return self.prototypes[key]


@dataclass
class _Frame:
    """Where the model looks: the whole slice, or a zoomed region of interest.

    provider: embeddings of the frame's slices; (r0, c0): its top-left corner
    in the slice; (h, w): its size; full: the slice's (rows, cols).
    """

    provider: SliceEmbeddingProvider
    r0: int
    c0: int
    h: int
    w: int
    full: tuple[int, int]

    @property
    def is_full(self) -> bool:
        return (self.h, self.w) == self.full

    def crop(self, a: np.ndarray) -> np.ndarray:
        return a[self.r0:self.r0 + self.h, self.c0:self.c0 + self.w]

    def paste(self, a: np.ndarray, fill: float | bool = False) -> np.ndarray:
        if self.is_full:
            return a
        out = np.full(self.full, fill, dtype=a.dtype)
        out[self.r0:self.r0 + self.h, self.c0:self.c0 + self.w] = a
        return out

    def touches_inner_edge(self, mask: np.ndarray) -> bool:
        """Whether a frame-sized mask reaches an edge of the frame that is not the slice's edge."""
        if self.is_full or not mask.any():
            return False
        H, W = self.full
        return bool((self.r0 > 0 and mask[0].any()) or (self.c0 > 0 and mask[:, 0].any()) or
                    (self.r0 + self.h < H and mask[-1].any()) or (self.c0 + self.w < W and mask[:, -1].any()))


class Propagator:
    """Brings a :class:`PropagationState` up to date with a model.

    backend: the loaded model; embeddings: the slices' embeddings along the
    state's axis (:class:`napari_sam.cache.SliceEmbeddings`), computed lazily
    so that only the slices propagation reaches are encoded.
    rules: the stop rules.
    box_margins: margins (pixels of the frame) of the box hypotheses around
        the neighbour's mask; grow_fraction: one more hypothesis grown by this
        fraction of the box size on each side.
    zoom: for small objects, look at a square region of interest around the
        key slices instead of the whole slice: the model (256 px input for
        the embedded one) then sees the object magnified. Off by default: with
        the embedded LiteMedSAM on the shared CT it helped some small
        structures (adrenal gland, colon) and hurt others (aorta, ribs, IVC);
        see docs/propagation.md. The region's side
        is ``zoom_context`` times the object's size on the key slices, at
        least ``zoom_min_side`` pixels; objects whose region would exceed
        ``zoom_max_fraction`` of the slice are not zoomed. The region is
        embedded separately (and cached like any volume); a pass whose mask
        reaches the region's edge goes on with the whole slice.
    key_choice: how a box key slice picks its mask: "single", the model's
        single-mask output; "box_fit", the candidate (single output and the
        three multimask ones) that best explains the box
        (:func:`napari_sam.candidates.choose_candidate`), without the IoU
        head, which is uncalibrated on MR (segment_volume uses it for MR).
    """

    def __init__(self, backend: Backend, embeddings: SliceEmbeddingProvider, rules: StopRules | None = None,
                 box_margins: tuple[float, ...] = (0.0, 3.0, 6.0), grow_fraction: float = 0.15,
                 zoom: bool = False, zoom_context: float = 3.0, zoom_min_side: int = 96,
                 zoom_max_fraction: float = 0.5, method: str = "track", box_margin: float = 3.0,
                 box_margin_fraction: float = 0.05, grow_rounds: int = 2, key_choice: str = "single") -> None:
        self.backend = backend
        self.embeddings = embeddings
        self.rules = rules or StopRules()
        self.box_margins = tuple(box_margins)
        self.grow_fraction = grow_fraction
        self.zoom = zoom
        self.zoom_context = zoom_context
        self.zoom_min_side = zoom_min_side
        self.zoom_max_fraction = zoom_max_fraction
        self.method = method
        self.box_margin = box_margin
        self.box_margin_fraction = box_margin_fraction
        self.grow_rounds = grow_rounds
        if key_choice not in ("single", "box_fit"):
            raise UsageError(f"key_choice {key_choice!r}: 'single' or 'box_fit'")
        self.key_choice = key_choice
        self._predictor = SlicePredictor(backend)
        self._counter = [0, 0]

    # ------------------------------------------------------------ public
    def propagate(self, state: PropagationState, progress: Progress | None = None,
                  cancel: Cancel | None = None) -> PropagationState:
        """Run to the end (or until ``cancel`` is set, checked between slices).

        progress: called with (done, total, message) after every slice, and
            once more with done == total at the end.
        cancel: a callable returning True, or a threading.Event; a cancelled
            run keeps every finished slice. Returns ``state``.
        """
        gen = self.run(state)
        done = 0
        try:
            for up in gen:
                done = up.done
                if progress is not None:
                    progress(up.done, up.total, up.message)
                if _is_set(cancel):
                    break
        finally:
            gen.close()
        if progress is not None:
            progress(done, done, "cancelled" if state.needs_run else "done")
        return state

    def run(self, state: PropagationState) -> Iterator[SliceUpdate]:
        """Bring ``state`` up to date, yielding a :class:`SliceUpdate` after each finished slice.

        Closing the generator (or simply not resuming it) between yields
        cancels the run; every slice already yielded is kept in the state.
        """
        self._check(state)
        self._choose_roi(state)
        frame = self._frame(state)
        keys = state.key_slices
        lo, hi = state.bounds
        segments = self._segments(state, keys, lo, hi)
        for k in list(state.dirty_keys):  # keys outside the range hold nothing
            if not lo <= k <= hi:
                state.results.pop(k, None)
                state.info.pop(k, None)
                state.dirty_keys.discard(k)
        todo_keys = sorted(state.dirty_keys)
        self._counter = [0, len(todo_keys) + sum(seg[3] for seg in segments)]
        # 1. key slices
        for k in todo_keys:
            mask, info = self._key_result(state, k, frame)
            self._store(state, k, mask, info)
            state.dirty_keys.discard(k)
            state.dirty.discard(k)
            yield self._update(state, k, f"key slice {k}")
        # 2. drop stale results of the dirty slices
        for i in list(state.dirty):
            if i in keys and lo <= i <= hi:
                state.dirty.discard(i)
                continue
            state.results.pop(i, None)
            state.info.pop(i, None)
            if not lo <= i <= hi:
                state.dirty.discard(i)
        positive = {k for k in keys if lo <= k <= hi and not state.is_stop_slice(k)}
        state.stops = [st for st in state.stops if st.origin in positive]
        # 3. segments, in slice order
        intensity = self._intensity(state, frame)
        for first, last, kind, _n, below, above in segments:
            if kind == "out_up":
                yield from self._single_pass(state, below, +1, last, intensity, frame)
            elif kind == "out_down":
                yield from self._single_pass(state, above, -1, first, intensity, frame)
            elif kind == "gap":
                yield from self._gap(state, below, above, intensity, frame)
            else:  # nothing to propagate from: the slices hold no object
                for i in range(first, last + 1):
                    state.dirty.discard(i)
        state.stops.sort(key=lambda st: (st.origin, st.direction))

    # ------------------------------------------------------------ one slice
    @torch.inference_mode()
    def step(self, index: int, prev: np.ndarray, intensity: _Intensity | None = None,
             frame: _Frame | None = None, prev_index: int | None = None) -> _Step:
        """Segment slice ``index`` prompted from its neighbour's (rows, cols) bool mask ``prev``.

        The prompt is the box of ``prev`` plus a margin. While the answer
        reaches the prompt box's edge (the object goes on beyond it), the box
        is re-fitted around the answer plus the margin, up to ``grow_rounds``
        times. ``prev_index``: the neighbour's slice; when given, the answer is
        checked backwards (its box prompted on the neighbour must give back the
        neighbour's mask), which the stop rules use. ``frame``: where the model
        looks (default the whole slice).
        """
        frame = frame or self._full_frame(prev.shape)
        emb = frame.provider.get(index)
        fprev = frame.crop(prev)
        shape = emb.original_size
        if self.method == "hypotheses":
            best = self._step_hypotheses(emb, fprev, shape)
        else:
            box = self._pad(box_of_mask(fprev), shape)
            best = self._decode(emb, [box], fprev)[0]
            for _ in range(self.grow_rounds):
                if not best.mask.any() or not self._touches(best.mask, best.box, shape):
                    break
                grown = self._decode(emb, [self._pad(box_of_mask(best.mask), shape)], fprev)[0]
                if grown.area_ratio > self.rules.max_growth * max(best.area_ratio, 1e-6) or not grown.mask.any():
                    break
                best = grown
        if prev_index is not None and best.mask.any() and best.iou_prev < self.rules.min_iou:
            back_emb = frame.provider.get(prev_index)
            back = self._decode(back_emb, [self._pad(box_of_mask(best.mask), shape)], best.mask)[0]
            best.backward_iou = mask_iou(back.mask, fprev)
        if intensity is not None and best.mask.any():
            if intensity.median is not None:
                img = frame.provider.model_input(index)
                best.intensity_shift = abs(float(np.median(img[best.mask])) - intensity.median) / intensity.spread
            if self.rules.min_feature_similarity > 0:
                proto = intensity.prototype(frame, self.backend.image_size)
                here = _pooled_features(emb, best.mask, self.backend.image_size)
                if proto is not None and here is not None:
                    best.feature_similarity = float(torch.nn.functional.cosine_similarity(here[None], proto[None])[0])
        best.mask = frame.paste(best.mask)
        best.logits = frame.paste(best.logits, fill=-20.0)
        return best

    def _pad(self, b, shape: tuple[int, int]) -> np.ndarray:
        """Box b (r0, c0, r1, c1) plus the margin, inside the slice."""
        h, w = b[2] - b[0] + 1, b[3] - b[1] + 1
        m = max(self.box_margin, self.box_margin_fraction * max(h, w))
        return self._box(b[0] - m, b[1] - m, b[2] + m, b[3] + m, shape)

    @staticmethod
    def _touches(mask: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> bool:
        """Whether the mask reaches an edge of its prompt box that is not the slice's edge."""
        mb = box_of_mask(mask)
        r0, c0, r1, c1 = (int(round(v)) for v in box)
        H, W = shape
        return bool((r0 > 0 and mb[0] <= r0) or (c0 > 0 and mb[1] <= c0) or (r1 < H - 1 and mb[2] >= r1) or
                    (c1 < W - 1 and mb[3] >= c1))

    def _step_hypotheses(self, emb: Embedding, fprev: np.ndarray, shape: tuple[int, int]) -> _Step:
        r0, c0, r1, c1 = box_of_mask(fprev)
        h, w = r1 - r0 + 1, c1 - c0 + 1
        boxes = [self._box(r0 - m, c0 - m, r1 + m, c1 + m, shape) for m in self.box_margins]
        if self.grow_fraction > 0:
            g = self.grow_fraction
            boxes.append(self._box(r0 - g * h, c0 - g * w, r1 + g * h, c1 + g * w, shape))
        cands = self._decode(emb, boxes, fprev)
        best = max(cands, key=lambda c: c.score + c.iou_prev)
        if best.mask.any() and len(self.box_margins) > 1:
            b = box_of_mask(best.mask)
            m = self.box_margins[len(self.box_margins) // 2]
            refined = self._decode(emb, [self._box(b[0] - m, b[1] - m, b[2] + m, b[3] + m, shape)], fprev)[0]
            if refined.score + refined.iou_prev > best.score + best.iou_prev:
                best = refined
        return best

    def check(self, step: _Step, prev: np.ndarray) -> tuple[StopReason, str] | None:
        """The first stop rule that refuses ``step`` (reason, detail), or None to keep it."""
        r = self.rules
        area = int(step.mask.sum())
        if area < r.min_area:
            return StopReason.EMPTY, f"mask of {area} px < {r.min_area} px"
        if step.score < r.min_score:
            return StopReason.LOW_SCORE, f"predicted IoU {step.score:.2f} < {r.min_score:.2f}"
        prev_area = int(prev.sum())
        if prev_area >= r.growth_min_area and step.area_ratio > r.max_growth:
            return StopReason.GROWTH, f"area x{step.area_ratio:.2f} of the neighbour's (> x{r.max_growth:.2f})"
        if step.iou_prev < r.min_iou and step.backward_iou < r.min_backward_iou:
            return StopReason.DISCONTINUITY, (f"IoU {step.iou_prev:.2f} with the neighbour (< {r.min_iou:.2f}) and "
                                              f"backward check {step.backward_iou:.2f} (< {r.min_backward_iou:.2f})")
        if r.max_intensity_shift is not None and step.intensity_shift > r.max_intensity_shift:
            return StopReason.INTENSITY, (f"median intensity {step.intensity_shift:.1f} spreads from the "
                                          f"object's (> {r.max_intensity_shift:.1f})")
        if step.feature_similarity < r.min_feature_similarity:
            return StopReason.APPEARANCE, (f"image features {step.feature_similarity:.2f} similar to the key "
                                           f"slices' object (< {r.min_feature_similarity:.2f})")
        return None

    # ------------------------------------------------------------ frames (zoom)
    def _full_frame(self, shape: tuple[int, int]) -> _Frame:
        return _Frame(self.embeddings, 0, 0, shape[0], shape[1], tuple(shape))

    def _key_extent(self, state: PropagationState) -> tuple[int, int, int, int] | None:
        """Inclusive (r0, c0, r1, c1) around every positive key prompt and painted mask."""
        boxes = []
        for k in state.key_slices:
            if k in state.user_masks:
                b = box_of_mask(state.user_masks[k])
                if b is not None:
                    boxes.append(b)
            elif not state.is_stop_slice(k):
                p = state.prompts[k]
                if p.box is not None:
                    boxes.append(p.box)
                if len(p.positive):
                    lo, hi = p.positive.min(0), p.positive.max(0)
                    boxes.append((lo[0], lo[1], hi[0], hi[1]))
        if not boxes:
            return None
        b = np.asarray(boxes, np.float64)
        return (int(np.floor(b[:, 0].min())), int(np.floor(b[:, 1].min())), int(np.ceil(b[:, 2].max())),
                int(np.ceil(b[:, 3].max())))

    def _choose_roi(self, state: PropagationState) -> None:
        """Keep ``state.roi`` while the key slices fit well inside it; otherwise
        choose it anew (and redo everything, since the frame changes)."""
        ext = self._key_extent(state)
        if not self.zoom or not hasattr(self.embeddings, "cropped") or ext is None:
            new = None
        else:
            H, W = state.slice_shape
            if state.roi is not None:
                r0, c0, r1, c1 = state.roi
                margin = (r1 - r0 + 1) / (2 * self.zoom_context)
                inner = (r0 + margin if r0 > 0 else 0, c0 + margin if c0 > 0 else 0,
                         r1 - margin if r1 < H - 1 else H - 1, c1 - margin if c1 < W - 1 else W - 1)
                if ext[0] >= inner[0] and ext[1] >= inner[1] and ext[2] <= inner[2] and ext[3] <= inner[3]:
                    return
            size = max(ext[2] - ext[0] + 1, ext[3] - ext[1] + 1)
            side = int(round(max(self.zoom_min_side, self.zoom_context * size)))
            if side > self.zoom_max_fraction * min(H, W):
                new = None
            else:
                cr, cc = (ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2
                r0 = int(np.clip(round(cr - side / 2), 0, H - side))
                c0 = int(np.clip(round(cc - side / 2), 0, W - side))
                new = (r0, c0, r0 + side - 1, c0 + side - 1)
        if new != state.roi:
            state.roi = new
            if state.results:
                state.mark_all()

    def _frame(self, state: PropagationState) -> _Frame:
        if state.roi is None:
            return self._full_frame(state.slice_shape)
        r0, c0, r1, c1 = state.roi
        provider = self.embeddings.cropped((r0, c0, r1, c1))  # type: ignore[attr-defined]
        return _Frame(provider, r0, c0, r1 - r0 + 1, c1 - c0 + 1, state.slice_shape)

    # ------------------------------------------------------------ internals
    def _check(self, state: PropagationState) -> None:
        n = len(self.embeddings)
        ax = getattr(self.embeddings, "axis", state.axis)
        if ax != state.axis:
            raise UsageError(f"embeddings are along axis {ax}, the state along axis {state.axis}")
        if n != state.n_slices:
            raise UsageError(f"embeddings hold {n} slices but the state's axis {state.axis} has "
                             f"{state.n_slices}: build them along the same axis of the same volume")

    @staticmethod
    def _box(r0: float, c0: float, r1: float, c1: float, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        return np.array([np.clip(r0, 0, h - 1), np.clip(c0, 0, w - 1), np.clip(r1, 0, h - 1),
                         np.clip(c1, 0, w - 1)], np.float32)

    def _decode(self, emb: Embedding, boxes: list[np.ndarray], prev: np.ndarray) -> list[_Step]:
        low, scores = self.backend.decode_low_res(emb, boxes_rc=np.stack(boxes))
        logits = self.backend.upsample(low[:, :1], emb)[:, 0].float().cpu().numpy()
        prev_area = max(1, int(prev.sum()))
        out = []
        for i in range(len(boxes)):
            m = logits[i] > 0
            out.append(_Step(mask=m, score=float(scores[i, 0]), logits=logits[i], iou_prev=mask_iou(m, prev),
                             area_ratio=float(m.sum()) / prev_area, box=boxes[i]))
        return out

    def _key_result(self, state: PropagationState, k: int, frame: _Frame) -> tuple[np.ndarray, SliceInfo]:
        if k in state.user_masks:
            return state.user_masks[k].copy(), SliceInfo("user_mask", k)
        prompt = state.prompts[k]
        if prompt.only_negative:
            return np.zeros(state.slice_shape, bool), SliceInfo("stop", k)
        off = np.array([frame.r0, frame.c0], np.float32)
        local = prompt
        if not frame.is_full:
            box = None if prompt.box is None else (prompt.box[0] - off[0], prompt.box[1] - off[1],
                                                   prompt.box[2] - off[0], prompt.box[3] - off[1])
            local = SlicePrompt(points=prompt.points - off, labels=prompt.labels, box=box, slice=k)
        self._predictor.set_embedding(frame.provider.get(k))
        pred = self._predictor.predict(prompt=local, multimask=False)
        mask = pred.mask
        if self.key_choice == "box_fit" and local.box is not None and not len(local.points):
            many = self._predictor.predict(prompt=local, multimask=True)
            cands = [mask] + [many.masks[i] for i in range(len(many.masks))]
            mask = cands[choose_candidate(cands, local.box)]
        return frame.paste(mask.copy()), SliceInfo("key", k, score=float(pred.scores[0]))

    def _intensity(self, state: PropagationState, frame: _Frame) -> _Intensity:
        keys = {k: state.results[k] for k in state.key_slices if k in state.results and state.results[k].any()}
        med = spread = None
        if keys and self.rules.max_intensity_shift is not None and hasattr(frame.provider, "model_input"):
            v = np.concatenate([frame.provider.model_input(k)[frame.crop(m)] for k, m in keys.items()])
            if v.size:
                p10, p50, p90 = np.percentile(v, [10, 50, 90])
                med, spread = float(p50), max(float(p90 - p10) / 2.0, 0.02)
        return _Intensity(med, spread, keys)

    def _segments(self, state: PropagationState, keys: list[int], lo: int, hi: int):
        """Segments holding dirty slices: (first, last, kind, work, key below, key above)."""
        keys = [k for k in keys if lo <= k <= hi]
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
                out.append((first, last, "gap", 2 * n, below, above))  # both passes, at most
            elif below is not None:
                out.append((first, last, "out_up", n, below, None))
            elif above is not None:
                out.append((first, last, "out_down", n, None, above))
            else:
                out.append((first, last, "none", 0, None, None))
        return out

    @staticmethod
    def _info(step: _Step, origin: int) -> SliceInfo:
        return SliceInfo("bridged" if step.bridged else "propagated", origin, step.score, step.iou_prev,
                         step.area_ratio, step.intensity_shift)

    def _store(self, state: PropagationState, i: int, mask: np.ndarray, info: SliceInfo) -> None:
        state.results[i] = mask
        state.info[i] = info

    def _update(self, state: PropagationState, i: int, message: str) -> SliceUpdate:
        self._counter[0] += 1
        return SliceUpdate(i, state.results.get(i, np.zeros(state.slice_shape, bool)), self._counter[0],
                           max(self._counter[1], self._counter[0]), message)

    def _walk(self, state: PropagationState, origin: int, direction: int, start: int, limit: int,
              intensity: _Intensity | None, end_reason: StopReason, frame: _Frame) -> Iterator[tuple[int, _Step]]:
        """One pass of key slice ``origin`` from slice ``start`` (already done)
        towards ``limit`` (inclusive). Yields (slice, step) for each kept slice,
        then records the stop decision. ``end_reason``: why the pass ends if it
        reaches ``limit``. A pass whose mask reaches the edge of a zoomed frame
        goes on with the whole slice."""
        state.stops = [st for st in state.stops if not (st.origin == origin and st.direction == direction)]
        prev = state.results.get(start)
        last = start
        i = start + direction
        if prev is None or not prev.any():
            state.stops.append(StopDecision(origin, direction, last, None, StopReason.EMPTY,
                                            f"the mask of slice {start} is empty"))
            return
        if frame.touches_inner_edge(frame.crop(prev)):
            frame = self._full_frame(frame.full)
        while (i - limit) * direction <= 0:
            step, frame = self._framed_step(i, prev, intensity, frame, i - direction)
            refused = self.check(step, prev)
            if refused is not None and self.rules.patience > 0:
                bridged = self._look_past(i, direction, limit, prev, intensity, frame)
                if bridged is not None:
                    (steps, frame) = bridged
                    for j, st in steps:
                        yield j, st
                        prev, last = st.mask, j
                    i = last + direction
                    continue
            if refused is not None:
                state.stops.append(StopDecision(origin, direction, last, i, refused[0], refused[1]))
                return
            yield i, step
            prev, last = step.mask, i
            i += direction
        state.stops.append(StopDecision(origin, direction, last, None, end_reason, ""))

    def _framed_step(self, i: int, prev: np.ndarray, intensity: _Intensity | None, frame: _Frame,
                     prev_index: int) -> tuple[_Step, _Frame]:
        """:meth:`step` in ``frame``; when the answer reaches the edge of a zoomed
        frame, again with the whole slice (which the pass then keeps)."""
        step = self.step(i, prev, intensity, frame, prev_index=prev_index)
        if not frame.is_full and frame.touches_inner_edge(frame.crop(step.mask)):
            frame = self._full_frame(frame.full)
            step = self.step(i, prev, intensity, frame, prev_index=prev_index)
        return step, frame

    @torch.inference_mode()
    def _look_past(self, i: int, direction: int, limit: int, prev: np.ndarray, intensity: _Intensity | None,
                   frame: _Frame) -> tuple[list[tuple[int, _Step]], _Frame] | None:
        """After slice ``i`` was refused: try the slices beyond it (up to
        ``patience``), prompted from ``prev``. When one passes every rule, the
        skipped slices are re-prompted with the union of the boxes of ``prev``
        and that slice's mask; returns them and the kept one, in order."""
        for skip in range(1, self.rules.patience + 1):
            j = i + skip * direction
            if (j - limit) * direction > 0:
                return None
            step, frame = self._framed_step(j, prev, intensity, frame, i - direction)
            if self.check(step, prev) is not None:
                continue
            a, b = box_of_mask(frame.crop(prev)), box_of_mask(frame.crop(step.mask))
            if a is None or b is None:
                return None
            union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
            out = []
            for k in range(i, j, direction):
                emb = frame.provider.get(k)
                st = self._decode(emb, [self._pad(union, emb.original_size)], frame.crop(prev))[0]
                st.mask, st.logits = frame.paste(st.mask), frame.paste(st.logits, fill=-20.0)
                st.bridged = True
                out.append((k, st))
            out.append((j, step))
            return out, frame
        return None

    def _end_reason(self, state: PropagationState, limit: int, direction: int) -> StopReason:
        nxt = limit + direction
        if nxt < 0 or nxt >= state.n_slices:
            return StopReason.EDGE
        if state.range is not None and not state.range[0] <= nxt <= state.range[1]:
            return StopReason.RANGE
        if state.is_stop_slice(nxt):
            return StopReason.USER_STOP
        return StopReason.KEY_SLICE

    def _single_pass(self, state: PropagationState, origin: int, direction: int, limit: int,
                     intensity: _Intensity | None, frame: _Frame) -> Iterator[SliceUpdate]:
        """Outwards from key slice ``origin`` to ``limit`` (inclusive), resuming
        after the slices a cancelled run already finished."""
        start = origin
        while start != limit and (start + direction) not in state.dirty and (start + direction) in state.results:
            start += direction
        n_planned = abs(limit - start)
        n_done = 0
        for i, step in self._walk(state, origin, direction, start, limit, intensity,
                                  self._end_reason(state, limit, direction), frame):
            self._store(state, i, step.mask, self._info(step, origin))
            state.dirty.discard(i)
            n_done += 1
            yield self._update(state, i, f"slice {i} (from key {origin})")
        # the rest of the segment holds no object
        for j in range(start + direction * (n_done + 1), limit + direction, direction):
            state.results.pop(j, None)
            state.info.pop(j, None)
            state.dirty.discard(j)
        self._counter[1] -= n_planned - n_done

    def _gap(self, state: PropagationState, a: int, b: int, intensity: _Intensity | None,
             frame: _Frame) -> Iterator[SliceUpdate]:
        """Between key slices a < b: a pass up from a, then a pass down from b
        that reconciles each slice as it goes (see the module docstring)."""
        n = b - a - 1
        up: dict[int, _Step] = {}
        for i, step in self._walk(state, a, +1, a, b - 1, intensity, StopReason.KEY_SLICE, frame):
            up[i] = step
            # provisional result, shown while the second pass runs (the slice stays dirty)
            self._store(state, i, step.mask, self._info(step, a))
            yield self._update(state, i, f"slice {i} (from key {a}, first pass)")
        self._counter[1] -= n - len(up)
        finished = set()
        for i, sd in self._walk(state, b, -1, b, a + 1, intensity, StopReason.KEY_SLICE, frame):
            self._reconcile(state, i, a, b, up.get(i), sd)
            finished.add(i)
            yield self._update(state, i, f"slice {i} (keys {a} and {b} reconciled)")
        for i in range(b - 1, a, -1):
            if i not in finished:
                self._reconcile(state, i, a, b, up.get(i), None)
                yield self._update(state, i, f"slice {i} (from key {a})")

    def _reconcile(self, state: PropagationState, i: int, a: int, b: int, su: _Step | None,
                   sd: _Step | None) -> None:
        if su is None and sd is None:
            state.results.pop(i, None)
            state.info.pop(i, None)
        elif su is not None and sd is not None:
            wa = (b - i) / (b - a)
            prob = wa / (1 + np.exp(-su.logits)) + (1 - wa) / (1 + np.exp(-sd.logits))
            near, o = (su, a) if wa >= 0.5 else (sd, b)
            self._store(state, i, prob > 0.5, SliceInfo("reconciled", o, near.score, near.iou_prev,
                                                         near.area_ratio, near.intensity_shift))
        else:
            s, o = (su, a) if su is not None else (sd, b)
            self._store(state, i, s.mask, self._info(s, o))
        state.dirty.discard(i)
