"""A prompts file replayed through the annotation model: what ``napari-sam segment`` does.

:func:`replay` does for each object what a user does in the widget: add the
object, commit its prompted slices (decoded by the one key-slice rule,
:func:`~napari_sam.annotation.decode_key`), propagate it, adapt it, apply its
corrections, all through one :class:`~napari_sam.annotation.Annotation`; the
label map is the model's. So the CLI and the widget give the same label map
for the same prompts.

Objects that are not propagated keep only their prompted slices. Their
box-only prompts are decoded in batches per slice and kept cropped
(:mod:`napari_sam.box_batches`), so that thousands of objects cost memory by
their areas, not by a slice each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..box_batches import CroppedMask, decode_boxes, is_plain_box
from ..candidates import box_ellipse, uses_box_fit
from ..corrections import Correction
from ..embeddings import CropEmbeddings, SliceEmbeddings
from ..finetune.adapted import read_weights
from ..intensity import Window, resolve_window
from ..io import Volume
from ..jobs import Progress, ProgressCallback
from ..models.base import Backend
from ..overlaps import as_mask
from ..predictor import SlicePredictor
from ..prompt_steps import Step
from ..prompts import ObjectPrompts, PromptsFile, SlicePrompt
from ..propagation import Propagator, StopRules
from ..torch_threads import decoding
from ..zoom import ZoomSettings
from .keyslices import decode_key
from .model import Annotation

__all__ = ["replay", "ReplayOutcome", "merge_slice_prompts", "object_window"]


@dataclass
class ReplayOutcome:
    """windows: object id -> the Window used; cancelled: a cancel request stopped
    the replay early (the model then holds what was finished)."""

    windows: dict[int, Window] = field(default_factory=dict)
    cancelled: bool = False


def merge_slice_prompts(prompts: list[SlicePrompt]) -> dict[int, SlicePrompt]:
    """Group an object's prompts by slice; prompts on the same slice are merged
    (all clicks together, the last box given)."""
    by_slice: dict[int, SlicePrompt] = {}
    for p in prompts:
        z = 0 if p.slice is None else p.slice
        if z in by_slice:
            old = by_slice[z]
            by_slice[z] = SlicePrompt(
                points=np.concatenate([old.points, p.points]),
                labels=np.concatenate([old.labels, p.labels]),
                box=p.box if p.box is not None else old.box,
                slice=z,
            )
        else:
            by_slice[z] = SlicePrompt(points=p.points, labels=p.labels, box=p.box, slice=z)
    return by_slice


def _chosen_spec(own: Any, file_window: Any, override: Any) -> Any:
    """The window spec an object uses: --window, else its own, else the file's (None: automatic)."""
    return override if override is not None else (own if own is not None else file_window)


def _resolved(volume: Volume, spec: Any) -> Window:
    return resolve_window(volume.array, spec, volume.metadata.get("modality"), volume.metadata.get("dicom_window"))


def object_window(volume: Volume, obj: ObjectPrompts, file_window=None, override=None) -> Window:
    """The window for one object: --window, else the object's, else the file's, else automatic."""
    return _resolved(volume, _chosen_spec(obj.window, file_window, override))


class _StopFlag:
    """A cancel request (a callable returning True, or a threading.Event) as a token with ``is_set``."""

    def __init__(self, cancel: Any) -> None:
        self.cancel = cancel

    def is_set(self) -> bool:
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())


