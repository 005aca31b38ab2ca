"""The annotation model: one session of segmenting objects in one image, without Qt.

See the package documentation (:mod:`napari_sam.annotation`) for the design.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..io import default_color
from ..overlaps import resolve_overlaps
from ..prompts import SlicePrompt
from ..propagation import PropagationState
from .actions import commit_action, log_action, paint_action
from .changes import ChangeSet
from .history import Entry, History
from .keyslices import key_op, paint_op
from .objects import AnnotatedObject
from .running import RunMethods
from .runs import Run, StateOp

__all__ = ["Annotation", "Step", "MAX_UNDO"]

#: undo steps an annotation keeps by default
MAX_UNDO = 100


class Step:
    """One undoable step being made (see :meth:`Annotation.batch`): the objects
    it touched as they were before, and, once closed, its :class:`ChangeSet`."""

    def __init__(self, model: Annotation, what: str, record: bool = True) -> None:
        self.what = what
        self.record = record
        self.before: dict[int, AnnotatedObject | None] = {}
        self.order_before = list(model._objects)
        self.current_before = model.current_id
        self.table = False
        self.changes: ChangeSet = ChangeSet(model.shape, what=what)

    def touch(self, model: Annotation, object_id: int) -> None:
        """Record object ``object_id`` (or its absence) as it is before this step changes it."""
        if object_id not in self.before:
            obj = model._objects.get(object_id)
            self.before[object_id] = None if obj is None else obj.snapshot(frozen=True)


class Annotation(RunMethods):
    """One annotation session over one image (Qt-free; the widget and the
    prompts-file replay both drive it).

    shape: the image's (z, y, x) (a 2D image is (1, y, x) with ``is_2d``);
    spacing_zyx: voxel size in mm, (z, y, x), for the overlap rule and the
    corrections; key_choice: how a box key slice picks its mask
    (:func:`napari_sam.annotation.keyslices.decode_key`); max_undo: steps kept.

    Every mutation returns a :class:`ChangeSet` (the label-map voxels that
    changed and their new values, the objects touched) for a front to apply
    to its layers. The label map is always the objects painted by the one
    overlap rule (:func:`napari_sam.overlaps.resolve_overlaps`).

    Threads: call the methods from one thread (the GUI thread in napari); a
    lock serialises callers that do not. Long work runs as a :class:`Run`
    on a private copy of an object's state, on any thread.
    """

    def __init__(
        self,
        shape: Sequence[int],
        spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
        is_2d: bool = False,
        key_choice: str = "single",
        max_undo: int = MAX_UNDO,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"image shape {shape}: expected (z, y, x)")
        if is_2d and shape[0] != 1:
            raise InputError(f"a 2D image is one slice, not {shape[0]}")
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.spacing_zyx = tuple(float(s) for s in spacing_zyx)
        self.is_2d = bool(is_2d)
        self.key_choice = key_choice
        self.current_id: int | None = None
        self.history = History(max_undo)
        self._objects: dict[int, AnnotatedObject] = {}
        self._labels = np.zeros(shape, np.uint16)
        self._runs: dict[int, Run] = {}
        self._step: Step | None = None
        self._lock = threading.RLock()
        #: called with (annotation, what) on the owner's thread after every finished action
        #: (a recorded step, an undo, a redo), e.g. a crash-recovery journal
        self.listeners: list[Callable[[Annotation, str], None]] = []

    # ------------------------------------------------------------------ reading
    @property
    def labels(self) -> np.ndarray:
        """The current (z, y, x) uint16 label map (read-only)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def objects(self) -> list[AnnotatedObject]:
        """The objects, in order (the order breaks exact ties of the overlap rule)."""
        return list(self._objects.values())

    def object(self, object_id: int) -> AnnotatedObject:
        """Object ``object_id``; KeyError when there is none."""
        try:
            return self._objects[int(object_id)]
        except KeyError:
            raise KeyError(f"no object with id {object_id}") from None

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def current(self) -> AnnotatedObject | None:
        """The current object (where commits go), None when there is none."""
        return self._objects.get(self.current_id) if self.current_id is not None else None

    def next_id(self) -> int:
        """The smallest id above every object's."""
        return max(self._objects, default=0) + 1

    def is_running(self, object_id: int | None = None) -> bool:
        """Whether a run is in progress (on ``object_id``, or on any object)."""
        return bool(self._runs) if object_id is None else object_id in self._runs

    def plane_of(self, object_id: int, axis: int, index: int) -> np.ndarray:
        """Where object ``object_id`` shows on plane ``index`` along ``axis``: (rows, cols) bool."""
        return np.take(self._labels, index, axis=axis) == object_id

    def previous_for(self, object_id: int | None, axis: int, index: int, prompt: SlicePrompt) -> np.ndarray | None:
        """The mask that clicks refine (SAM's interactive loop): the object's pixels on
        the plane when the prompt is clicks alone with a positive one, else None."""
        if object_id not in self._objects or prompt.box is not None or not np.any(prompt.labels == 1):
            return None
        plane = self.plane_of(object_id, axis, index)
        return plane if plane.any() else None

    # ------------------------------------------------------------------ steps
    @contextmanager
    def batch(self, what: str, record: bool = True) -> Iterator[Step]:
        """Group the mutations inside into one undoable step with one repaint; the
        step's :class:`ChangeSet` is ``step.changes`` after the block. Nested
        batches join the outer one. An error inside rolls the step back."""
        with self._lock:
            if self._step is not None:
                yield self._step
                return
            step = self._step = Step(self, what, record)
            try:
                yield step
            except BaseException:
                self._step = None
                self._restore(step.before, step.order_before, step.current_before)
                self._repaint(set(step.before), True, what)
                raise
            self._step = None
            self._close(step)

    def _close(self, step: Step) -> None:
        table = step.table or list(self._objects) != step.order_before or self.current_id != step.current_before
        step.changes = self._repaint(set(step.before), table, step.what)
        if step.record and step.before:
            if self.history.limit > 0:  # no history (max_undo=0): no snapshot to keep
                after = {
                    oid: (o.snapshot(frozen=True) if (o := self._objects.get(oid)) else None) for oid in step.before
                }
                self.history.push(
                    Entry(
                        step.what,
                        step.before,
                        after,
                        step.order_before,
                        list(self._objects),
                        step.current_before,
                        self.current_id,
                    )
                )
            self._finished(step.what)

    def _finished(self, what: str) -> None:
        """Tell the listeners that an action finished (a step was recorded, undone or redone)."""
        for listener in list(self.listeners):
            listener(self, what)

    def _repaint(self, objects: set[int], table: bool, what: str) -> ChangeSet:
        painted = [m for o in self._objects.values() if (m := o.masks()) is not None]
        new = resolve_overlaps(self.shape, painted, self.spacing_zyx)
        changes = ChangeSet.between(self._labels, new, objects, table, what)
        self._labels = new
        return changes

    def _restore(self, snaps: dict[int, AnnotatedObject | None], order: list[int], current: int | None) -> None:
        for oid, snap in snaps.items():
            if snap is None:
                self._objects.pop(oid, None)
            else:
                self._objects[oid] = snap.snapshot()
        ordered = {oid: self._objects[oid] for oid in order if oid in self._objects}
        ordered.update({oid: o for oid, o in self._objects.items() if oid not in ordered})
        self._objects = ordered
        self.current_id = current if current in self._objects else None

    def _check_idle(self, objects: set[int], action: str) -> None:
        busy = sorted(objects & set(self._runs))
        if busy:
            name = self._objects[busy[0]].name if busy[0] in self._objects else f"object {busy[0]}"
            raise UsageError(f"cancel or wait for the run on {name} before you {action}")

    # ------------------------------------------------------------------ undo / redo
    @property
    def can_undo(self) -> bool:
        return self.history.can_undo

    @property
    def can_redo(self) -> bool:
        return self.history.can_redo

    def undo(self) -> ChangeSet | None:
        """Undo the last step (None when there is none). UsageError while a run
        works on an object that step touched."""
        with self._lock:
            entry = self.history.peek_undo()
            if entry is None:
                return None
            self._check_idle(entry.objects, "undo")
            self.history.undone()
            self._restore(entry.before, entry.order_before, entry.current_before)
            changes = self._repaint(entry.objects, True, f"undo {entry.what}")
            self._finished(changes.what)
            return changes

    def redo(self) -> ChangeSet | None:
        """Redo the last undone step (None when there is none)."""
        with self._lock:
            entry = self.history.peek_redo()
            if entry is None:
                return None
            self._check_idle(entry.objects, "redo")
            self.history.redone()
            self._restore(entry.after, entry.order_after, entry.current_after)
            changes = self._repaint(entry.objects, True, f"redo {entry.what}")
            self._finished(changes.what)
            return changes

    # ------------------------------------------------------------------ objects
    def add_object(
        self,
        name: str | None = None,
        color: Sequence[int] | None = None,
        object_id: int | None = None,
        axis: int | None = None,
    ) -> ChangeSet:
        """Add an object (the new current one): id ``object_id`` or the next free one,
        ``name`` (default "object <id>"), ``color`` (r, g, b) 0..255 (default by id);
        ``axis``: the axis of its key slices, if known now. The new id is the
        change set's only object (and ``current_id``)."""
        oid = self.next_id() if object_id is None else int(object_id)
        if oid in self._objects:
            raise InputError(f"object id {oid} exists")
        if not 1 <= oid <= 65535:
            raise InputError(f"object id {oid}: must be in 1..65535")
        with self.batch(f"add object {oid}") as step:
            step.touch(self, oid)
            obj = AnnotatedObject(
                oid, (name or "").strip() or f"object {oid}", tuple(int(c) for c in (color or default_color(oid)))
            )  # type: ignore[arg-type]
            if axis is not None:
                obj.state = self._new_state(axis)
            self._objects[oid] = obj
            self.current_id = oid
            step.table = True
        return step.changes

    def rename(self, object_id: int, name: str) -> ChangeSet:
        """Rename an object (an empty name is ignored)."""
        return self._edit(object_id, f"rename object {object_id}", name=name.strip() or None)

    def recolor(self, object_id: int, color: Sequence[int]) -> ChangeSet:
        """Give an object a new (r, g, b) colour, 0..255."""
        return self._edit(object_id, f"recolour object {object_id}", color=tuple(int(c) for c in color))

    def _edit(self, object_id: int, what: str, **values: Any) -> ChangeSet:
        obj = self.object(object_id)
        with self.batch(what) as step:
            step.touch(self, obj.id)
            for k, v in values.items():
                if v is not None:
                    setattr(obj, k, v)
            step.table = True
        return step.changes

    def select(self, object_id: int | None) -> ChangeSet:
        """Make ``object_id`` the current object (not an undo step)."""
        if object_id is not None:
            self.object(object_id)
        with self.batch("select", record=False) as step:
            self.current_id = object_id
            step.table = True
        return step.changes

    def delete_object(self, object_id: int) -> ChangeSet:
        """Remove an object and its pixels (undoable)."""
        obj = self.object(object_id)
        self._check_idle({obj.id}, f"delete {obj.name}")
        with self.batch(f"delete {obj.name}") as step:
            step.touch(self, obj.id)
            del self._objects[obj.id]
            if self.current_id == obj.id:
                self.current_id = next(reversed(self._objects), None)
        return step.changes

    def set_range(self, object_id: int, rng: tuple[int, int] | None, axis: int = 0) -> ChangeSet:
        """Limit the object to the inclusive slices ``rng`` = (first, last) along its
        axis (``axis`` if it has no key slice yet), or None for the whole axis;
        everything is recomputed on the next propagation."""
        obj = self.object(object_id)
        self._check_idle({obj.id}, f"change the range of {obj.name}")
        with self.batch(f"range of {obj.name}") as step:
            step.touch(self, obj.id)
            if obj.state is None:
                obj.state = self._new_state(axis)
            obj.state.set_range(rng)
            log_action(obj, {"op": "range", "range": None if obj.state.range is None else list(obj.state.range)})
        return step.changes

    def _new_state(self, axis: int) -> PropagationState:
        if self.is_2d and axis != 0:
            raise InputError(f"axis {axis}: a 2D image has only axis 0")
        return PropagationState(shape=self.shape, axis=axis)

    # ------------------------------------------------------------------ key slices
    def commit(
        self,
        object_id: int,
        index: int,
        prompt: SlicePrompt | None = None,
        mask: np.ndarray | None = None,
        axis: int = 0,
        exact: bool = True,
        window: Sequence[float] | None = None,
    ) -> ChangeSet:
        """Make slice ``index`` (along the object's axis) a key slice of ``object_id``.

        prompt: the user's clicks and/or box there ((row, col) of the slice);
            clicks that are all negative make a stop slice (the object is absent).
        mask: the (rows, cols) bool mask the user accepted (e.g. the preview);
            None lets the propagation decode ``prompt``.
        exact: ``mask`` is what :func:`~napari_sam.annotation.keyslices.decode_key`
            gives for ``prompt`` (its first candidate, on the whole slice): the
            slice is then keyed by its prompt (a full re-run decodes it again);
            otherwise the mask itself is kept, as a painted slice is.
        axis: the axis of the object's first key slice (later ones must match).
        window: the intensity window ``[lo, hi]`` the prompt was decoded under (logged).
        """
        if prompt is None and mask is None:
            raise UsageError("commit needs a prompt, a mask or both")
        obj = self.object(object_id)
        where = f"slice {index}" if not self.is_2d else "the image"
        with self.batch(f"commit {where} of {obj.name}") as step:
            self._key_change(
                obj, index, key_op(index, prompt, mask, exact), axis, commit_action(index, prompt, mask, exact, window)
            )
        return step.changes

    def paint(self, labels: np.ndarray, axis: int = 0, what: str = "paint") -> ChangeSet:
        """The user painted or erased: ``labels`` is the whole (z, y, x) label map as
        they left it. Each object whose pixels changed on a slice (along its own
        axis; ``axis`` for an object with no key slice yet) gets that slice as a
        painted key slice holding exactly its pixels there, or a stop slice when
        none is left. A label that is no object yet becomes a new object."""
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise InputError(f"painted labels of shape {labels.shape}, the annotation's is {self.shape}")
        diff = labels != self._labels
        if not diff.any():
            return ChangeSet(self.shape, what=what)
        touched = (set(np.unique(labels[diff]).tolist()) | set(np.unique(self._labels[diff]).tolist())) - {0}
        with self.batch(what) as step:
            for oid in sorted(int(v) for v in touched):
                if oid not in self._objects:
                    self.add_object(object_id=oid)
                obj = self._objects[oid]
                ax = obj.axis if obj.axis is not None else axis
                mine = diff & ((labels == oid) | (self._labels == oid))
                other = tuple(a for a in range(3) if a != ax)
                for i in np.flatnonzero(mine.any(axis=other)):
                    plane = np.take(labels, int(i), axis=ax) == oid
                    self._key_change(obj, int(i), paint_op(int(i), plane, obj.painted), ax, paint_action(int(i), plane))
        return step.changes

    def load_masks(
        self, object_id: int, masks: dict[int, np.ndarray], axis: int = 0, up_to_date: bool = True
    ) -> ChangeSet:
        """Give object ``object_id`` the (rows, cols) bool ``masks`` (slice -> mask, along
        ``axis``) as key slices, e.g. from an existing segmentation. ``up_to_date``:
        the slices in between hold no object, nothing is left to propagate."""
        obj = self.object(object_id)
        with self.batch(f"load {obj.name}") as step:
            for i, m in sorted(masks.items()):
                self._key_change(
                    obj, int(i), key_op(int(i), None, m, False), axis, commit_action(int(i), None, m, False)
                )
            if up_to_date:
                self.settle(obj.id)
        return step.changes

    def paint_slice(self, object_id: int, index: int, plane: np.ndarray, axis: int = 0) -> ChangeSet:
        """Object ``object_id``'s painted (rows, cols) bool pixels on slice ``index`` along
        its axis (``axis`` before its first key slice), as a paint stroke leaves them
        (:meth:`paint`; an empty plane: a stop slice)."""
        obj = self.object(object_id)
        plane = np.asarray(plane, bool)
        with self.batch(f"paint slice {index} of {obj.name}") as step:
            ax = obj.axis if obj.axis is not None else axis
            self._key_change(obj, int(index), paint_op(int(index), plane, obj.painted), ax, paint_action(index, plane))
        return step.changes

    def settle(self, object_id: int) -> ChangeSet:
        """Take the object's key slices as up to date: the slices between them hold no
        object and nothing is left to propagate (loaded masks)."""
        obj = self.object(object_id)
        with self.batch(f"settle {obj.name}") as step:
            step.touch(self, obj.id)
            if obj.state is not None:
                obj.state.dirty.clear()
                obj.state.dirty_keys.clear()
                log_action(obj, {"op": "settle"})
        return step.changes

    def _key_change(self, obj: AnnotatedObject, index: int, op: StateOp, axis: int, action: dict[str, Any]) -> None:
        """Apply ``op`` to the object's state now (and log ``action``, :mod:`.actions`);
        during a run on the object, also queue it for the run's state (applied when
        the run finishes)."""
        if obj.state is None:
            obj.state = self._new_state(axis)
        elif obj.state.axis != axis:
            raise InputError(
                f"{obj.name} has its key slices along axis {obj.state.axis}, not {axis}: "
                "view that axis, or add a new object"
            )
        if self._step is not None:
            self._step.touch(self, obj.id)
        op(obj.state)
        log_action(obj, action)
        run = self._runs.get(obj.id)
        if run is not None:
            run.queued.append(op)
            run.user_slices.add(index)
            obj.pending.pop(index, None)
