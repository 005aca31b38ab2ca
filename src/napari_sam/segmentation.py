"""Segment a volume from a prompts file: the job behind ``napari-sam segment``.

The prompts file is replayed through the annotation model
(:func:`napari_sam.annotation.replay.replay`): each object is added, its
prompted slices committed (decoded by the one key-slice rule the widget
previews with), propagated along its ``axis`` within its optional ``range``
when it asks for it, adapted and corrected, exactly as a user does in the
widget; the label map is the model's. So the widget and the command line
give the same label map for the same prompts.

Overlaps (several objects claiming a voxel) are resolved per voxel by the one
rule of :mod:`napari_sam.overlaps`: slices the user prompted beat propagated
ones; otherwise the object holding the voxel deepest (mm from its mask's
boundary) wins; ties go to the object listed first. A user's prompt is never
painted over by another object's propagation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .annotation import Annotation
from .annotation.model import MAX_UNDO
from .annotation.replay import merge_slice_prompts, object_window, replay
from .embeddings import CropEmbeddings, SliceEmbeddings
from .intensity import Window, looks_like_hounsfield
from .io import Volume
from .jobs import ProgressCallback
from .models.base import Backend
from .overlaps import ObjectMasks, resolve_overlaps
from .prompts import ObjectPrompts, PromptsFile
from .propagation import PropagationState, StopRules
from .zoom import ZoomSettings

__all__ = [
    "SegmentationResult",
    "segment_volume",
    "paint_objects",
    "merge_slice_prompts",
    "is_ct",
    "key_choice_for",
    "object_window",
    "state_for_object",
]


@dataclass
class SegmentationResult:
    """labels: (z, y, x) uint16 on the image grid; names/colors per id;
    slices: id -> sorted slice indices (along the object's axis) holding the
    object; windows: id -> Window used; states: id -> the PropagationState of
    each propagated object (key slices, results, stop decisions);
    cancelled: True when a cancel request stopped the run early (the labels
    then hold what was finished); annotation: the model the prompts were
    replayed through (to continue the session, e.g. in the widget)."""

    labels: np.ndarray
    names: dict[int, str]
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    slices: dict[int, list[int]] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    states: dict[int, PropagationState] = field(default_factory=dict)
    cancelled: bool = False
    annotation: Annotation | None = None


def paint_objects(
    shape: tuple[int, int, int], objects: list[ObjectMasks], spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Paint objects into one (z, y, x) uint16 label map, overlaps resolved per
    voxel by :func:`napari_sam.overlaps.resolve_overlaps` (key slices first,
    then coinciding and nested masks, then the relatively deepest claim, ties to the object listed first)."""
    return resolve_overlaps(shape, objects, spacing_zyx)


def is_ct(volume: Volume) -> bool:
    """Whether ``volume`` is CT: its DICOM modality says so, or, without one,
    a grey image whose values look like Hounsfield units."""
    modality = volume.metadata.get("modality")
    return (modality or "").upper() == "CT" or (
        modality is None and not volume.is_rgb and looks_like_hounsfield(volume.array)
    )


def key_choice_for(volume: Volume) -> str:
    """How box key slices pick their mask (:func:`napari_sam.annotation.decode_key`):
    the model's single output on 2D images; on CT the single output too (the
    better one there: see docs/propagation.md) unless it explains less than half
    of the box ("single_fit", :func:`napari_sam.candidates.uses_box_fit`); the
    candidate that best explains the box on other volumes (MR: the IoU head is
    uncalibrated there and the single output often takes a sub-part of the object)."""
    if volume.is_2d:
        return "single"
    return "single_fit" if is_ct(volume) else "box_fit"


def state_for_object(obj: ObjectPrompts, shape: tuple[int, int, int]) -> PropagationState:
    """A :class:`PropagationState` for a propagated object: its prompts as key
    slices (prompts on the same slice merged), its axis and range."""
    state = PropagationState(shape=shape, axis=obj.axis, range=obj.range)
    for z, p in sorted(merge_slice_prompts(obj.prompts).items()):
        state.add_prompt(z, p)
    return state


def annotation_for(volume: Volume, max_undo: int = MAX_UNDO) -> Annotation:
    """An empty annotation of ``volume`` (its shape, spacing and key-slice rule)."""
    return Annotation(
        volume.shape,
        volume.geometry.scale_zyx,
        is_2d=volume.is_2d,
        key_choice=key_choice_for(volume),
        max_undo=max_undo,
    )


def segment_volume(
    volume: Volume,
    prompts: PromptsFile,
    backend: Backend,
    window=None,
    progress: ProgressCallback | None = None,
    embeddings_for: Callable[[Window, int], SliceEmbeddings] | None = None,
    cancel=None,
    stop_rules: StopRules | None = None,
    zoom: ZoomSettings | None = None,
    crop_embeddings: CropEmbeddings | None = None,
    init_masks: dict[int, dict[int, np.ndarray]] | None = None,
    undo: bool = True,
) -> SegmentationResult:
    """Segment every prompted slice of every object; propagate the objects that ask for it.

    window: overrides every object's window (CLI ``--window``).
    progress: called with a :class:`napari_sam.jobs.Progress` event per step of the whole job.
    embeddings_for: (window, axis) -> SliceEmbeddings, to share or cache
        embeddings (e.g. on disk); by default a fresh in-memory one per
        window and axis.
    cancel: a callable returning True, or a threading.Event (a
        :class:`napari_sam.jobs.Cancel`): stops between slices; the result
        then holds what was finished and ``cancelled`` is True.
    stop_rules: propagation stop rules (default :class:`StopRules()`).
    zoom: decode the prompts of small objects on a magnified crop
        (:mod:`napari_sam.zoom`), as the widget does; crop_embeddings: where
        those crops' embeddings are kept (e.g. on disk).
    init_masks: id -> {slice -> (rows, cols) bool mask along the object's
        axis}: key slices taken as they are (an existing segmentation,
        :mod:`napari_sam.init_labels`); a prompt on the same slice wins.
    undo: the result's ``annotation`` can undo the replay (one step); False keeps
        no undo history, so no snapshot of every object (the command line).
    """
    model = annotation_for(volume, MAX_UNDO if undo else 0)
    outcome = replay(
        model,
        volume,
        prompts,
        backend,
        window=window,
        progress=progress,
        embeddings_for=embeddings_for,
        cancel=cancel,
        stop_rules=stop_rules,
        zoom=zoom,
        crop_embeddings=crop_embeddings,
        init_masks=init_masks,
    )
    return _result_of(model, prompts, outcome.windows, outcome.cancelled)


def _result_of(
    model: Annotation, prompts: PromptsFile, windows: dict[int, Window], cancelled: bool
) -> SegmentationResult:
    """What :func:`segment_volume` returns once the replay of ``prompts`` into ``model``
    ended: the label map, each object's name, colour, propagation state (when it
    propagates) and the slices holding it."""
    result = SegmentationResult(
        labels=np.array(model.labels),
        names={o.id: o.name for o in prompts.objects},
        colors={o.id: o.color for o in prompts.objects if o.color},
        windows=windows,
        cancelled=cancelled,
        annotation=model,
    )
    for o in prompts.objects:
        obj = model.object(o.id)
        if o.propagate and obj.state is not None:
            result.states[o.id] = obj.state
        present = obj.slices_holding() if o.propagate else sorted(obj.state.results) if obj.state else []
        if present:
            result.slices[o.id] = present
    return result
