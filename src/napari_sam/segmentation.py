"""Segment a volume from a prompts file: the job behind ``napari-sam segment``.

Each object's prompted slices are segmented with the :class:`SlicePredictor`;
an object with ``"propagate": true`` is propagated through the volume from
its prompted slices along its ``axis``, within its optional ``range``
(:mod:`napari_sam.propagation`). All objects go into one label map on the
image's grid.

Overlaps (several objects claiming a voxel) are resolved by one
deterministic rule, :func:`paint_objects`:

1. slices the user prompted (key slices) beat propagated slices: a voxel
   inside an object's mask on one of its own prompted slices goes to that
   object even if another object's propagation reached it first;
2. within the same tier, the object listed first in the prompts file wins.

So the result does not depend on the order objects were computed in, and a
user's prompt is never painted over by another object's propagation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .cache import SliceEmbeddings, slice_along
from .errors import InputError
from .intensity import Window, resolve_window
from .io import Volume
from .models.base import Backend
from .predictor import SlicePredictor
from .prompts import ObjectPrompts, PromptsFile, SlicePrompt
from .propagation import Cancel, PropagationState, Propagator, StopRules
from .zoom import CropEmbeddings, ZoomSettings

#: progress callback: (done, total, message)
Progress = Callable[[int, int, str], None]


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


@dataclass
class ObjectMasks:
    """One object's masks before painting: ``masks`` slice -> (rows, cols) bool
    along ``axis``; ``key_slices``: the slices the user prompted."""

    id: int
    axis: int
    masks: dict[int, np.ndarray]
    key_slices: set[int]


def paint_objects(shape: tuple[int, int, int], objects: list[ObjectMasks]) -> np.ndarray:
    """Paint objects into one (z, y, x) uint16 label map by the overlap rule of
    this module: key-slice masks first (in list order, first wins), then
    propagated masks into the voxels still free (in list order, first wins)."""
    labels = np.zeros(shape, dtype=np.uint16)
    for tier_key in (True, False):
        for obj in objects:
            for z in sorted(obj.masks):
                if (z in obj.key_slices) != tier_key:
                    continue
                target = slice_along(labels, obj.axis, z)  # a view: painting writes into labels
                target[obj.masks[z] & (target == 0)] = obj.id
    return labels


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


def segment_volume(volume: Volume, prompts: PromptsFile, backend: Backend, window=None,
                   progress: Progress | None = None,
                   embeddings_for: Callable[[Window, int], SliceEmbeddings] | None = None,
                   cancel: Cancel | None = None, stop_rules: StopRules | None = None,
                   zoom: ZoomSettings | None = None, crop_embeddings: CropEmbeddings | None = None,
                   init_masks: dict[int, dict[int, np.ndarray]] | None = None) -> SegmentationResult:
    """Segment every prompted slice of every object; propagate the objects that ask for it.

    window: overrides every object's window (CLI ``--window``).
    progress: (done, total, message) over the whole job.
    embeddings_for: (window, axis) -> SliceEmbeddings, to share or cache
        embeddings (e.g. on disk); by default a fresh in-memory one per
        window and axis.
    cancel: a callable returning True, or a threading.Event: stops between
        slices; the result then holds what was finished and ``cancelled`` is True.
    stop_rules: propagation stop rules (default :class:`StopRules()`).
    zoom: decode the prompts of small objects on unpropagated slices on a
        magnified crop (:mod:`napari_sam.zoom`); crop_embeddings: where those
        crops' embeddings are kept (e.g. on disk).
    init_masks: id -> {slice -> (rows, cols) bool mask along the object's
        axis}: key slices taken as they are (an existing segmentation,
        :mod:`napari_sam.init_labels`); a prompt on the same slice wins.
    """
    from .propagation import _is_set

    prompts.check_against(volume.array.shape, volume.is_2d)
    if volume.is_rgb and any(o.propagate for o in prompts.objects):
        raise InputError("propagation needs a 3D image; this one is a 2D RGB image")
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
            progress(finished, finished + plain_left + sum(estimates.values()), message)

    masks: dict[int, ObjectMasks] = {o.id: ObjectMasks(o.id, o.axis, {}, set()) for o in prompts.objects}
    for o in prompts.objects:
        if not o.propagate:
            masks[o.id].masks.update({z: np.asarray(m, bool) for z, m in init_masks.get(o.id, {}).items()})
            masks[o.id].key_slices.update(init_masks.get(o.id, {}))
    predictor = SlicePredictor(backend, zoom=zoom, crop_embeddings=crop_embeddings)
    for obj, z, prompt in plain:
        if _is_set(cancel):
            result.cancelled = True
            break
        win = object_window(volume, obj, prompts.window, window)
        result.windows[obj.id] = win
        report(f"{obj.name}: slice {z}")
        emb_store = store(win, obj.axis)
        predictor.set_embedding(emb_store.get(z), image=emb_store.model_input(z) if zoom is not None else None)
        mask = predictor.predict(prompt=prompt, multimask=False).mask
        masks[obj.id].masks[z] = mask
        masks[obj.id].key_slices.add(z)
        plain_left -= 1
        finished += 1
    for obj in propagated:
        if result.cancelled or _is_set(cancel):
            result.cancelled = True
            break
        win = object_window(volume, obj, prompts.window, window)
        result.windows[obj.id] = win
        state = states[obj.id]
        base = finished

        def obj_progress(done: int, total: int, message: str, _name=obj.name, _id=obj.id, _base=base) -> None:
            nonlocal finished
            finished = _base + done
            estimates[_id] = total - done
            report(f"{_name}: {message}")

        Propagator(backend, store(win, obj.axis), rules=stop_rules).propagate(state, obj_progress, cancel)
        estimates[obj.id] = 0
        if state.needs_run:
            result.cancelled = True
        result.states[obj.id] = state
        masks[obj.id] = ObjectMasks(obj.id, obj.axis, {z: m for z, m in state.results.items() if m.any()},
                                    set(state.key_slices))
    result.labels = paint_objects(volume.shape, [masks[o.id] for o in prompts.objects])
    for o in prompts.objects:
        present = [z for z, m in masks[o.id].masks.items() if m.any()] if o.propagate else sorted(masks[o.id].masks)
        if present:
            result.slices[o.id] = sorted(present)
    if progress:
        progress(finished, finished, "cancelled" if result.cancelled else "done")
    return result
