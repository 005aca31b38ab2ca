"""The action log of an annotated object: what made its state, in order.

Every change of an object's key slices and every run on it is appended to
``AnnotatedObject.log`` as a plain dict (masks as (rows, cols) bool arrays):

- ``{"op": "commit", "slice": i, "prompt": {...} | None, "mask": array | None, "exact": bool}``:
  a key slice (:meth:`Annotation.commit`, and :meth:`Annotation.load_masks` with no
  prompt); ``mask`` is kept only when the prompt alone does not give it back (a
  candidate the user chose, a zoomed or refined decode, a loaded mask);
  ``"defer": True`` when no mask was committed (the propagation decodes it);
- ``{"op": "paint", "slice": i, "mask": array}``: a painted (or erased) slice;
- ``{"op": "settle"}``: loaded masks taken as up to date (nothing to propagate);
- ``{"op": "range", "range": [first, last] | None}``;
- ``{"op": "propagate"}``, ``{"op": "adapt"}``: a run, with ``"events": n`` when
  it was cancelled after n events (a replay stops after as many);
- ``{"op": "correction", "point": [z, r, c], "label": 0|1}``: a 3D correction that ran.

A decoded commit and every run also log the intensity ``"window": [lo, hi]`` the
model saw (a window changed in the middle of a session replays as it was); an
adaptation logs its ``"steps"`` and its ``"weights"``
(:class:`~napari_sam.finetune.adapted.AdaptedWeights`, what it changed).

The log is part of the object's snapshot, so undo and redo restore it with the
state. Because an object's result depends only on its own log (a run works on
the object's state alone), replaying each log in order gives the same objects
and, painted by the one overlap rule in the same object order, the same label
map: this is what a session exports as a prompts file
(:mod:`napari_sam.annotation.export_prompts`) and what ``napari-sam segment
--session`` replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..overlaps import as_mask
from ..prompts import SlicePrompt

if TYPE_CHECKING:
    from .objects import AnnotatedObject
    from .runs import Run

__all__ = ["commit_action", "paint_action", "log_action", "log_run", "latest_weights"]


def commit_action(
    index: int, prompt: SlicePrompt | None, mask: Any, exact: bool, window: Sequence[float] | None = None
) -> dict[str, Any]:
    """The log entry of a commit (see :func:`napari_sam.annotation.keyslices.key_op`); ``window``
    (the intensity window the prompt was decoded under) is logged with a decoded one."""
    keyed = prompt is not None and (prompt.only_negative or exact or mask is None)
    action = {
        "op": "commit",
        "slice": int(index),
        "prompt": None if prompt is None else prompt.to_json(),
        "mask": None if keyed or mask is None else as_mask(mask),
        "exact": bool(exact),
    }
    if mask is None and prompt is not None and not prompt.only_negative:
        action["defer"] = True  # the propagation decodes it (no mask committed)
    if window is not None and keyed and not prompt.only_negative and mask is not None:  # type: ignore[union-attr]
        action["window"] = [float(window[0]), float(window[1])]
    return action


def paint_action(index: int, plane: np.ndarray) -> dict[str, Any]:
    """The log entry of a paint stroke on slice ``index`` (the object's pixels there)."""
    return {"op": "paint", "slice": int(index), "mask": np.asarray(plane, bool)}


def log_action(obj: AnnotatedObject, action: dict[str, Any]) -> None:
    """Append ``action`` to the object's log (unless its history is unknown)."""
    if obj.log is not None:
        obj.log.append(action)


def log_run(obj: AnnotatedObject, run: Run) -> None:
    """Log a finished run where it started: the changes the user made during it
    were applied to its state after it, so they come after it in the log."""
    if obj.log is None or run.action is None:
        return
    if run.action["op"] == "correction" and not run.completed:
        return  # a correction runs whole or not at all
    action = dict(run.action)
    if not run.completed:
        action["events"] = run.events
    at = min(run.log_at, len(obj.log))
    obj.log[at:at] = [action]


def latest_weights(obj: AnnotatedObject) -> Any:
    """The weights of the object's latest adaptation still in its log (undo takes one
    back): an :class:`~napari_sam.finetune.adapted.AdaptedWeights`, or None (its runs use
    the base model; also for an adaptation a version-1 session saved without them)."""
    for a in reversed(obj.log or ()):
        if a["op"] == "adapt":
            return a.get("weights")
    return None
