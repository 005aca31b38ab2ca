"""Prompts: clicks, boxes, objects, and the prompts file.

Coordinates are array indices in napari's order everywhere: (row, col) within
a slice, ``slice`` the index along the volume's axis 0 (or along the object's
``axis`` for propagation). Boxes are (r0, c0, r1, c1), inclusive pixel
indices, with r0 <= r1 and c0 <= c1.

The prompts file (JSON)::

    {"window": [-160, 240],                      # optional, for all objects
     "objects": [
       {"id": 1, "name": "liver", "window": "soft-tissue",   # window optional
        "color": [255, 0, 0],                                # optional
        "propagate": false, "axis": 0, "range": [z0, z1],    # propagation
        "prompts": [{"slice": 10, "box": [r0, c0, r1, c1]},
                    {"slice": 11, "points": [[r, c], [r, c]], "labels": [1, 0]}],
        "corrections": [{"point": [z, r, c], "label": 0}]}]}   # optional, volume voxels

or, instead of "prompts", "propagate", "adapt" and "corrections", an object's
"steps": a session's actions in order, with mask files (:mod:`napari_sam.prompt_steps`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .prompt_steps import PROMPT_KEYS, Step, check_keys, check_steps, check_window, parse_steps


@dataclass(frozen=True)
class SlicePrompt:
    """The prompts given on one slice.

    points: (N, 2) float (row, col); labels: (N,) int, 1 positive, 0 negative.
    box: (r0, c0, r1, c1) or None.
    slice: index along the axis, None for a 2D image.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: tuple[float, float, float, float] | None = None
    slice: int | None = None

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        lab = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(pts) != len(lab):
            raise InputError(f"prompt on slice {self.slice}: {len(pts)} points but {len(lab)} labels")
        if np.any((lab != 0) & (lab != 1)):
            raise InputError(f"prompt on slice {self.slice}: labels must be 1 (positive) or 0 (negative)")
        if not np.all(np.isfinite(pts)):
            raise InputError(f"prompt on slice {self.slice}: point coordinates must be finite numbers")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", lab)
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4 or not all(np.isfinite(box)):
                raise InputError(f"prompt on slice {self.slice}: box must be 4 numbers [r0, c0, r1, c1]")
            r0, c0, r1, c1 = box
            object.__setattr__(self, "box", (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)))
        if self.box is None and len(pts) == 0:
            raise InputError(f"prompt on slice {self.slice}: needs a box or at least one point")

    @property
    def positive(self) -> np.ndarray:
        return self.points[self.labels == 1]

    @property
    def negative(self) -> np.ndarray:
        return self.points[self.labels == 0]

    @property
    def only_negative(self) -> bool:
        """A slice with negative clicks alone: the user says "the object is not here"."""
        return self.box is None and len(self.points) > 0 and not np.any(self.labels == 1)

    def check_inside(self, shape: tuple[int, int]) -> None:
        """Raise InputError if a point or box lies outside a slice of ``shape`` (rows, cols)."""
        h, w = shape
        where = f"slice {self.slice}" if self.slice is not None else "the image"
        for r, c in self.points:
            if not (0 <= r <= h - 1 and 0 <= c <= w - 1):
                raise InputError(f"point ({r:g}, {c:g}) lies outside {where} of shape ({h}, {w})")
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            if r0 < 0 or c0 < 0 or r1 > h - 1 or c1 > w - 1:
                raise InputError(f"box [{r0:g}, {c0:g}, {r1:g}, {c1:g}] lies outside {where} of shape ({h}, {w})")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.slice is not None:
            out["slice"] = int(self.slice)
        if self.box is not None:
            out["box"] = [float(v) for v in self.box]
        if len(self.points):
            out["points"] = self.points.tolist()
            out["labels"] = self.labels.tolist()
        return out


