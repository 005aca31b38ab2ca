"""The propagation loop: :class:`Propagator` brings a :class:`PropagationState` up to date.

:meth:`Propagator.run` is a job (:mod:`napari_sam.jobs`): a generator that
yields one :class:`napari_sam.jobs.Progress` event per finished slice, whose
``payload`` is a :class:`SliceUpdate` (the slice and its mask), and returns
the state. Closing the generator between yields cancels the run; every
slice already reported is kept. :meth:`Propagator.propagate` drives the same
job with :func:`napari_sam.jobs.drive` for scripts and the CLI.

How a run works (see the package docstring for the whole method):

1. every key slice whose prompt changed is segmented from its prompt;
2. the key slices split the axis into segments: outwards from the
   outermost key slices a single pass runs until a stop rule fires
   (:mod:`.rules`); between two key slices both ends propagate across the
   gap and each slice is reconciled (distance-weighted mean probability);
3. each next slice is answered by the step strategy (:mod:`.strategy`)
   from its neighbour's mask; propagation never writes a key slice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from ..candidates import KEY_CHOICES, box_fit_key, uses_box_fit
from ..errors import UsageError
from ..geometry import Crop, box_of_mask, mask_iou
from ..jobs import Cancel, Cancelled, Job, Progress, ProgressCallback, drive
from ..models.base import Backend, Embedding
from ..predictor import SlicePredictor
from ..prompts import SlicePrompt
from ..zoom import zoomed_box_outputs
from .roi import RoiZoom, choose_roi, frame_of
from .rules import ObjectAppearance, StepAnswer, StopRules, check_step, pooled_features
from .segments import Segment, Tally, drop, info_of, paste, plan_segments, reconcile, store
from .state import PropagationState, SliceInfo, StopDecision, StopReason
from .strategy import BoxDecoder, RescueStrategy, StepStrategy, TrackStrategy

__all__ = ["Propagator", "SliceEmbeddingProvider"]

log = logging.getLogger(__name__)

#: logits pasted outside a zoom frame: "certainly not the object"
_OUTSIDE = -20.0


class SliceEmbeddingProvider(Protocol):
    """What a :class:`Propagator` reads slices from
    (:class:`napari_sam.embeddings.SliceEmbeddings` is one).

    ``get(i)`` returns slice i's embedding (computed lazily), ``get(i, crop)``
    the embedding of a :class:`~napari_sam.geometry.Crop` of it (the zoom
    region); ``model_input(i)`` the (rows, cols) float32 image in [0, 1] the
    model sees (for the intensity stop rule); ``axis`` the axis the slices are
    taken along.
    """

    axis: int

    def __len__(self) -> int: ...

    def get(self, index: int, crop: Crop | None = None) -> Embedding: ...

    def model_input(self, index: int) -> np.ndarray: ...


class Propagator:
    """Brings a :class:`PropagationState` up to date with a model.

    backend: the loaded model; embeddings: the slices' embeddings along the
    state's axis (a :class:`SliceEmbeddingProvider`), computed lazily so that
    only the slices propagation reaches are encoded.
    rules: the stop rules (default :class:`StopRules()`).
    strategy: how each next slice is answered from its neighbour
        (:class:`~napari_sam.propagation.TrackStrategy` by default, or
        :class:`~napari_sam.propagation.HypothesesStrategy`).
    zoom: a :class:`~napari_sam.propagation.RoiZoom` (or True for its
        defaults) to look at a region of interest around small objects
        instead of the whole slice; None (the default) never zooms.
    box_margin, box_margin_fraction: a mask's box is grown by max(margin,
        fraction * its longer side) pixels when it prompts the next slice.
    key_choice: how a box key slice picks its mask: "single", the model's
        single-mask output; "single_fit", that unless it explains under half
        the box (:func:`~napari_sam.candidates.uses_box_fit`); "box_fit", the candidate (single output and the
        three multimask ones) that best explains the box
        (:func:`napari_sam.candidates.box_fit_prediction`), without the IoU
        head, which is uncalibrated on MR (segment_volume uses it for MR).
    rescue: the second look at a refused slice (default
        :class:`~napari_sam.propagation.RescueStrategy`; None: none).
    """

    def __init__(
        self,
        backend: Backend,
        embeddings: SliceEmbeddingProvider,
        rules: StopRules | None = None,
        strategy: StepStrategy | None = None,
        zoom: RoiZoom | bool | None = None,
        box_margin: float = 3.0,
        box_margin_fraction: float = 0.05,
        key_choice: str = "single",
        rescue: StepStrategy | None = RescueStrategy(),
    ) -> None:
        if key_choice not in KEY_CHOICES:
            raise UsageError(f"key_choice {key_choice!r}: one of {', '.join(KEY_CHOICES)}")
        self.backend = backend
        self.embeddings = embeddings
        self.rules = rules or StopRules()
        self.strategy: StepStrategy = strategy or TrackStrategy()
        self.zoom: RoiZoom | None = RoiZoom() if zoom is True else (zoom or None)
        self.decoder = BoxDecoder(backend, box_margin, box_margin_fraction)
        self.key_choice = key_choice
        self.rescue = rescue
        self._predictor = SlicePredictor(backend)

    # ------------------------------------------------------------ public
    def propagate(
        self, state: PropagationState, progress: ProgressCallback | None = None, cancel: Cancel | None = None
    ) -> PropagationState:
        """Run :meth:`run` to its end with :func:`napari_sam.jobs.drive`; returns ``state``.

        progress: called with every :class:`~napari_sam.jobs.Progress` event.
        cancel: a :class:`~napari_sam.jobs.Cancel` token, checked between
            slices. A cancelled run keeps every finished slice and leaves
            ``state.needs_run`` True: the next run does only what is left.
        """
        try:
            drive(self.run(state), progress, cancel, what="propagation")
        except Cancelled:
            log.info("propagation cancelled; %d slice(s) left to do", len(state.dirty | state.dirty_keys))
        return state

    def run(self, state: PropagationState) -> Job[PropagationState]:
        """Bring ``state`` up to date: a job yielding a :class:`~napari_sam.jobs.Progress`
        (payload: :class:`SliceUpdate`) after each finished slice, then one last
        event without payload (done == total); returns ``state``.

        Closing the generator (or simply not resuming it) between yields
        cancels the run; every slice already reported is kept in the state.
        """
        self._check(state)
        choose_roi(state, self.zoom)
        frame = frame_of(state)
        lo, hi = state.bounds
        segments = plan_segments(state, lo, hi)
        for k in list(state.dirty_keys):  # keys outside the range hold nothing
            if not lo <= k <= hi:
                drop(state, k)
                state.dirty_keys.discard(k)
        todo_keys = sorted(state.dirty_keys)
        tally = Tally(0, len(todo_keys) + sum(seg.work for seg in segments))
        for k in todo_keys:
            store(state, k, *self._key_result(state, k, frame))
            state.dirty_keys.discard(k)
            state.dirty.discard(k)
            yield tally.event(state, k, f"key slice {k}")
        self._drop_stale(state, lo, hi)
        appearance = self._appearance(state, frame)
        for seg in segments:
            yield from self._segment(state, seg, appearance, frame, tally)
        state.stops.sort(key=lambda st: (st.origin, st.direction))
        for st in state.stops:
            log.debug(
                "pass from key slice %d (%+d) kept up to slice %d: %s %s",
                st.origin,
                st.direction,
                st.last,
                st.reason.value,
                st.detail,
            )
        stops = ", ".join(f"{st.direction:+d}@{st.last}:{st.reason.value}" for st in state.stops)
        log.info(
            "propagation along axis %d: %d slice(s) computed, object on slices %s; stops: %s",
            state.axis,
            tally.done,
            state.extent,
            stops or "none",
        )
        yield Progress(tally.done, tally.done, "done")
        return state

    def check(self, step: StepAnswer, prev: np.ndarray) -> tuple[StopReason, str] | None:
        """The first stop rule that refuses ``step`` (reason, detail), or None to keep it."""
        return check_step(self.rules, step, prev)

    # ------------------------------------------------------------ one slice
    @torch.inference_mode()
    def step(
        self,
        index: int,
        prev: np.ndarray,
        appearance: ObjectAppearance | None = None,
        frame: Crop | None = None,
        prev_index: int | None = None,
        strategy: StepStrategy | None = None,
    ) -> StepAnswer:
        """Segment slice ``index`` prompted from its neighbour's (rows, cols) bool mask ``prev``.

        The answer comes from the step strategy. ``prev_index``: the
        neighbour's slice; when given, an answer that overlaps the neighbour
        little is checked backwards (its box prompted on the neighbour must
        give back the neighbour's mask), which the stop rules use.
        ``appearance``: the key slices' object, for the intensity and
        appearance rules. ``frame``: where the model looks (default the whole
        slice). ``strategy``: instead of the propagator's own. Masks and logits
        come back on the whole slice.
        """
        full = prev.shape
        frame = frame or Crop.whole(full)
        emb = self._embedding(index, frame, full)
        fprev = prev[frame.slices]
        best = (strategy or self.strategy).answer(self.decoder, emb, fprev, self.rules)
        if prev_index is not None and best.mask.any() and best.iou_prev < self.rules.min_iou:
            box = self.decoder.pad(box_of_mask(best.mask), emb.original_size)
            back = self.decoder.decode(self._embedding(prev_index, frame, full), [box], best.mask)[0]
            best.backward_iou = mask_iou(back.mask, fprev)
        if appearance is not None and best.mask.any():
            if appearance.median is not None:
                best.intensity_shift = appearance.shift(self.embeddings.model_input(index)[frame.slices], best.mask)
            if self.rules.min_feature_similarity > 0:
                proto = appearance.prototype(frame, lambda k: self._embedding(k, frame, full), self.backend.image_size)
                here = pooled_features(emb, best.mask, self.backend.image_size)
                if proto is not None and here is not None:
                    best.feature_similarity = float(torch.nn.functional.cosine_similarity(here[None], proto[None])[0])
        best.mask = paste(frame, best.mask, full)
        best.logits = paste(frame, best.logits, full, _OUTSIDE)
        return best

    # ------------------------------------------------------------ internals
    def _check(self, state: PropagationState) -> None:
        n = len(self.embeddings)
        ax = getattr(self.embeddings, "axis", state.axis)
        if ax != state.axis:
            raise UsageError(f"embeddings are along axis {ax}, the state along axis {state.axis}")
        if n != state.n_slices:
            raise UsageError(
                f"embeddings hold {n} slices but the state's axis {state.axis} has "
                f"{state.n_slices}: build them along the same axis of the same volume"
            )

    def _embedding(self, index: int, frame: Crop, full: tuple[int, int]) -> Embedding:
        """Slice ``index``'s embedding of ``frame`` (the whole slice, or the zoom region)."""
        return self.embeddings.get(index) if frame.is_whole(full) else self.embeddings.get(index, frame)

    def _key_result(self, state: PropagationState, k: int, frame: Crop) -> tuple[np.ndarray, SliceInfo]:
        """Key slice ``k``'s mask from the user's painted mask or prompt, and why."""
        if k in state.user_masks:
            return state.user_masks[k].copy(), SliceInfo("user_mask", k)
        prompt = state.prompts[k]
        if prompt.only_negative:
            return np.zeros(state.slice_shape, bool), SliceInfo("stop", k)
        full = state.slice_shape
        local = prompt
        if not frame.is_whole(full):
            off = frame.offset
            box = (
                None
                if prompt.box is None
                else (prompt.box[0] - off[0], prompt.box[1] - off[1], prompt.box[2] - off[0], prompt.box[3] - off[1])
            )
            local = SlicePrompt(points=prompt.points - off, labels=prompt.labels, box=box, slice=k)
        self._predictor.set_embedding(self._embedding(k, frame, full))
        pred = self._predictor.predict(prompt=local, multimask=False)
        mask = pred.mask
        if local.box is not None and not len(local.points) and uses_box_fit(self.key_choice, mask, local.box):
            many = self._predictor.predict(prompt=local, multimask=True)
            emb = self._predictor.embedding
            zoomed = (
                (lambda: zoomed_box_outputs(self.backend, lambda c: self.embeddings.get(k, c), local.box, full))
                if frame.is_whole(full)
                else None
            )
            mask = box_fit_key(self.backend, pred, many, emb, local.box, zoomed).mask
        return paste(frame, mask.copy(), full), SliceInfo("key", k, score=float(pred.scores[0]))

    def _appearance(self, state: PropagationState, frame: Crop) -> ObjectAppearance:
        """The object on its (finished, non-empty) key slices."""
        keys = {k: state.results[k] for k in state.key_slices if k in state.results and state.results[k].any()}
        med = spread = None
        if keys and self.rules.max_intensity_shift is not None:
            v = np.concatenate([self.embeddings.model_input(k)[frame.slices][m[frame.slices]] for k, m in keys.items()])
            if v.size:
                p10, p50, p90 = np.percentile(v, [10, 50, 90])
                med, spread = float(p50), max(float(p90 - p10) / 2.0, 0.02)
        return ObjectAppearance(med, spread, keys)

    @staticmethod
    def _drop_stale(state: PropagationState, lo: int, hi: int) -> None:
        """Drop the stale results of the dirty slices (key slices in range excepted)
        and the stop decisions of passes whose key slice is gone."""
        keys = state.key_slices
        for i in list(state.dirty):
            if i in keys and lo <= i <= hi:
                state.dirty.discard(i)
                continue
            drop(state, i)
            if not lo <= i <= hi:
                state.dirty.discard(i)
        positive = {k for k in keys if lo <= k <= hi and not state.is_stop_slice(k)}
        state.stops = [st for st in state.stops if st.origin in positive]

    def _segment(
        self, state: PropagationState, seg: Segment, appearance: ObjectAppearance, frame: Crop, tally: Tally
    ) -> Iterator[Progress]:
        if seg.kind == "out_up":
            yield from self._single_pass(state, seg.below, +1, seg.last, appearance, frame, tally)
        elif seg.kind == "out_down":
            yield from self._single_pass(state, seg.above, -1, seg.first, appearance, frame, tally)
        elif seg.kind == "gap":
            yield from self._gap(state, seg.below, seg.above, appearance, frame, tally)
        else:  # nothing to propagate from: the slices hold no object
            for i in range(seg.first, seg.last + 1):
                state.dirty.discard(i)

    def _walk(
        self,
        state: PropagationState,
        origin: int,
        direction: int,
        start: int,
        limit: int,
        appearance: ObjectAppearance | None,
        end_reason: StopReason,
        frame: Crop,
    ) -> Iterator[tuple[int, StepAnswer]]:
        """One pass of key slice ``origin`` from slice ``start`` (already done)
        towards ``limit`` (inclusive). Yields (slice, answer) for each kept slice,
        then records the stop decision. ``end_reason``: why the pass ends if it
        reaches ``limit``. A pass whose mask reaches the edge of a zoomed frame
        goes on with the whole slice."""
        state.stops = [st for st in state.stops if not (st.origin == origin and st.direction == direction)]
        full = state.slice_shape
        prev = state.results.get(start)
        last = start
        i = start + direction
        if prev is None or not prev.any():
            state.stops.append(
                StopDecision(origin, direction, last, None, StopReason.EMPTY, f"the mask of slice {start} is empty")
            )
            return
        if frame.touches_inner_border(prev[frame.slices], full):
            frame = Crop.whole(full)
        while (i - limit) * direction <= 0:
            step, frame = self._framed_step(i, prev, appearance, frame, i - direction)
            refused = self.check(step, prev)
            if refused is not None and self.rules.patience > 0:
                bridged = self._look_past(i, direction, limit, prev, appearance, frame)
                if bridged is not None:
                    steps, frame = bridged
                    for j, st in steps:
                        yield j, st
                        prev, last = st.mask, j
                    i = last + direction
                    continue
            if refused is not None and (rescued := self._rescued(i, prev, appearance, frame, i - direction)):
                (step, frame), refused = rescued, None
            if refused is not None:
                state.stops.append(StopDecision(origin, direction, last, i, refused[0], refused[1]))
                return
            yield i, step
            prev, last = step.mask, i
            i += direction
        state.stops.append(StopDecision(origin, direction, last, None, end_reason, ""))

    def _framed_step(
        self,
        i: int,
        prev: np.ndarray,
        appearance: ObjectAppearance | None,
        frame: Crop,
        prev_index: int,
        strategy: StepStrategy | None = None,
    ) -> tuple[StepAnswer, Crop]:
        """:meth:`step` in ``frame`` (by ``strategy``, default the propagator's);
        when the answer reaches the edge of a zoomed frame, again with the whole
        slice (which the pass then keeps)."""
        step = self.step(i, prev, appearance, frame, prev_index=prev_index, strategy=strategy)
        full = prev.shape
        if not frame.is_whole(full) and frame.touches_inner_border(step.mask[frame.slices], full):
            frame = Crop.whole(full)
            step = self.step(i, prev, appearance, frame, prev_index=prev_index, strategy=strategy)
        return step, frame

    def _rescued(
        self, i: int, prev: np.ndarray, appearance: ObjectAppearance | None, frame: Crop, prev_index: int
    ) -> tuple[StepAnswer, Crop] | None:
        """The second look (``rescue``) at slice ``i``, whose answer was refused and
        could not be bridged: its answer and frame when it passes every rule and
        is not the neighbour's mask echoed back (a tight box around a few pixels
        is answered with those pixels, whatever the slice holds), else None."""
        if self.rescue is None:
            return None
        step, at = self._framed_step(i, prev, appearance, frame, prev_index, self.rescue)
        if self.check(step, prev) is not None or np.array_equal(step.mask, prev):
            return None
        return step, at

    @torch.inference_mode()
    def _look_past(
        self, i: int, direction: int, limit: int, prev: np.ndarray, appearance: ObjectAppearance | None, frame: Crop
    ) -> tuple[list[tuple[int, StepAnswer]], Crop] | None:
        """After slice ``i`` was refused: try the slices beyond it (up to
        ``patience``), prompted from ``prev``. When one passes every rule, the
        skipped slices are re-prompted with the union of the boxes of ``prev``
        and that slice's mask; returns them and the kept one, in order."""
        full = prev.shape
        for skip in range(1, self.rules.patience + 1):
            j = i + skip * direction
            if (j - limit) * direction > 0:
                return None
            step, frame = self._framed_step(j, prev, appearance, frame, i - direction)
            if self.check(step, prev) is not None:
                continue
            a, b = box_of_mask(prev[frame.slices]), box_of_mask(step.mask[frame.slices])
            if a is None or b is None:
                return None
            union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
            out = []
            for k in range(i, j, direction):
                emb = self._embedding(k, frame, full)
                box = self.decoder.pad(union, emb.original_size)
                st = self.decoder.decode(emb, [box], prev[frame.slices])[0]
                st.mask, st.logits = (paste(frame, st.mask, full), paste(frame, st.logits, full, _OUTSIDE))
                st.bridged = True
                out.append((k, st))
            out.append((j, step))
            log.debug("slice %d refused, bridged to slice %d", i, j)
            return out, frame
        return None

    @staticmethod
    def _end_reason(state: PropagationState, limit: int, direction: int) -> StopReason:
        nxt = limit + direction
        if nxt < 0 or nxt >= state.n_slices:
            return StopReason.EDGE
        if state.range is not None and not state.range[0] <= nxt <= state.range[1]:
            return StopReason.RANGE
        if state.is_stop_slice(nxt):
            return StopReason.USER_STOP
        return StopReason.KEY_SLICE

    def _single_pass(
        self,
        state: PropagationState,
        origin: int,
        direction: int,
        limit: int,
        appearance: ObjectAppearance,
        frame: Crop,
        tally: Tally,
    ) -> Iterator[Progress]:
        """Outwards from key slice ``origin`` to ``limit`` (inclusive), resuming
        after the slices a cancelled run already finished."""
        start = origin
        while start != limit and (start + direction) not in state.dirty and (start + direction) in state.results:
            start += direction
        n_planned = abs(limit - start)
        n_done = 0
        for i, step in self._walk(
            state, origin, direction, start, limit, appearance, self._end_reason(state, limit, direction), frame
        ):
            store(state, i, step.mask, info_of(step, origin))
            state.dirty.discard(i)
            n_done += 1
            yield tally.event(state, i, f"slice {i} (from key {origin})")
        # the rest of the segment holds no object
        for j in range(start + direction * (n_done + 1), limit + direction, direction):
            drop(state, j)
            state.dirty.discard(j)
        tally.total -= n_planned - n_done

    def _gap(
        self, state: PropagationState, a: int, b: int, appearance: ObjectAppearance, frame: Crop, tally: Tally
    ) -> Iterator[Progress]:
        """Between key slices a < b: a pass up from a, then a pass down from b
        that reconciles each slice as it goes (see the package docstring)."""
        n = b - a - 1
        up: dict[int, StepAnswer] = {}
        for i, step in self._walk(state, a, +1, a, b - 1, appearance, StopReason.KEY_SLICE, frame):
            up[i] = step
            # provisional result, shown while the second pass runs (the slice stays dirty)
            store(state, i, step.mask, info_of(step, a))
            yield tally.event(state, i, f"slice {i} (from key {a}, first pass)")
        tally.total -= n - len(up)
        finished = set()
        for i, sd in self._walk(state, b, -1, b, a + 1, appearance, StopReason.KEY_SLICE, frame):
            reconcile(state, i, a, b, up.get(i), sd)
            finished.add(i)
            yield tally.event(state, i, f"slice {i} (keys {a} and {b} reconciled)")
        for i in range(b - 1, a, -1):
            if i not in finished:
                reconcile(state, i, a, b, up.get(i), None)
                yield tally.event(state, i, f"slice {i} (from key {a})")
