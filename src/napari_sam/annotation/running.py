"""The run methods of an annotation: long work on one object, shown as it goes, adopted at the end.

:class:`RunMethods` is the part of :class:`~napari_sam.annotation.Annotation`
that starts, applies and finishes :class:`~napari_sam.annotation.runs.Run` s
(see that module for the threading design).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..corrections import Correction, apply_correction, check_correction
from ..errors import InputError, UsageError
from ..finetune.adapt import adapt_to_slices
from ..finetune.adapted import AdaptedWeights, adapted_backend, adapted_weights, base_fingerprint, root_model
from ..intensity import Window
from ..jobs import Cancel, Cancelled, Progress, ProgressCallback, drive, threaded
from ..propagation import PropagationState, Propagator
from .actions import log_run
from .changes import ChangeSet
from .objects import adopt_state, copy_state
from .runs import Run

if TYPE_CHECKING:
    from .model import Annotation

__all__ = ["RunMethods"]


def _window_of(propagator: Propagator) -> dict[str, Any]:
    """``{"window": [lo, hi]}`` of the embeddings a run uses (logged with it), or nothing."""
    win = getattr(propagator.embeddings, "window", None)
    return {"window": [float(win.lo), float(win.hi)]} if isinstance(win, Window) else {}


class RunMethods:
    """Runs on an annotation's objects (mixed into :class:`Annotation`)."""

    def start_run(
        self: Annotation,
        object_id: int,
        work: Callable[[PropagationState], Iterator[Any]],
        what: str,
        corrections: Sequence[Correction] = (),
        propagates: bool = True,
    ) -> Run:
        """A :class:`Run` of ``work`` on a copy of the object's state (see :mod:`.runs`)."""
        with self._lock:
            obj = self.object(object_id)
            if obj.state is None or not obj.state.key_slices:
                raise UsageError(f"{obj.name}: commit at least one key slice first")
            if obj.id in self._runs:
                raise UsageError(f"{obj.name}: a run is already in progress")
            if self.is_2d and propagates:
                raise UsageError("propagation needs a 3D volume (this image is 2D)")
            run = Run(obj.id, copy_state(obj.state), work, what, list(corrections), propagates)  # type: ignore
            run.log_at = len(obj.log or ())
            self._runs[obj.id] = run
            return run

    def propagation(self: Annotation, object_id: int, propagator: Propagator) -> Run:
        """A run that propagates the object from its key slices (only what is out of date)."""
        obj = self.object(object_id)
        run = self.start_run(object_id, propagator.run, f"propagate {obj.name}")
        run.action = {"op": "propagate", **_window_of(propagator)}
        return run

    def correction(self: Annotation, object_id: int, correction: Correction, propagator: Propagator) -> Run:
        """A run that applies a 3D correction (:func:`napari_sam.corrections.apply_correction`).
        InputError (one line) for a click outside the volume or an object with no prompt."""
        obj = self.object(object_id)
        if obj.state is None:
            raise InputError(f"{obj.name}: a correction needs a prompt to start from")
        check_correction(correction, obj.state)
        spacing = self.spacing_zyx

        def work(state: PropagationState) -> Iterator[Any]:
            apply_correction(state, propagator, correction, spacing_zyx=spacing)
            yield from ()

        run = self.start_run(object_id, work, f"correct {obj.name}", corrections=[correction])
        run.action = {"op": "correction", **correction.to_json(), **_window_of(propagator)}
        return run

    def adaptation(
        self: Annotation,
        object_id: int,
        propagator: Propagator,
        time_budget: float = 30.0,
        steps: int | None = None,
        weights: AdaptedWeights | None = None,
    ) -> Run:
        """A run that adapts a copy of ``propagator``'s model to the object's key slices
        (:func:`napari_sam.finetune.adapt.adapt_to_slices`, at most ``time_budget`` s; exactly
        ``steps`` optimiser steps when given, as a replay does), then propagates the object
        again with it. The base model is never changed; the adapted one is ``run.adapted``
        once trained (for the object's later runs) and its weights are logged
        (:class:`~napari_sam.finetune.adapted.AdaptedWeights`, saved with a session).
        weights: an earlier adaptation's weights (a replay): used instead of training
        when they were made on ``propagator``'s model, else it trains ``steps`` steps.
        Progress: one event per training step, then one per propagated slice."""
        obj = self.object(object_id)
        action: dict[str, Any] = {"op": "adapt", **_window_of(propagator)}
        fingerprint = base_fingerprint(root_model(propagator.backend)) if weights is not None else None
        reuse = weights is not None and fingerprint == weights.base

        def train(state: PropagationState) -> Iterator[Any]:
            keys = {k: state.results[k] for k in state.key_slices if k in state.results and state.results[k].any()}
            if not keys:
                return
            if reuse:  # as many events as the training had, so that a replay stopped after n events agrees
                adapted, done, kept = adapted_backend(propagator.backend, weights, fingerprint), weights.steps, weights
                for i in range(done):
                    yield Progress(i + 1, done, f"adapting: step {i + 1} (saved weights)")
            else:
                budget, most = (time_budget, 60) if steps is None else (float("inf"), steps)

                def work(progress: ProgressCallback, cancel: Cancel) -> Any:
                    return adapt_to_slices(
                        propagator.backend, propagator.embeddings, keys, budget, most, None, cancel, progress
                    )

                result = yield from threaded(work)
                adapted, done = result.backend, result.steps
                kept = adapted_weights(propagator.backend, adapted, done)
                adapted.adapted_from = root_model(propagator.backend)
            action["steps"], action["weights"] = done, kept
            run.adapted = adapted
            state.mark_all()
            yield from Propagator(
                adapted, propagator.embeddings, rules=propagator.rules, key_choice=propagator.key_choice
            ).run(state)

        run = self.start_run(object_id, train, f"adapt {obj.name}")
        run.action = action
        return run

    def apply(self: Annotation, run: Run, event: Any) -> ChangeSet:
        """Show one event of ``run`` (its finished slice) at once; not an undo step.

        The slice is shown provisionally, on its own plane only: the object takes
        the voxels there that are free or its own (a full repaint per slice would
        stall a GUI). :meth:`finish` paints the whole map by the overlap rule."""
        payload = getattr(event, "payload", event)
        with self._lock:
            obj = self._objects.get(run.object_id)
            if (
                obj is None
                or obj.state is None
                or self._runs.get(run.object_id) is not run
                or not hasattr(payload, "mask")
                or int(payload.index) in run.user_slices
            ):
                return ChangeSet(self.shape)
            index, mask = int(payload.index), np.asarray(payload.mask, bool)
            obj.pending[index] = mask
            plane: list[Any] = [slice(None)] * 3
            plane[obj.state.axis] = index
            now = self._labels[tuple(plane)]
            before = now.copy()
            now[(now == obj.id) & ~mask] = 0
            now[mask & (now == 0)] = obj.id
            rc = list(np.nonzero(before != now))
            rc.insert(obj.state.axis, np.full(rc[0].shape, index, np.intp))
            idx = tuple(rc)
            return ChangeSet(
                self.shape,
                frozenset({obj.id}),
                idx,
                self._labels[idx],  # type: ignore[arg-type]
                False,
                f"{run.what}: slice {index}",
            )

    def finish(self: Annotation, run: Run) -> ChangeSet:
        """End ``run`` (finished or cancelled): its state, with the user's changes
        made meanwhile, becomes the object's, in one undoable step."""
        with self._lock:
            if self._runs.get(run.object_id) is not run:
                raise UsageError(f"{run.what}: not a running run of this annotation")
            del self._runs[run.object_id]
            obj = self._objects.get(run.object_id)
            if obj is None:
                return ChangeSet(self.shape)
            obj.pending.clear()
            for op in run.queued:
                op(run.state)
            with self.batch(run.what) as step:
                step.touch(self, obj.id)
                adopt_state(obj.state, run.state)  # type: ignore[arg-type]
                obj.propagated = obj.propagated or run.propagates
                if run.completed:
                    obj.corrections.extend(run.corrections)
                log_run(obj, run)
            return step.changes

    def run_to_end(
        self: Annotation,
        run: Run,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
        live: bool = False,
    ) -> ChangeSet:
        """Drive ``run`` on this thread (scripts, the CLI) and finish it. progress: called
        with each event; cancel: stops between steps (finished slices are kept);
        live: show each slice as it finishes (slower: a repaint per slice)."""

        def on_event(event: Any) -> None:
            if live:
                self.apply(run, event)
            if progress is not None:
                progress(event)

        try:
            drive(run.steps(), on_event, cancel, what=run.what)
        except Cancelled:
            pass
        finally:
            changes = self.finish(run)
        return changes

    def propagate(
        self: Annotation,
        object_id: int,
        propagator: Propagator,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
    ) -> ChangeSet:
        """Propagate the object on this thread (see :meth:`run_to_end`)."""
        return self.run_to_end(self.propagation(object_id, propagator), progress, cancel)

    def correct(self: Annotation, object_id: int, correction: Correction, propagator: Propagator) -> ChangeSet:
        """Apply a 3D correction on this thread."""
        return self.run_to_end(self.correction(object_id, correction, propagator))
