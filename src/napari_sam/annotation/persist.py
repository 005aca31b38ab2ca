"""An annotation as plain data, and back: what a saved session holds.

:func:`annotation_to_dict` gives a dict of JSON-able values and numpy
arrays (masks as (rows, cols) bool arrays, the label map as (z, y, x)
uint16); :func:`annotation_from_dict` rebuilds an equal annotation (the
same objects, key slices, results, stop decisions and label map; the undo
history starts empty). A session writer stores the arrays apart (e.g. in an
``.npz``) and the rest as JSON; :func:`split_arrays` / :func:`join_arrays`
do that split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..corrections import Correction
from ..errors import InputError
from ..overlaps import resolve_overlaps
from ..prompts import as_slice_prompt
from ..propagation import PropagationState, SliceInfo, StopDecision, StopReason
from .model import Annotation
from .objects import AnnotatedObject, as_mask

__all__ = ["annotation_to_dict", "annotation_from_dict", "split_arrays", "join_arrays", "FORMAT", "VERSION"]

FORMAT = "napari-sam annotation"
VERSION = 1


def _state_to_dict(st: PropagationState) -> dict[str, Any]:
    return {
        "axis": st.axis,
        "range": list(st.range) if st.range is not None else None,
        "roi": list(st.roi) if st.roi is not None else None,
        "prompts": {str(i): p.to_json() for i, p in st.prompts.items()},
        "user_masks": {str(i): np.asarray(m, bool) for i, m in st.user_masks.items()},
        "results": {str(i): as_mask(m) for i, m in st.results.items()},
        "info": {
            str(i): {
                "source": f.source,
                "origin": f.origin,
                "score": f.score,
                "iou_prev": f.iou_prev,
                "area_ratio": f.area_ratio,
                "intensity_shift": f.intensity_shift,
            }
            for i, f in st.info.items()
        },
        "stops": [
            {
                "origin": s.origin,
                "direction": s.direction,
                "last": s.last,
                "rejected": s.rejected,
                "reason": s.reason.value,
                "detail": s.detail,
            }
            for s in st.stops
        ],
        "dirty": sorted(st.dirty),
        "dirty_keys": sorted(st.dirty_keys),
    }


def _state_from_dict(d: dict[str, Any], shape: tuple[int, int, int]) -> PropagationState:
    st = PropagationState(shape=shape, axis=int(d["axis"]))
    st.range = tuple(d["range"]) if d.get("range") is not None else None  # type: ignore[assignment]
    st.roi = tuple(d["roi"]) if d.get("roi") is not None else None  # type: ignore[assignment]
    for i, p in d["prompts"].items():
        st.prompts[int(i)] = as_slice_prompt(p.get("points"), p.get("labels"), p.get("box"), int(i))
    st.user_masks = {int(i): np.asarray(m, bool) for i, m in d["user_masks"].items()}
    st.results = {int(i): np.asarray(m, bool) for i, m in d["results"].items()}
    st.info = {int(i): SliceInfo(**f) for i, f in d["info"].items()}
    st.stops = [
        StopDecision(s["origin"], s["direction"], s["last"], s["rejected"], StopReason(s["reason"]), s["detail"])
        for s in d["stops"]
    ]
    st.dirty, st.dirty_keys = set(d["dirty"]), set(d["dirty_keys"])
    return st


def _finished_labels(model: Annotation) -> np.ndarray:
    """The label map of the finished work: a running propagation's provisional slices left out."""
    if not any(o.pending for o in model.objects):
        return np.array(model.labels)
    painted = [m for o in model.objects if (m := o.masks(pending=False)) is not None]
    return resolve_overlaps(model.shape, painted, model.spacing_zyx)


def annotation_to_dict(model: Annotation) -> dict[str, Any]:
    """Everything of ``model`` but its undo history, as plain values and numpy arrays."""
    objects = []
    for o in model.objects:
        objects.append(
            {
                "id": o.id,
                "name": o.name,
                "color": list(o.color),
                "propagated": o.propagated,
                "painted": sorted(o.painted),
                "corrections": [c.to_json() for c in o.corrections],
                "state": None if o.state is None else _state_to_dict(o.state),
                "log": None if o.log is None else [dict(a) for a in o.log],
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "shape": list(model.shape),
        "spacing_zyx": list(model.spacing_zyx),
        "is_2d": model.is_2d,
        "key_choice": model.key_choice,
        "current_id": model.current_id,
        "objects": objects,
        "labels": _finished_labels(model),
    }


def _log_from(log: Any) -> list[dict[str, Any]] | None:
    """An object's action log as saved (None: saved before logs were kept, history unknown)."""
    if log is None:
        return None
    return [{k: (np.asarray(v, bool) if k == "mask" and v is not None else v) for k, v in a.items()} for a in log]


def annotation_from_dict(d: dict[str, Any]) -> Annotation:
    """The annotation :func:`annotation_to_dict` gave. InputError for another format
    or a newer version."""
    if d.get("format") != FORMAT:
        raise InputError(f"not a napari-sam annotation (format {d.get('format')!r})")
    if int(d.get("version", 0)) > VERSION:
        raise InputError(
            f"annotation format version {d['version']} is newer than this napari-sam "
            f"reads ({VERSION}): update napari-sam"
        )
    shape = tuple(int(s) for s in d["shape"])
    model = Annotation(shape, d["spacing_zyx"], is_2d=bool(d["is_2d"]), key_choice=d["key_choice"])
    for od in d["objects"]:
        obj = AnnotatedObject(
            int(od["id"]),
            od["name"],
            tuple(od["color"]),  # type: ignore[arg-type]
            None if od["state"] is None else _state_from_dict(od["state"], shape),  # type: ignore
            [Correction(tuple(c["point"]), int(c["label"])) for c in od["corrections"]],
            set(od["painted"]),
            bool(od["propagated"]),
            log=_log_from(od.get("log")),
        )
        model._objects[obj.id] = obj
    model.current_id = d.get("current_id")
    model._repaint(set(model._objects), True, "restore")
    labels = np.asarray(d["labels"])
    if labels.shape != shape or not np.array_equal(labels, model.labels):
        raise InputError("the saved label map does not match its objects (the file was changed?)")
    return model


def split_arrays(d: Any, arrays: dict[str, np.ndarray] | None = None, path: str = "") -> tuple[Any, dict]:
    """``d`` with every numpy array replaced by ``{"array": KEY}``, and KEY -> array."""
    arrays = {} if arrays is None else arrays
    if isinstance(d, np.ndarray):
        arrays[path] = d
        return {"array": path}, arrays
    if isinstance(d, dict):
        return {k: split_arrays(v, arrays, f"{path}/{k}")[0] for k, v in d.items()}, arrays
    if isinstance(d, list):
        return [split_arrays(v, arrays, f"{path}/{i}")[0] for i, v in enumerate(d)], arrays
    return d, arrays


def join_arrays(d: Any, arrays: Any) -> Any:
    """The inverse of :func:`split_arrays` (``arrays``: any mapping KEY -> array, e.g. an opened ``.npz``)."""
    if isinstance(d, dict):
        if set(d) == {"array"} and isinstance(d["array"], str):
            return np.asarray(arrays[d["array"]])
        return {k: join_arrays(v, arrays) for k, v in d.items()}
    if isinstance(d, list):
        return [join_arrays(v, arrays) for v in d]
    return d
