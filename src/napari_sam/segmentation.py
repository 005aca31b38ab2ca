"""Segment a volume from a prompts file: the job behind ``napari-sam segment``.

Each object's prompted slices are segmented with the :class:`SlicePredictor`;
an object with ``"propagate": true`` is propagated through the volume from
its prompted slices along its ``axis``, within its optional ``range``
(:mod:`napari_sam.propagation`). All objects go into one label map on the
image's grid.

Overlaps (several objects claiming a voxel) are resolved per voxel by the one
rule of :mod:`napari_sam.overlaps`: slices
the user prompted beat propagated ones; otherwise the object holding the
voxel deepest (mm from its mask's boundary) wins; ties go to the object
listed first. A user's prompt is never painted over by another object's
propagation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .box_batches import decode_boxes, is_plain_box
from .embeddings import CropEmbeddings, SliceEmbeddings
from .corrections import Correction, apply_corrections
from .finetune.adapt import adapt_to_slices
from .intensity import Window, looks_like_hounsfield, resolve_window
from .io import Volume
from .models.base import Backend
from .overlaps import ObjectMasks, resolve_overlaps
from .predictor import SlicePredictor
from .prompts import ObjectPrompts, PromptsFile, SlicePrompt
from .jobs import Cancel, Progress, ProgressCallback
from .propagation import PropagationState, Propagator, StopRules
from .zoom import ZoomSettings


@dataclass
class SegmentationResult:
    """labels: (z, y, x) uint16 on the image grid; names/colors per id;
    slices: id -> sorted slice indices (along the object's axis) holding the
    object; windows: id -> Window used; states: id -> the PropagationState of
    each propagated object (key slices, results, stop decisions);
    cancelled: True when a cancel request stopped the run early (the labels
    then hold what was finished)."""

    labels: np.ndarray
    names: dict[int, str]
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    slices: dict[int, list[int]] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    states: dict[int, PropagationState] = field(default_factory=dict)
    cancelled: bool = False


def paint_objects(shape: tuple[int, int, int], objects: list[ObjectMasks],
                  spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Paint objects into one (z, y, x) uint16 label map, overlaps resolved per
    voxel by :func:`napari_sam.overlaps.resolve_overlaps` (key slices first,
    then the deepest claim in mm, ties to the object listed first)."""
    return resolve_overlaps(shape, objects, spacing_zyx)


def merge_slice_prompts(prompts: list[SlicePrompt]) -> dict[int, SlicePrompt]:
    """Group an object's prompts by slice; prompts on the same slice are merged
    (all clicks together, the last box given)."""
    by_slice: dict[int, SlicePrompt] = {}
    for p in prompts:
        z = 0 if p.slice is None else p.slice
        if z in by_slice:
            old = by_slice[z]
            by_slice[z] = SlicePrompt(points=np.concatenate([old.points, p.points]),
                                      labels=np.concatenate([old.labels, p.labels]),
                                      box=p.box if p.box is not None else old.box, slice=z)
        else:
            by_slice[z] = SlicePrompt(points=p.points, labels=p.labels, box=p.box, slice=z)
    return by_slice


def is_ct(volume: Volume) -> bool:
    """Whether ``volume`` is CT: its DICOM modality says so, or, without one,
    a grey image whose values look like Hounsfield units."""
    modality = volume.metadata.get("modality")
    return (modality or "").upper() == "CT" or (
        modality is None and not volume.is_rgb and looks_like_hounsfield(volume.array))


def key_choice_for(volume: Volume) -> str:
    """How box key slices pick their mask (:class:`Propagator`'s ``key_choice``):
    the model's single output on CT (where it is the better one: see
    docs/propagation.md), the candidate that best explains the box elsewhere
    (MR: the IoU head is uncalibrated there and the single output often takes
    a sub-part of the object)."""
    return "single" if is_ct(volume) else "box_fit"


def object_window(volume: Volume, obj: ObjectPrompts, file_window=None, override=None) -> Window:
    """The window for one object: --window, else the object's, else the file's, else automatic."""
    spec = override if override is not None else (obj.window if obj.window is not None else file_window)
    return resolve_window(volume.array, spec, volume.metadata.get("modality"), volume.metadata.get("dicom_window"))


def state_for_object(obj: ObjectPrompts, shape: tuple[int, int, int]) -> PropagationState:
    """A :class:`PropagationState` for a propagated object: its prompts as key
    slices (prompts on the same slice merged), its axis and range."""
    state = PropagationState(shape=shape, axis=obj.axis, range=obj.range)
    for z, p in sorted(merge_slice_prompts(obj.prompts).items()):
        state.add_prompt(z, p)
    return state


def _adapt_and_repropagate(backend: Backend, embeddings: SliceEmbeddings, state: PropagationState,
                           stop_rules: StopRules | None, progress: ProgressCallback, cancel: Cancel | None,
                           key_choice: str = "single") -> None:
    """``"adapt": true``: adapt a copy of the model to the object's key-slice masks
    (:mod:`napari_sam.finetune.adapt`), then propagate the object again with it."""
    keys = {k: state.results[k] for k in state.key_slices if k in state.results and state.results[k].any()}
    if not keys:
        return
    adapted = adapt_to_slices(backend, embeddings, keys, cancel=cancel).backend
    state.mark_all()
    Propagator(adapted, embeddings, rules=stop_rules, key_choice=key_choice).propagate(state, progress, cancel)


def segment_volume(volume: Volume, prompts: PromptsFile, backend: Backend, window=None,
                   progress: ProgressCallback | None = None,
                   embeddings_for: Callable[[Window, int], SliceEmbeddings] | None = None,
                   cancel: Cancel | None = None, stop_rules: StopRules | None = None,
                   zoom: ZoomSettings | None = None, crop_embeddings: CropEmbeddings | None = None,
                   init_masks: dict[int, dict[int, np.ndarray]] | None = None) -> SegmentationResult:
    """Segment every prompted slice of every object; propagate the objects that ask for it.

    window: overrides every object's window (CLI ``--window``).
    progress: called with a :class:`napari_sam.jobs.Progress` event per step of the whole job.
    embeddings_for: (window, axis) -> SliceEmbeddings, to share or cache
        embeddings (e.g. on disk); by default a fresh in-memory one per
        window and axis.
    cancel: a :class:`napari_sam.jobs.Cancel` token (a threading.Event): stops
        between slices; the result then holds what was finished and ``cancelled`` is True.
    stop_rules: propagation stop rules (default :class:`StopRules()`).
    zoom: decode the prompts of small objects on unpropagated slices on a
        magnified crop (:mod:`napari_sam.zoom`); crop_embeddings: where those
        crops' embeddings are kept (e.g. on disk).
    init_masks: id -> {slice -> (rows, cols) bool mask along the object's
        axis}: key slices taken as they are (an existing segmentation,
        :mod:`napari_sam.init_labels`); a prompt on the same slice wins.
    """
    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    prompts.check_against(volume.array.shape, volume.is_2d)
    result = SegmentationResult(labels=np.zeros(volume.shape, np.uint16),
                                names={o.id: o.name for o in prompts.objects},
                                colors={o.id: o.color for o in prompts.objects if o.color})
    stores: dict[tuple[str, int], SliceEmbeddings] = {}

    def store(win: Window, axis: int) -> SliceEmbeddings:
        key = (win.key(), axis)
        if key not in stores:
            stores[key] = embeddings_for(win, axis) if embeddings_for else SliceEmbeddings(
                backend, volume.array, win, axis)
        return stores[key]

    plain = [(o, z, p) for o in prompts.objects if not o.propagate
             for z, p in sorted(merge_slice_prompts(o.prompts).items())]
    propagated = [o for o in prompts.objects if o.propagate]
    states = {o.id: state_for_object(o, volume.shape) for o in propagated}
    init_masks = init_masks or {}
    for o in propagated:
        for z, m in sorted(init_masks.get(o.id, {}).items()):
            if z not in states[o.id].prompts:
                states[o.id].set_user_mask(z, m)
    # progress: one unit per plain slice; each propagated object's run adds its own estimate
    finished = 0
    plain_left = len(plain)
    estimates = {o.id: len(states[o.id].key_slices) + states[o.id].n_slices for o in propagated}

    def report(message: str) -> None:
        if progress:
            progress(Progress(finished, finished + plain_left + sum(estimates.values()), message))

    masks: dict[int, ObjectMasks] = {o.id: ObjectMasks(o.id, o.axis, {}, set()) for o in prompts.objects}
    for o in prompts.objects:
        if not o.propagate:
            masks[o.id].masks.update({z: np.asarray(m, bool) for z, m in init_masks.get(o.id, {}).items()})
            masks[o.id].key_slices.update(init_masks.get(o.id, {}))
    predictor = SlicePredictor(backend, zoom=zoom, crop_embeddings=crop_embeddings)
    windows: dict[str, Window] = {}

    def window_of(obj: ObjectPrompts) -> Window:  # resolved once per distinct window spec
        spec = window if window is not None else (obj.window if obj.window is not None else prompts.window)
        key = repr(spec)
        if key not in windows:
            windows[key] = object_window(volume, obj, prompts.window, window)
        return windows[key]

    # box-only prompts (no zoom) are decoded in batches per slice; the rest one by one
    groups: dict[tuple[str, int, int], list[tuple[ObjectPrompts, int, SlicePrompt]]] = {}
    for item in plain:
        obj, z, prompt = item
        win = result.windows[obj.id] = window_of(obj)
        batchable = zoom is None and is_plain_box(prompt)
        groups.setdefault((win.key(), obj.axis, z) if batchable else ("", -1 - len(groups), z), []).append(item)
    for (wkey, axis, z), items in groups.items():
        if cancelled():
            result.cancelled = True
            break
        obj0 = items[0][0]
        report(f"{obj0.name}: slice {z}" if len(items) == 1 else f"{len(items)} objects: slice {z}")
        emb_store = store(result.windows[obj0.id], obj0.axis)
        if axis >= 0:
            found = decode_boxes(backend, emb_store.get(z), [p.box for _, _, p in items])
        else:
            predictor.set_embedding(emb_store.get(z), image=emb_store.model_input(z) if zoom is not None else None)
            found = [predictor.predict(prompt=items[0][2], multimask=False).mask]
        for (obj, _, _), mask in zip(items, found):
            masks[obj.id].masks[z] = mask
            masks[obj.id].key_slices.add(z)
        plain_left -= len(items)
        finished += len(items)
    for obj in propagated:
        if result.cancelled or cancelled():
            result.cancelled = True
            break
        win = window_of(obj)
        result.windows[obj.id] = win
        state = states[obj.id]
        base = finished

        def obj_progress(event: Progress, _name=obj.name, _id=obj.id, _base=base) -> None:
            nonlocal finished
            finished = _base + event.done
            estimates[_id] = event.total - event.done
            report(f"{_name}: {event.stage}")

        propagator = Propagator(backend, store(win, obj.axis), rules=stop_rules, key_choice=key_choice_for(volume))
        propagator.propagate(state, obj_progress, cancel)
        if obj.adapt and not state.needs_run and not cancelled():
            _adapt_and_repropagate(backend, store(win, obj.axis), state, stop_rules, obj_progress, cancel,
                                   propagator.key_choice)
        if obj.corrections and not state.needs_run and not cancelled():
            report(f"{obj.name}: {len(obj.corrections)} correction(s)")
            apply_corrections(state, propagator, [Correction(p, lab) for p, lab in obj.corrections],
                              spacing_zyx=volume.geometry.scale_zyx)
        estimates[obj.id] = 0
        if state.needs_run:
            result.cancelled = True
        result.states[obj.id] = state
        masks[obj.id] = ObjectMasks(obj.id, obj.axis, {z: m for z, m in state.results.items() if m.any()},
                                    set(state.key_slices))
    result.labels = paint_objects(volume.shape, [masks[o.id] for o in prompts.objects],
                                   volume.geometry.scale_zyx)
    for o in prompts.objects:
        present = [z for z, m in masks[o.id].masks.items() if m.any()] if o.propagate else sorted(masks[o.id].masks)
        if present:
            result.slices[o.id] = sorted(present)
    if progress:
        progress(Progress(finished, finished, "cancelled" if result.cancelled else "done"))
    return result