class _Replay:
    """The state of one replay: embeddings per (window, axis), windows, progress."""

    def __init__(
        self,
        model: Annotation,
        volume: Volume,
        prompts: PromptsFile,
        backend: Backend,
        window: Any,
        progress: ProgressCallback | None,
        embeddings_for: Any,
        cancel: Any,
        stop_rules: StopRules | None,
        zoom: ZoomSettings | None,
        crop_embeddings: CropEmbeddings | None,
    ) -> None:
        self.model, self.volume, self.prompts, self.backend = model, volume, prompts, backend
        self.window_override, self.progress, self.embeddings_for = window, progress, embeddings_for
        self.stop = _StopFlag(cancel)
        self.stop_rules, self.zoom = stop_rules, zoom
        self.predictor = SlicePredictor(backend, zoom=zoom, crop_embeddings=crop_embeddings)
        self.outcome = ReplayOutcome()
        self._stores: dict[tuple[str, int], SliceEmbeddings] = {}
        self._windows: dict[str, Window] = {}
        #: object id -> the model its runs use (an adaptation's, else the base model)
        self._backends: dict[int, Backend] = {}
        #: object id -> its window spec as its ``window`` steps set it
        self._object_windows: dict[int, Any] = {}
        self.finished = 0
        self.estimates: dict[int, int] = {}

    # -------------------------------------------------------------- helpers
    def report(self, message: str) -> None:
        if self.progress:
            self.progress(Progress(self.finished, self.finished + sum(self.estimates.values()), message))

    def store(self, win: Window, axis: int) -> SliceEmbeddings:
        key = (win.key(), axis)
        if key not in self._stores:
            self._stores[key] = (
                self.embeddings_for(win, axis)
                if self.embeddings_for
                else SliceEmbeddings(self.backend, self.volume.array, win, axis)
            )
        return self._stores[key]

    def window_of(self, obj: ObjectPrompts) -> Window:
        """Resolved once per distinct window spec (a stepped object's ``window`` step changes its own)."""
        own = self._object_windows.get(obj.id, obj.window)
        spec = _chosen_spec(own, self.prompts.window, self.window_override)
        key = repr(spec)
        if key not in self._windows:
            self._windows[key] = _resolved(self.volume, spec)
        self.outcome.windows[obj.id] = self._windows[key]
        return self._windows[key]

    def cancelled(self) -> bool:
        if self.outcome.cancelled or self.stop.is_set():
            self.outcome.cancelled = True
        return self.outcome.cancelled

    def decode(self, obj: ObjectPrompts, z: int, prompt: SlicePrompt, zoom_key: bool = False) -> None:
        """Decode one key slice by the one key-slice rule and commit it. zoom_key: a
        small box the slice explains poorly is also answered on a magnified crop
        (:func:`decode_key`'s ``crop_embedding``), as the widget's preview does:
        propagated objects and replayed session commits; plain objects are decoded
        in batches, one crop embedding per box would cost them dearly."""
        win = self.window_of(obj)
        store = self.store(win, obj.axis)
        self.predictor.set_embedding(store.get(z), image=store.model_input(z) if self.zoom is not None else None)
        previous = self.model.previous_for(obj.id, obj.axis, z, prompt)
        crops = (lambda c: store.get(z, c)) if zoom_key else None
        pred = decode_key(self.predictor, prompt, previous, self.model.key_choice, crops)
        exact = pred.crop is None
        self.model.commit(obj.id, z, prompt, pred.mask, axis=obj.axis, exact=exact, window=(win.lo, win.hi))

    @staticmethod
    def never_empty(box, mask) -> Any:
        """A batched "box_fit" key mask, never empty for a box the user drew (as
        :func:`napari_sam.candidates.box_fit_key`): the box's inscribed ellipse."""
        full = as_mask(mask)
        return mask if full.any() else CroppedMask.of(box_ellipse(box, full.shape))

    def guarded(self, emb, boxes: list, masks: list[CroppedMask]) -> list[Any]:
        """Batched key masks under "single_fit" with decode_key's guard (:func:`uses_box_fit`):
        a box whose single answer explains less than half of it takes the "box_fit" mask."""
        poor = [
            i
            for i, (b, m) in enumerate(zip(boxes, masks))
            if uses_box_fit(
                self.model.key_choice,
                m.crop,
                (b[0] - m.offset[0], b[1] - m.offset[1], b[2] - m.offset[0], b[3] - m.offset[1]),
            )
        ]
        out: list[Any] = list(masks)
        for i, m in zip(poor, decode_boxes(self.backend, emb, [boxes[i] for i in poor], box_fit=True)):
            out[i] = self.never_empty(boxes[i], m)
        return out

    # -------------------------------------------------------------- the steps
    def plain_objects(self, objects: list[ObjectPrompts]) -> None:
        """Objects that are not propagated: box-only prompts in batches per slice, the rest one by one."""
        groups: dict[tuple, list[tuple[ObjectPrompts, int, SlicePrompt]]] = {}
        # Batched boxes follow the key-slice rule of decode_key: under "box_fit" the mask
        # that explains the box best among the model's single output and its candidates;
        # under "single_fit" (CT) too where the single output explains less than half of its box.
        batch = self.zoom is None
        box_fit = self.model.key_choice == "box_fit"
        for o in objects:
            win = self.window_of(o)
            for z, p in sorted(merge_slice_prompts(o.prompts).items()):
                key = (win.key(), o.axis, z) if batch and is_plain_box(p) else ("", -1 - len(groups), z)
                groups.setdefault(key, []).append((o, z, p))
        self.estimates[0] = sum(len(g) for g in groups.values())
        for (_wkey, axis, z), items in groups.items():
            if self.cancelled():
                return
            obj0 = items[0][0]
            self.report(f"{obj0.name}: slice {z}" if len(items) == 1 else f"{len(items)} objects: slice {z}")
            if axis >= 0:
                win0 = self.window_of(obj0)
                emb = self.store(win0, obj0.axis).get(z)
                boxes = [p.box for _, _, p in items]
                masks = decode_boxes(self.backend, emb, boxes, box_fit=box_fit)
                for (o, _, p), mask in zip(items, masks if box_fit else self.guarded(emb, boxes, masks)):
                    mask = self.never_empty(p.box, mask) if box_fit else mask
                    self.model.commit(o.id, z, p, mask, axis=o.axis, exact=True, window=(win0.lo, win0.hi))
            else:
                self.decode(obj0, z, items[0][2])
            self.estimates[0] -= len(items)
            self.finished += len(items)

    def propagated_object(self, obj: ObjectPrompts) -> None:
        """Key slices, propagation, adaptation and corrections of one object."""
        for z, p in sorted(merge_slice_prompts(obj.prompts).items()):
            self.decode(obj, z, p, zoom_key=True)
        state = self.model.object(obj.id).state
        if state is None or not state.key_slices:
            return
        self.estimates[obj.id] = state.n_slices
        propagator = Propagator(
            self.backend,
            self.store(self.window_of(obj), obj.axis),
            rules=self.stop_rules,
            key_choice=self.model.key_choice,
        )
        self.run(obj, self.model.propagation(obj.id, propagator))
        if obj.adapt and not state.needs_run and not self.cancelled():
            run = self.model.adaptation(obj.id, propagator)
            self.run(obj, run)
            if run.adapted is not None:  # the corrections use the adapted model, as in the widget
                propagator = Propagator(
                    run.adapted, propagator.embeddings, rules=self.stop_rules, key_choice=propagator.key_choice
                )
        for point, label in obj.corrections:
            if self.cancelled() or state.needs_run:
                break
            self.report(f"{obj.name}: correction at {tuple(point)}")
            self.run(obj, self.model.correction(obj.id, Correction(tuple(point), label), propagator))
        self.estimates[obj.id] = 0
        if state.needs_run:
            self.outcome.cancelled = True

    def run(self, obj: ObjectPrompts, run, events: int | None = None) -> None:
        """Drive ``run`` to its end (``events``: stop it after that many, as the
        session's cancelled run stopped)."""
        base = self.finished

        def on_event(event: Progress) -> None:
            self.finished = base + event.done
            self.estimates[obj.id] = max(0, event.total - event.done)
            self.report(f"{obj.name}: {event.stage}")

        stop = self.stop if events is None else _StopFlag(lambda: run.events >= events or self.stop.is_set())
        self.model.run_to_end(run, on_event, stop)  # type: ignore[arg-type]

    def propagator_for(self, obj: ObjectPrompts) -> Propagator:
        """A propagator on the object's current window, with its model (the base model until
        an adaptation replaces it)."""
        store = self.store(self.window_of(obj), obj.axis)
        backend = self._backends.get(obj.id, self.backend)
        return Propagator(backend, store, rules=self.stop_rules, key_choice=self.model.key_choice)

    def stepped_object(self, obj: ObjectPrompts) -> None:
        """An object given by its ``"steps"``: the session's actions, in order."""
        self.estimates[obj.id] = len(obj.steps or ())
        self._object_windows[obj.id] = obj.window
        for st in obj.steps or ():
            if self.cancelled():
                return
            self.report(f"{obj.name}: {st.kind}" + (f" slice {st.index}" if st.index is not None else ""))
            self.step(obj, st)
            self.estimates[obj.id] -= 1
        self.estimates[obj.id] = 0

    def step(self, obj: ObjectPrompts, st: Step) -> None:
        """Replay one action of a session on ``obj``."""
        m, oid = self.model, obj.id
        if st.kind == "commit" and st.defer:
            m.commit(oid, st.index, st.prompt, None, axis=obj.axis)  # type: ignore[arg-type]
        elif st.kind == "commit" and st.mask is None and not st.prompt.only_negative:
            self.decode(obj, st.index, st.prompt, zoom_key=True)  # type: ignore[arg-type]
        elif st.kind == "commit":
            m.commit(oid, st.index, st.prompt, st.mask, axis=obj.axis, exact=False)  # type: ignore[arg-type]
        elif st.kind == "paint":
            m.paint_slice(oid, st.index, st.mask, axis=obj.axis)  # type: ignore[arg-type]
        elif st.kind == "settle":
            m.settle(oid)
        elif st.kind == "range":
            m.set_range(oid, st.rng, axis=obj.axis)
        elif st.kind == "propagate":
            self.run(obj, m.propagation(oid, self.propagator_for(obj)), st.events)
        elif st.kind == "adapt":
            weights = read_weights(st.weights) if isinstance(st.weights, Path) else st.weights
            run = m.adaptation(oid, self.propagator_for(obj), steps=st.steps, weights=weights)
            self.run(obj, run, st.events)
            if run.adapted is not None:  # the object's later runs use the adapted model, as in the session
                self._backends[oid] = run.adapted
        elif st.kind == "window":
            self._object_windows[oid] = st.window
        else:
            self.run(obj, m.correction(oid, Correction(st.point, st.label), self.propagator_for(obj)))  # type: ignore


