"""One annotated object: id, name, colour, and its key slices and results (a propagation state)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

from ..corrections import Correction
from ..overlaps import ObjectMasks, as_mask
from ..propagation import PropagationState

__all__ = ["AnnotatedObject", "copy_state", "adopt_state", "as_mask"]


#: what a frozen copy holds for an empty mapping or set: one shared, immutable instance
_EMPTY_MAP: Any = MappingProxyType({})
_EMPTY_SET: Any = frozenset()


def _frozen_map(d: dict) -> Any:
    return dict(d) if d else _EMPTY_MAP


def _frozen_set(s: set) -> Any:
    return frozenset(s) if s else _EMPTY_SET


def _copiers(frozen: bool) -> tuple[Any, Any, Any]:
    """How a copy holds a mapping, a set and a list: as themselves, or frozen (immutable,
    empty ones shared)."""
    return (_frozen_map, _frozen_set, tuple) if frozen else (dict, set, list)


def copy_state(state: PropagationState | None, frozen: bool = False) -> PropagationState | None:
    """A copy of ``state`` whose containers change independently of the
    original's. The masks are shared: nothing edits a mask in place (the
    propagation, the corrections and the annotation always store new arrays).

    ``frozen``: a copy only ever read or copied again (the undo history's):
    its containers are immutable and its empty ones shared, so that thousands
    of objects' snapshots cost little (each empty ``set`` alone is 216 bytes)."""
    if state is None:
        return None
    as_map, as_set, as_list = _copiers(frozen)
    snap = copy.copy(state)
    for name in ("prompts", "user_masks", "results", "info"):
        setattr(snap, name, as_map(getattr(state, name)))
    snap.stops = as_list(state.stops)
    snap.dirty = as_set(state.dirty)
    snap.dirty_keys = as_set(state.dirty_keys)
    return snap


def adopt_state(target: PropagationState, source: PropagationState) -> None:
    """Make ``target`` hold ``source``'s contents (``target`` keeps its identity,
    so that a caller holding ``obj.state`` sees the result of a run)."""
    for f in fields(PropagationState):
        setattr(target, f.name, getattr(source, f.name))


@dataclass
class AnnotatedObject:
    """One object of an annotation.

    id: its label (1..65535); name; color: (r, g, b) 0..255.
    state: its :class:`~napari_sam.propagation.PropagationState` along its
        axis (the key slices with their prompts, the painted slices, the
        stop slices, every slice's result and the stop decisions); None
        until its first key slice. A 2D image is a volume of one slice.
    corrections: the 3D corrections applied so far, in order
        (:mod:`napari_sam.corrections`).
    painted: slices (along the state's axis) the user painted by hand
        (key slices: never changed by a correction).
    propagated: whether the object was propagated at least once.
    log: the actions that made its state, in order (plain dicts, see
        :mod:`napari_sam.annotation.actions`): what a session exports as a
        prompts file; None when unknown (a session saved before it was kept).
    pending: provisional results of a running propagation, slice -> mask,
        shown until the run finishes (not saved, not in the history).
    """

    id: int
    name: str
    color: tuple[int, int, int]
    state: PropagationState | None = None
    corrections: list[Correction] = field(default_factory=list)
    painted: set[int] = field(default_factory=set)
    propagated: bool = False
    pending: dict[int, np.ndarray] = field(default_factory=dict)
    log: list[dict[str, Any]] | None = field(default_factory=list)

    @property
    def axis(self) -> int | None:
        """The axis its key slices lie along (None before the first one)."""
        return None if self.state is None else self.state.axis

    @property
    def key_slices(self) -> list[int]:
        """Sorted slices the user gave (prompts, paint, stop slices)."""
        return [] if self.state is None else self.state.key_slices

    def snapshot(self, frozen: bool = False) -> AnnotatedObject:
        """A copy (containers copied, masks shared); ``frozen``: one for the undo
        history, only ever read or copied again (see :func:`copy_state`)."""
        as_map, as_set, as_list = _copiers(frozen)
        return AnnotatedObject(
            self.id,
            self.name,
            tuple(self.color),
            copy_state(self.state, frozen),  # type: ignore
            as_list(self.corrections),
            as_set(self.painted),
            self.propagated,
            as_map({}),
            None if self.log is None else as_list(self.log),
        )

    def masks(self, pending: bool = True) -> ObjectMasks | None:
        """The object's current result for painting the label map (None when it has none):
        every non-empty slice result (with ``pending``, a running propagation's
        provisional ones included), its key slices claiming their voxels first."""
        st = self.state
        if st is None:
            return None
        results = dict(st.results)
        if pending:
            results.update({i: m for i, m in self.pending.items() if i not in st.key_slices})
        keep = {i: m for i, m in results.items() if _any(m)}
        return ObjectMasks(self.id, st.axis, keep, set(st.key_slices))

    def slices_holding(self) -> list[int]:
        """Sorted slices (along its axis) where the object's result is non-empty."""
        st = self.state
        return [] if st is None else sorted(i for i, m in st.results.items() if _any(m))


def _any(mask: Any) -> bool:
    return bool(mask.any())
