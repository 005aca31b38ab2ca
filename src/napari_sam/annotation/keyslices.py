"""Key slices: the one rule that decodes a key slice's prompt, and the changes a key slice makes.

:func:`decode_key` is what the widget previews and what the prompts-file
replay commits, so that the same prompt gives the same key mask in both.
:func:`key_op` and :func:`paint_op` are the changes to an object's
:class:`~napari_sam.propagation.PropagationState` that a commit and a paint
stroke make; the annotation applies them (and queues them for a run in
progress on the object).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..candidates import KEY_CHOICES, box_fit_key, uses_box_fit
from ..errors import InputError
from ..geometry import Crop
from ..models.base import Embedding
from ..predictor import Prediction, SlicePredictor
from ..prompts import SlicePrompt
from ..propagation import PropagationState, SliceInfo
from ..zoom import zoomed_box_outputs
from .runs import StateOp

__all__ = ["decode_key", "key_op", "paint_op", "KEY_CHOICES"]


def decode_key(
    predictor: SlicePredictor,
    prompt: SlicePrompt,
    previous: np.ndarray | None = None,
    key_choice: str = "single",
    crop_embedding: Callable[[Crop], Embedding] | None = None,
) -> Prediction:
    """Candidate masks for a key slice's ``prompt``, the key mask first.

    predictor: holds the slice's embedding (and its pixels when it zooms);
    previous: the (rows, cols) bool mask that clicks refine
    (:meth:`Annotation.previous_for`); key_choice: "single", the model's
    answer as ranked by the predictor; "single_fit", that answer unless it
    explains less than half of a box alone (then as "box_fit",
    :func:`napari_sam.candidates.uses_box_fit`); "box_fit", for a box alone, the
    candidate (the single answer and the predictor's others) that explains
    the box best (:func:`napari_sam.candidates.box_fit_prediction`; the
    predicted-IoU head is uncalibrated on MR), among them the model's own
    single and multimask outputs (:func:`napari_sam.candidates.box_outputs`),
    as the propagation's key slices choose (:func:`napari_sam.candidates.box_fit_key`).
    crop_embedding: a :class:`~napari_sam.geometry.Crop` of the slice -> its
    embedding; under "box_fit", a small box is also answered on a magnified
    crop around it, and an empty answer is never the key mask. A prediction
    decoded on a zoomed crop has ``crop`` set.
    """
    if key_choice not in KEY_CHOICES:
        raise InputError(f"key_choice {key_choice!r}: one of {', '.join(KEY_CHOICES)}")
    pred = predictor.predict(prompt=prompt, previous=previous, multimask=True)
    if prompt.box is None or len(prompt.points) or pred.crop is not None:
        return pred
    if not uses_box_fit(key_choice, pred.mask, prompt.box):
        return pred
    single = predictor.predict(prompt=prompt, previous=previous, multimask=False)
    emb = predictor.embedding
    zoomed = (
        None
        if crop_embedding is None
        else lambda: zoomed_box_outputs(predictor.backend, crop_embedding, prompt.box, emb.original_size)
    )
    return box_fit_key(predictor.backend, single, pred, emb, prompt.box, zoomed)


def _prefill(state: PropagationState, index: int, mask: Any, source: str) -> None:
    """Slice ``index``'s result is ``mask`` already: nothing to decode there."""
    shape = tuple(getattr(mask, "shape", ()))
    if shape != state.slice_shape:
        raise InputError(f"slice {index}: mask of shape {shape}, expected {state.slice_shape}")
    state.results[index] = mask if hasattr(mask, "full") else np.asarray(mask, bool)
    state.info[index] = SliceInfo(source, index)
    state.dirty_keys.discard(index)


def key_op(index: int, prompt: SlicePrompt | None, mask: Any, exact: bool) -> StateOp:
    """The change a commit makes (see :meth:`Annotation.commit`): a stop slice for
    clicks that are all negative; a prompt key slice (its mask kept as its result
    when given and ``exact``); else the mask as a user mask (the prompt kept too)."""

    def op(state: PropagationState) -> None:
        if prompt is not None and prompt.only_negative:
            state.add_stop(index, prompt.points)
            _prefill(state, index, np.zeros(state.slice_shape, bool), "stop")
        elif mask is None or (prompt is not None and exact):
            state.user_masks.pop(index, None)
            state.add_prompt(index, prompt)  # type: ignore[arg-type]
            if mask is not None:
                _prefill(state, index, mask, "key")
        else:
            if prompt is not None:
                state.add_prompt(index, prompt)
            state.set_user_mask(index, mask.full() if hasattr(mask, "full") else mask)
            _prefill(state, index, state.user_masks[index], "user_mask")

    return op


def paint_op(index: int, plane: np.ndarray, painted: set[int]) -> StateOp:
    """The change a paint stroke makes on slice ``index``: the object's painted
    (rows, cols) pixels there become a user key slice, or a stop slice when none
    is left. ``painted``: the object's set of painted slices (kept up to date)."""
    plane = np.asarray(plane, bool).copy()

    def op(state: PropagationState) -> None:
        if plane.any():
            state.set_user_mask(index, plane)
            _prefill(state, index, state.user_masks[index], "user_mask")
            painted.add(index)
        else:
            state.remove_prompt(index)
            state.add_stop(index)
            _prefill(state, index, np.zeros(state.slice_shape, bool), "stop")
            painted.discard(index)

    return op