@dataclass
class ObjectPrompts:
    """One object to segment: its id in the label map, name, prompts and options."""

    id: int
    name: str
    prompts: list[SlicePrompt]
    window: Any = None
    color: tuple[int, int, int] | None = None
    propagate: bool = False
    axis: int = 0
    range: tuple[int, int] | None = None
    adapt: bool = False  # adapt the model to this object's key slices, then propagate again
    #: clicks at volume voxels ((z, row, col), label 1 add / 0 remove), applied in order after the prompts
    corrections: list[tuple[tuple[int, int, int], int]] = field(default_factory=list)
    #: a session's actions in order (:mod:`napari_sam.prompt_steps`), replayed instead of the above
    steps: list[Step] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "prompts": [p.to_json() for p in self.prompts]}
        if self.adapt:
            out["adapt"] = True
        if self.corrections:
            out["corrections"] = [{"point": list(p), "label": lab} for p, lab in self.corrections]
        if self.window is not None:
            out["window"] = list(self.window) if not isinstance(self.window, str) else self.window
        if self.color is not None:
            out["color"] = list(self.color)
        if self.propagate:
            out["propagate"] = True
            out["axis"] = self.axis
            if self.range is not None:
                out["range"] = list(self.range)
        return out


@dataclass
class PromptsFile:
    """The parsed prompts file: the objects and an optional default window."""

    objects: list[ObjectPrompts]
    window: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"objects": [o.to_json() for o in self.objects]}
        if self.window is not None:
            out["window"] = self.window
        return out

    def check_against(self, shape: tuple[int, ...], is_2d: bool) -> None:
        """Raise InputError for a prompt outside an image of ``shape`` (z, y, x)."""
        for obj in self.objects:
            if obj.axis not in (0, 1, 2) or (is_2d and obj.axis != 0):
                raise InputError(f"object {obj.id} ({obj.name}): axis must be 0, 1 or 2 (0 for a 2D image)")
            if is_2d and obj.propagate and obj.steps is None:
                raise InputError(f"object {obj.id} ({obj.name}): 'propagate' needs a 3D image; this one is 2D")
            if obj.corrections and not obj.propagate:
                raise InputError(
                    f"object {obj.id} ({obj.name}): 'corrections' act on a 3D result; set \"propagate\": true"
                )
            n = shape[obj.axis]
            plane = tuple(s for i, s in enumerate(shape[:3]) if i != obj.axis)
            for p in obj.prompts:
                if is_2d:
                    if p.slice not in (None, 0):
                        raise InputError(f"object {obj.id} ({obj.name}): 'slice' {p.slice} given for a 2D image")
                else:
                    if p.slice is None:
                        raise InputError(f"object {obj.id} ({obj.name}): a prompt needs 'slice' for a 3D image")
                    if not 0 <= p.slice < n:
                        raise InputError(f"object {obj.id} ({obj.name}): slice {p.slice} outside 0..{n - 1}")
                p.check_inside(plane)
            for point, _label in obj.corrections:
                if is_2d or not all(0 <= v < s for v, s in zip(point, shape[:3])):
                    raise InputError(
                        f"object {obj.id} ({obj.name}): correction point {list(point)} lies outside "
                        f"the volume of shape {list(shape[:3])}"
                    )
            if obj.steps is not None:
                check_steps(obj.steps, shape, obj.axis, is_2d, f"object {obj.id} ({obj.name})")
            if obj.range is not None and not (0 <= obj.range[0] <= obj.range[1] < n):
                raise InputError(f"object {obj.id} ({obj.name}): range {list(obj.range)} outside 0..{n - 1}")
            outside = [
                p.slice
                for p in obj.prompts
                if obj.range is not None and p.slice is not None and not obj.range[0] <= p.slice <= obj.range[1]
            ]
            if outside:
                raise InputError(
                    f"object {obj.id} ({obj.name}): prompt on slice {outside[0]} lies outside the "
                    f"object's range {list(obj.range)}"
                )


