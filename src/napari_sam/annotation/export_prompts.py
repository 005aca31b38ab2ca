"""A session as a prompts file: its objects' actions, in order, with mask files.

:func:`session_prompts` turns an :class:`~napari_sam.annotation.Annotation`'s
action logs (:mod:`.actions`) into a :class:`~napari_sam.prompts.PromptsFile`
whose objects carry ``steps`` (:mod:`napari_sam.prompt_steps`);
:func:`prompts_document` into the JSON document and its mask files;
:func:`export_prompts` writes both, all or nothing. Replaying the file
(``napari-sam segment IMAGE --prompts FILE``, or
:func:`napari_sam.segmentation.segment_volume`) on the same image with the
same model and window gives the session's label map, voxel for voxel: every
action is replayed in the order it was made (a propagation cancelled by the
user stops after as many slices), decoded prompts are decoded again by the
one key-slice rule, and the masks the user accepted or painted are read from
the mask files.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..finetune.adapted import WEIGHTS_SUFFIX, AdaptedWeights
from ..outputs import bytes_output, json_output, write_outputs
from ..prompt_steps import Step
from ..prompts import ObjectPrompts, PromptsFile, as_slice_prompt
from .model import Annotation
from .objects import AnnotatedObject

__all__ = ["session_prompts", "prompts_document", "export_prompts", "steps_of"]


def _as_step(action: dict[str, Any]) -> Step:
    op = action["op"]
    if op in ("commit", "paint"):
        p = action.get("prompt")
        prompt = None if p is None else as_slice_prompt(p.get("points"), p.get("labels"), p.get("box"), action["slice"])
        mask = action.get("mask")
        mask = None if mask is None else np.asarray(mask, bool)
        return Step(op, int(action["slice"]), prompt, mask, defer=bool(action.get("defer", False)))
    if op == "range":
        rng = action.get("range")
        return Step(op, rng=None if rng is None else (int(rng[0]), int(rng[1])))
    if op == "correction":
        return Step(op, point=tuple(int(v) for v in action["point"]), label=int(action["label"]))  # type: ignore
    return Step(op, events=action.get("events"), steps=action.get("steps"), weights=action.get("weights"))


def steps_of(obj: AnnotatedObject) -> tuple[list[Step], list[float] | None]:
    """The object's actions as prompts-file steps, in order, and the window of its first
    decoded action (the object's ``"window"``; a later action under another window is
    preceded by a ``window`` step). InputError when its history is unknown (a session
    saved by a napari-sam that did not keep it)."""
    if obj.log is None:
        raise InputError(
            f"{obj.name}: this session was saved before napari-sam recorded the order of its "
            "actions; it cannot be replayed exactly (open it and save it again after new work)"
        )
    steps: list[Step] = []
    first = current = None
    for a in obj.log:
        win = a.get("window")
        if win is not None and current is None:
            first = current = list(win)
        elif win is not None and list(win) != current:
            current = list(win)
            steps.append(Step("window", window=current))
        steps.append(_as_step(a))
    return steps, first


def session_prompts(annotation: Annotation, window: Any = None) -> PromptsFile:
    """The annotation as a prompts file (objects with ``steps``, masks in memory).
    window: the session's window (``[lo, hi]`` or a preset): the file's, for the
    objects whose actions did not log theirs (a session saved before they did)."""
    objects = []
    for o in annotation.objects:
        steps, first_window = steps_of(o)
        objects.append(
            ObjectPrompts(
                id=o.id,
                name=o.name,
                prompts=[],
                window=first_window,
                color=tuple(o.color),  # type: ignore[arg-type]
                axis=o.axis if o.axis is not None else 0,
                propagate=any(s.kind in ("propagate", "adapt", "correction") for s in steps),
                steps=steps,
            )
        )
    if not objects:
        raise InputError("the session has no object to export")
    return PromptsFile(objects, window=list(window) if isinstance(window, (list, tuple)) else window)


def _step_json(oid: int, k: int, st: Step, files: dict[str, Any], folder: str) -> dict[str, Any]:
    """One step as JSON; its mask (if any) named ``<folder>/obj<id>_s<slice>_<k>.png`` in
    ``files``, an adaptation's weights ``<folder>/obj<id>_adapted_<k>.npz``."""
    if st.kind in ("commit", "paint"):
        d: dict[str, Any] = {"slice": st.index}
        if st.prompt is not None:
            d.update({k2: v for k2, v in st.prompt.to_json().items() if k2 != "slice"})
        if st.mask is not None:
            name = f"{folder}/obj{oid}_s{st.index}_{k}.png"
            files[name] = st.mask
            d["mask"] = name
        if st.defer:
            d["defer"] = True
        return {st.kind: d}
    if st.kind == "range":
        return {"range": None if st.rng is None else list(st.rng)}
    if st.kind == "correction":
        return {"correction": {"point": list(st.point or ()), "label": st.label}}
    if st.kind == "settle":
        return {"settle": True}
    if st.kind == "window":
        return {"window": st.window}
    extra: dict[str, Any] = {k: int(v) for k, v in (("steps", st.steps), ("events", st.events)) if v is not None}
    if isinstance(st.weights, AdaptedWeights):
        name = f"{folder}/obj{oid}_adapted_{k}{WEIGHTS_SUFFIX}"
        files[name] = st.weights
        extra.update(weights=name, sha256=st.weights.sha256)
    return {st.kind: extra or True}


def prompts_document(prompts: PromptsFile, mask_folder: str = "masks") -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON document of ``prompts`` (from :func:`session_prompts`) and its files:
    relative path (under ``mask_folder``) -> a (rows, cols) bool mask, or an
    adaptation's :class:`~napari_sam.finetune.adapted.AdaptedWeights`."""
    files: dict[str, Any] = {}
    objects = []
    for o in prompts.objects:
        d: dict[str, Any] = {"id": o.id, "name": o.name}
        if o.color is not None:
            d["color"] = [int(c) for c in o.color]
        d["axis"] = o.axis
        if o.window is not None:
            d["window"] = o.window
        d["steps"] = [_step_json(o.id, k, st, files, mask_folder) for k, st in enumerate(o.steps or ())]
        objects.append(d)
    doc: dict[str, Any] = {"objects": objects}
    if prompts.window is not None:
        doc["window"] = [float(v) for v in prompts.window] if not isinstance(prompts.window, str) else prompts.window
    return doc, files


def _png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def export_prompts(
    path: str | Path,
    annotation: Annotation,
    window: Any = None,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> list[Path]:
    """Write ``annotation`` as the prompts file ``path`` (JSON) and its mask files (and
    adapted weights) in the folder ``<path's stem>.masks`` beside it, all or nothing
    (:mod:`napari_sam.outputs`). window: the session's window (``[lo, hi]``), for objects
    that did not log theirs. Returns the paths written."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise InputError(f"{path}: a prompts file ends in .json")
    folder = f"{path.stem}.masks"
    doc, masks = prompts_document(session_prompts(annotation, window), folder)
    files: Sequence = [
        bytes_output(path.parent / rel, m.to_bytes(), "adapted weights")
        if isinstance(m, AdaptedWeights)
        else bytes_output(path.parent / rel, _png(m), "mask file")
        for rel, m in masks.items()
    ]
    files = [*files, json_output(path, doc, "prompts file")]
    return write_outputs(files, inputs, overwrite)