def replay(
    model: Annotation,
    volume: Volume,
    prompts: PromptsFile,
    backend: Backend,
    window: Any = None,
    progress: ProgressCallback | None = None,
    embeddings_for: Callable[[Window, int], Any] | None = None,
    cancel: Any = None,
    stop_rules: StopRules | None = None,
    zoom: ZoomSettings | None = None,
    crop_embeddings: CropEmbeddings | None = None,
    init_masks: dict[int, dict[int, np.ndarray]] | None = None,
) -> ReplayOutcome:
    """Replay ``prompts`` through ``model`` (an empty :class:`Annotation` of ``volume``'s shape).

    Arguments as :func:`napari_sam.segmentation.segment_volume`. The objects are
    added in the file's order (which breaks exact ties of the overlap rule);
    ``init_masks`` (id -> {slice -> mask}) become key slices first, except where
    a propagated object has a prompt. The model then holds the objects, their
    states and the label map; the whole replay is one undo step.
    """
    prompts.check_against(volume.array.shape, volume.is_2d)
    job = _Replay(
        model, volume, prompts, backend, window, progress, embeddings_for, cancel, stop_rules, zoom, crop_embeddings
    )
    init_masks = init_masks or {}
    # One undoable step: an object made in the step has no "before" snapshot to keep,
    # so 10,000 box objects keep one (frozen) snapshot each besides themselves.
    with model.batch("prompts file"):
        for o in prompts.objects:
            model.add_object(o.name, o.color, object_id=o.id, axis=o.axis)
            if o.range is not None:
                model.set_range(o.id, o.range)
            prompted = set(merge_slice_prompts(o.prompts)) if o.propagate else set()
            masks = {z: m for z, m in init_masks.get(o.id, {}).items() if z not in prompted}
            if masks:
                model.load_masks(o.id, masks, axis=o.axis, up_to_date=False)
        with decoding():  # decoder work on one thread (napari_sam.torch_threads)
            job.plain_objects([o for o in prompts.objects if not o.propagate and o.steps is None])
            for o in prompts.objects:
                if o.steps is not None and not job.cancelled():
                    job.stepped_object(o)
                elif o.propagate and not job.cancelled():
                    job.window_of(o)
                    job.propagated_object(o)
    if progress:
        progress(Progress(job.finished, job.finished, "cancelled" if job.outcome.cancelled else "done"))
    return job.outcome