#: The keys allowed at each level of a prompts file (one place; the README's "The prompts file" describes them).
TOP_KEYS = ("objects", "window")
OBJECT_KEYS = (
    "id",
    "name",
    "prompts",
    "window",
    "color",
    "propagate",
    "axis",
    "range",
    "corrections",
    "adapt",
    "steps",
)
CORRECTION_KEYS = ("point", "label")


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise InputError(f"{where}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _check_window(win: Any, where: str) -> None:
    if win is not None:
        check_window(win, where)


def _parse_prompt(p: Any, pw: str) -> SlicePrompt:
    _require(isinstance(p, dict), pw, "must be an object")
    check_keys(p, PROMPT_KEYS, pw)
    sl = p.get("slice")
    _require(sl is None or _is_int(sl), pw, "'slice' must be an integer")
    pts = p.get("points", [])
    _require(
        isinstance(pts, list) and all(isinstance(q, list) and len(q) == 2 and all(_is_num(v) for v in q) for q in pts),
        pw,
        "'points' must be a list of [row, col] pairs",
    )
    labels = p.get("labels", [1] * len(pts))
    _require(
        isinstance(labels, list) and all(_is_int(v) and v in (0, 1) for v in labels),
        pw,
        "labels must be 1 (positive) or 0 (negative), given as a list",
    )
    box = p.get("box")
    _require(
        box is None or (isinstance(box, list) and len(box) == 4 and all(_is_num(v) for v in box)),
        pw,
        "'box' must be [r0, c0, r1, c1] numbers",
    )
    _require(
        box is None or (box[0] <= box[2] and box[1] <= box[3]),
        pw,
        f"box {box} must have r0 <= r1 and c0 <= c1 (inclusive [r0, c0, r1, c1])",
    )
    try:
        return SlicePrompt(
            points=np.asarray(pts, np.float32).reshape(-1, 2),
            labels=labels,
            box=tuple(box) if box is not None else None,
            slice=sl,
        )
    except InputError as exc:
        raise InputError(f"{pw}: {str(exc).split(': ', 1)[-1]}") from None


def _parse_corrections(corr: Any, w: str) -> list[tuple[tuple[int, int, int], int]]:
    """An object's "corrections": [{"point": [z, row, col], "label": 1|0}, ...] (voxel indices)."""
    _require(isinstance(corr, list), w, '\'corrections\' must be a list of {"point": [z, r, c], "label": 0|1}')
    out = []
    for k, c in enumerate(corr):
        cw = f"{w}.corrections[{k}]"
        _require(isinstance(c, dict), cw, "must be an object")
        check_keys(c, CORRECTION_KEYS, cw)
        _require(
            isinstance(c.get("point"), list) and len(c["point"]) == 3 and all(_is_int(v) for v in c["point"]),
            cw,
            "'point' must be [z, row, col] voxel indices (integers)",
        )
        _require(
            _is_int(c.get("label", 1)) and c.get("label", 1) in (0, 1), cw, "'label' must be 1 (add) or 0 (remove)"
        )
        out.append((tuple(int(v) for v in c["point"]), int(c.get("label", 1))))
    return out


def _steps_object(o: dict, oid: int, w: str, base: Path | None) -> ObjectPrompts:
    """An object given by its ``"steps"`` (a session's actions in order)."""
    both = [k for k in ("prompts", "propagate", "adapt", "corrections") if k in o]
    if both:
        raise InputError(f"{w}: 'steps' replaces {both[0]!r}: give one or the other")
    axis = o.get("axis", 0)
    _require(_is_int(axis) and axis in (0, 1, 2), w, "'axis' must be 0, 1 or 2")
    steps = parse_steps(o["steps"], base, w, _parse_prompt)
    plain = _parse_object({k: v for k, v in o.items() if k != "steps"} | {"prompts": []}, 0, w, set(), True)
    plain.id, plain.steps = oid, steps
    plain.propagate = any(s.kind in ("propagate", "adapt", "correction") for s in steps)
    return plain


def _parse_object(
    o: Any, i: int, w: str, seen: set[int], allow_empty: bool = False, base: Path | None = None
) -> ObjectPrompts:
    _require(isinstance(o, dict), w, "must be an object")
    check_keys(o, OBJECT_KEYS, w)
    oid = o.get("id", i + 1)
    _require(_is_int(oid) and 1 <= oid <= 65535, w, "'id' must be an integer in 1..65535")
    _require(oid not in seen, w, f"duplicate id {oid}")
    seen.add(oid)
    if "steps" in o:
        return _steps_object(o, oid, w, base)
    name = o.get("name", f"object_{oid}")
    _require(isinstance(name, str), w, "'name' must be a string")
    prompts = o.get("prompts")
    corrections = _parse_corrections(o.get("corrections", []), w)
    _require(
        not (corrections and not prompts and not allow_empty),
        w,
        "'corrections' need a prompt to start from: give a box or a click in 'prompts' first",
    )
    _require(isinstance(prompts, list) and (len(prompts) > 0 or allow_empty), w, "'prompts' must be a non-empty list")
    sps = [_parse_prompt(p, f"{w}.prompts[{j}]") for j, p in enumerate(prompts)]
    color = o.get("color")
    _require(
        color is None
        or (isinstance(color, list) and len(color) in (3, 4) and all(_is_int(c) and 0 <= c <= 255 for c in color)),
        w,
        "'color' must be [r, g, b] integers 0..255",
    )
    rng = o.get("range")
    _require(
        rng is None or (isinstance(rng, list) and len(rng) == 2 and all(_is_int(v) for v in rng)),
        w,
        "'range' must be [first, last] slice indices",
    )
    axis = o.get("axis", 0)
    _require(_is_int(axis) and axis in (0, 1, 2), w, "'axis' must be 0, 1 or 2")
    propagate = o.get("propagate", False)
    _require(isinstance(propagate, bool), w, "'propagate' must be true or false")
    adapt = o.get("adapt", False)
    _require(isinstance(adapt, bool), w, "'adapt' must be true or false")
    _require(not adapt or propagate, w, "'adapt' needs 'propagate': true (it re-propagates the object)")
    _check_window(o.get("window"), w)
    return ObjectPrompts(
        id=oid,
        name=name,
        prompts=sps,
        window=o.get("window"),
        color=tuple(color[:3]) if color else None,
        propagate=propagate,
        axis=axis,
        range=(min(rng), max(rng)) if rng else None,
        adapt=adapt,
        corrections=corrections,
    )


def parse_prompts(
    data: Any, where: str = "prompts", allow_empty: bool = False, base: str | Path | None = None
) -> PromptsFile:
    """Validate a prompts document (already decoded from JSON).

    Unknown keys are refused at every level (the closest valid key is
    suggested); wrong types raise InputError naming where they are.
    allow_empty: an object may have an empty 'prompts' list (its key slices
    come from ``segment --init`` labels). base: the folder mask files of
    ``"steps"`` are relative to (the prompts file's; default the working folder)."""
    _require(isinstance(data, dict), where, "top level must be an object with an 'objects' list")
    check_keys(data, TOP_KEYS, where)
    objs = data.get("objects")
    _require(isinstance(objs, list) and len(objs) > 0, where, "'objects' must be a non-empty list")
    _check_window(data.get("window"), where)
    seen: set[int] = set()
    base = None if base is None else Path(base)
    objects = [_parse_object(o, i, f"{where}: objects[{i}]", seen, allow_empty, base) for i, o in enumerate(objs)]
    return PromptsFile(objects=objects, window=data.get("window"))


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise InputError(f"number {text[:40]} is too large")
    return value


def _no_constant(text: str) -> float:
    raise InputError(f"{text} is not a number JSON allows")


def load_prompts(path: str | Path, allow_empty: bool = False) -> PromptsFile:
    """Read and validate a prompts JSON file (allow_empty: see :func:`parse_prompts`).
    Every problem is an InputError (one line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompts file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the prompts file ({exc.strerror or exc})") from None
    try:
        return parse_prompts(data, where=str(path), allow_empty=allow_empty, base=path.parent)
    except RecursionError:  # pragma: no cover - json refuses such depth first
        raise InputError(f"{path}: JSON nested too deeply") from None


def as_slice_prompt(
    points: Sequence[Sequence[float]] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    box: Sequence[float] | None = None,
    slice: int | None = None,
) -> SlicePrompt:
    """Build a SlicePrompt from plain sequences (labels default to all positive)."""
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels, np.int64)
    return SlicePrompt(points=pts, labels=lab, box=tuple(box) if box is not None else None, slice=slice)
