"""An object's ``"steps"`` in a prompts file: a session's actions, in order, with mask files.

A prompts file's object either declares its prompts (``"prompts"``, then
``"propagate"``, ``"adapt"``, ``"corrections"``, replayed in that order) or
lists ``"steps"``, the actions of a session in the order they were made (what
a session exports, :mod:`napari_sam.annotation.export_prompts`)::

    "steps": [
      {"commit": {"slice": 10, "box": [r0, c0, r1, c1]}},                 # decoded
      {"commit": {"slice": 12, "points": [[r, c]], "labels": [1],
                  "mask": "masks/obj1_s12_1.png"}},                       # the mask the user accepted
      {"commit": {"slice": 3, "mask": "masks/obj1_s3_2.png"}},            # a loaded mask, no prompt
      {"commit": {"slice": 7, "box": [r0, c0, r1, c1], "defer": true}},   # decoded by the next propagation
      {"paint": {"slice": 5, "mask": "masks/obj1_s5_3.png"}},             # painted (empty: erased)
      {"settle": true},                     # the loaded masks are up to date
      {"range": [2, 17]},                   # or null: the whole axis
      {"propagate": true},                  # or {"events": 7}: cancelled after 7 slices
      {"adapt": true},                      # or {"steps": n, "events": n,
                                            #     "weights": "adapted/obj1_5.npz", "sha256": "..."}
      {"window": [lo, hi]},                 # the window of the object's next steps (or a preset)
      {"correction": {"point": [z, r, c], "label": 0}}]

An adaptation's ``"weights"`` is the file of the weights it made (what a
session exports: :mod:`napari_sam.finetune.adapted`), relative to the prompts
file's folder like a mask file; with its ``"sha256"`` checked; the replay uses
them instead of training again (with the same model; another model trains
``"steps"`` steps).

Slices lie along the object's ``"axis"``; a commit's prompt is (row, col) of
that plane. A mask file is a single-channel PNG (non-zero: the object) or a
``.npy`` bool/integer array of the slice's shape; its path is relative to the
prompts file's folder and may not leave it (an absolute path may). A missing,
unreadable or mis-shaped mask file is refused with one line.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Step", "STEP_KINDS", "parse_steps", "read_mask_file", "check_steps", "check_keys"]

#: a prompt object's keys (the prompts file's; :mod:`napari_sam.prompts` parses it)
PROMPT_KEYS = ("slice", "box", "points", "labels")

#: the kinds of step, each one key of a step object
STEP_KINDS = ("commit", "paint", "settle", "range", "propagate", "adapt", "correction", "window")
_RUN_KINDS = ("propagate", "adapt")


@dataclass
class Step:
    """One action of a session on one object.

    kind: one of :data:`STEP_KINDS`; index: the slice (commit, paint);
    prompt: a commit's clicks/box (None for a loaded mask); mask: (rows, cols)
    bool, the mask kept (a painted slice, an accepted or loaded mask), None
    when the prompt is decoded; rng: a range step's (first, last) or None;
    events: a cancelled run's event count (None: ran to its end);
    steps: an adaptation's optimiser steps (None: as many as 30 s allow);
    point / label: a correction's voxel (z, row, col) and label;
    defer: a commit whose prompt the next propagation decodes (no mask was committed);
    window: a window step's window ([lo, hi] or a preset name);
    weights: an adaptation's weights: the checked path of its file, or (from a session in
    memory) a :class:`napari_sam.finetune.adapted.AdaptedWeights`.
    """

    kind: str
    index: int | None = None
    prompt: Any = None  # a napari_sam.prompts.SlicePrompt
    mask: np.ndarray | None = None
    rng: tuple[int, int] | None = None
    events: int | None = None
    steps: int | None = None
    point: tuple[int, int, int] | None = None
    label: int = 1
    defer: bool = False
    window: Any = None
    weights: Any = None


def check_keys(d: dict, allowed: Sequence[str], where: str) -> None:
    """Refuse (InputError) a key of ``d`` not in ``allowed``, suggesting the closest one."""
    for key in d:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(allowed)}"
        raise InputError(f"{where}: unknown key {str(key)[:60]!r} ({hint})")


#: (prompt object, where) -> a SlicePrompt (napari_sam.prompts' parser)
PromptParser = Callable[[Any, str], Any]


def _fail(where: str, msg: str) -> None:
    raise InputError(f"{where}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _file_path(ref: Any, base: Path | None, where: str, what: str) -> Path:
    """The existing file ``ref`` (a path, relative to ``base``: it may not leave it) names."""
    path = Path(ref)
    if not path.is_absolute():
        root = (base or Path.cwd()).resolve()
        path = (root / path).resolve()
        if root != path and root not in path.parents:
            _fail(where, f"{what} {ref} lies outside the prompts file's folder (give an absolute path)")
    if not path.is_file():
        _fail(where, f"{what} {ref} not found")
    return path


def read_mask_file(ref: Any, base: Path | None, where: str) -> np.ndarray:
    """The (rows, cols) bool mask that ``ref`` (a path, relative to ``base``) names."""
    if not isinstance(ref, str) or not ref:
        _fail(where, "'mask' must be the path of a mask file (.png or .npy)")
    path = _file_path(ref, base, where, "mask file")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        _fail(where, f"mask file {ref} unreadable ({exc})")
    if arr.ndim != 2 or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        _fail(where, f"mask file {ref}: expected a single-channel 2D mask, got {arr.dtype} of shape {arr.shape}")
    return arr != 0


def _weights_file(value: dict, base: Path | None, where: str) -> Path:
    """An adaptation's weights file, checked against its ``sha256`` (read by the replay)."""
    ref, digest = value.get("weights"), value.get("sha256")
    if not isinstance(ref, str) or not ref:
        _fail(where, "'weights' must be the path of an adapted weights file (.npz)")
    if not (isinstance(digest, str) and len(digest) == 64):
        _fail(where, "'weights' needs its 'sha256' (64 hexadecimal digits)")
    path = _file_path(ref, base, where, "weights file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail(where, f"weights file {ref} unreadable ({exc.strerror or exc})")
    if hashlib.sha256(data).hexdigest() != digest.lower():
        _fail(where, f"weights file {ref} changed (its SHA-256 is not the one given)")
    return path


def check_window(value: Any, where: str) -> str | list[float]:
    """A prompts file's ``"window"`` (an object's or a step's): a preset name or
    [low, high] finite numbers with low < high; raises InputError (one line)."""
    ok = isinstance(value, str) and value
    ok = ok or (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
        and value[0] < value[1]
    )
    if not ok:
        _fail(where, "'window' must be a preset name or [low, high] numbers (low < high)")
    return value if isinstance(value, str) else [float(v) for v in value]


def _window_step(value: Any, where: str) -> Step:
    return Step("window", window=check_window(value, where))


def _run_step(value: Any, where: str, kind: str, base: Path | None = None) -> Step:
    if value is True:
        return Step(kind)
    counts = ("events", "steps") if kind == "adapt" else ("events",)
    keys = counts + (("weights", "sha256") if kind == "adapt" else ())
    if isinstance(value, dict):
        check_keys(value, keys, where)
        if all(_is_int(value.get(k, 0)) and value.get(k, 0) >= 0 for k in counts):
            weights = _weights_file(value, base, where) if "weights" in value or "sha256" in value else None
            return Step(kind, events=value.get("events"), steps=value.get("steps"), weights=weights)
    _fail(where, f"'{kind}' must be true or {{{', '.join(f'{k!r}: n' for k in counts)}}}")
    return Step(kind)


def _slice_step(kind: str, value: Any, base: Path | None, where: str, parse_prompt: PromptParser) -> Step:
    if not isinstance(value, dict):
        _fail(where, f"'{kind}' must be an object with 'slice'")
    check_keys(value, PROMPT_KEYS + ("mask", "defer") if kind == "commit" else ("slice", "mask"), where)
    if value.get("defer", False) not in (True, False) or (value.get("defer") and "mask" in value):
        _fail(where, "'defer' must be true or false, and a deferred commit has no 'mask'")
    if not _is_int(value.get("slice")) or value["slice"] < 0:
        _fail(where, "'slice' must be a slice index (integer >= 0)")
    mask = read_mask_file(value["mask"], base, where) if "mask" in value else None
    prompt = None
    if kind == "commit" and any(k in value for k in ("box", "points")):
        prompt = parse_prompt({k: v for k, v in value.items() if k not in ("mask", "defer")}, where)
    if mask is None and (kind == "paint" or prompt is None):
        _fail(where, f"a {kind} step needs a 'mask' file" + (" or a prompt (box, points)" if kind == "commit" else ""))
    return Step(kind, int(value["slice"]), prompt, mask, defer=bool(value.get("defer", False)))


def _parse_step(s: Any, base: Path | None, where: str, parse_prompt: PromptParser) -> Step:
    if not isinstance(s, dict) or len(s) != 1:
        _fail(where, f"a step is an object with one key: {', '.join(STEP_KINDS)}")
    check_keys(s, STEP_KINDS, where)
    kind, value = next(iter(s.items()))
    if kind in ("commit", "paint"):
        return _slice_step(kind, value, base, where, parse_prompt)
    if kind in _RUN_KINDS:
        return _run_step(value, where, kind, base)
    if kind == "window":
        return _window_step(value, where)
    if kind == "settle":
        if value is not True:
            _fail(where, "'settle' must be true")
        return Step(kind)
    if kind == "range":
        if value is not None and not (isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))):
            _fail(where, "'range' must be [first, last] slice indices or null")
        return Step(kind, rng=None if value is None else (min(value), max(value)))
    if not isinstance(value, dict):
        _fail(where, '\'correction\' must be {"point": [z, r, c], "label": 0|1}')
    check_keys(value, ("point", "label"), where)
    point, label = value.get("point"), value.get("label", 1)
    if not (isinstance(point, list) and len(point) == 3 and all(map(_is_int, point))):
        _fail(where, "'point' must be [z, row, col] voxel indices (integers)")
    if label not in (0, 1) or not _is_int(label):
        _fail(where, "'label' must be 1 (add) or 0 (remove)")
    return Step(kind, point=tuple(int(v) for v in point), label=int(label))  # type: ignore[arg-type]


