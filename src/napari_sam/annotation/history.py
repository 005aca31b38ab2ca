"""Undo and redo of an annotation: its own history of object snapshots.

Each undoable step is an :class:`Entry`: the objects it touched as they were
before and after (snapshots share masks, which nothing edits in place), the
order of the objects and the current object before and after. Undo puts the
"before" objects back, redo the "after" ones; the label map is then painted
again from the objects by the one overlap rule, so it never drifts from them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .objects import AnnotatedObject

__all__ = ["Entry", "History"]


@dataclass
class Entry:
    """One undoable step.

    what: its description; before / after: object id -> snapshot (None: the
    object did not exist); order_*: the object ids in order; current_*: the
    current object id.
    """

    what: str
    before: dict[int, AnnotatedObject | None]
    after: dict[int, AnnotatedObject | None]
    order_before: list[int]
    order_after: list[int]
    current_before: int | None
    current_after: int | None

    @property
    def objects(self) -> set[int]:
        return set(self.before) | set(self.after)


class History:
    """The undo and redo stacks (at most ``limit`` steps each)."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._undo: deque[Entry] = deque(maxlen=limit)
        self._redo: deque[Entry] = deque(maxlen=limit)

    def push(self, entry: Entry) -> None:
        """Record a new step (clears the redo stack)."""
        self._undo.append(entry)
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def peek_undo(self) -> Entry | None:
        return self._undo[-1] if self._undo else None

    def peek_redo(self) -> Entry | None:
        return self._redo[-1] if self._redo else None

    def undone(self) -> Entry:
        """Move the last step to the redo stack and return it."""
        entry = self._undo.pop()
        self._redo.append(entry)
        return entry

    def redone(self) -> Entry:
        """Move the last undone step back to the undo stack and return it."""
        entry = self._redo.pop()
        self._undo.append(entry)
        return entry

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    def descriptions(self) -> list[str]:
        """What each undoable step did, oldest first."""
        return [e.what for e in self._undo]