def parse_steps(steps: Any, base: Path | None, where: str, parse_prompt: PromptParser) -> list[Step]:
    """An object's ``"steps"`` list; mask files are read, relative to ``base``;
    a commit's prompt is parsed by ``parse_prompt``."""
    if not isinstance(steps, list):
        _fail(where, "'steps' must be a list")
    return [_parse_step(s, base, f"{where}.steps[{k}]", parse_prompt) for k, s in enumerate(steps)]


def check_steps(steps: list[Step], shape: tuple[int, ...], axis: int, is_2d: bool, where: str) -> None:
    """Refuse (InputError) a step outside an image of ``shape`` (z, y, x) along ``axis``."""
    n = shape[axis]
    plane = tuple(s for i, s in enumerate(shape[:3]) if i != axis)
    for k, st in enumerate(steps):
        w = f"{where}.steps[{k}]"
        if st.index is not None and not 0 <= st.index < n:
            _fail(w, f"slice {st.index} outside 0..{n - 1}")
        if st.prompt is not None:
            st.prompt.check_inside(plane)
        if st.mask is not None and st.mask.shape != plane:
            _fail(w, f"mask of shape {list(st.mask.shape)}, a slice along axis {axis} is {list(plane)}")
        if st.rng is not None and not (0 <= st.rng[0] <= st.rng[1] < n):
            _fail(w, f"range {list(st.rng)} outside 0..{n - 1}")
        if is_2d and st.kind in ("propagate", "adapt", "correction", "range"):
            _fail(w, f"'{st.kind}' needs a 3D image; this one is 2D")
        if st.point is not None and not all(0 <= v < s for v, s in zip(st.point, shape[:3])):
            _fail(w, f"correction point {list(st.point)} lies outside the volume of shape {list(shape[:3])}")
