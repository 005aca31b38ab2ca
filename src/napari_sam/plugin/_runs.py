"""Propagations and corrections in the background: a napari ``thread_worker`` over a run's job.

:class:`RunWorker` runs an annotation :class:`~napari_sam.annotation.Run`'s
job (a generator of ``Progress`` events) in a napari generator worker. The
worker thread only runs the job, on the run's private copy of the object's
state; every event comes back to the GUI thread, where the annotation applies
it (the slice is shown at once) and, at the end (finished, cancelled or
failed), finishes the run in one undoable step. Progress shows in napari's
activity dock and through :attr:`progressed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Signal

from ..annotation import Run
from ..corrections import Correction
from ..errors import NapariSamError
from ..propagation import Propagator
from ._notify import notify
from ._progress_panel import update_napari_progress

if TYPE_CHECKING:
    from ._session import SegmentSession

__all__ = ["RunWorker"]


class RunWorker(QObject):
    """The session's one background run at a time."""

    started = Signal()
    #: (slice index, done, total) after every finished slice
    progressed = Signal(int, int, int)
    #: True when the run was cancelled
    finished = Signal(bool)

    def __init__(self, session: SegmentSession) -> None:
        super().__init__(session)
        self.s = session
        self.run: Run | None = None
        self.pbar: Any = None
        self._worker: Any = None
        self._cancelled = False

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, run: Run, what: str) -> bool:
        """Run ``run`` in the background (``what``: "propagating liver"). Returns True."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.run = run
        self._cancelled = False
        self.pbar = progress(total=0, desc=f"napari-sam: {what}")
        worker = create_worker(run.steps, _ignore_errors=True)  # errors: a notification (below)
        worker.yielded.connect(self._on_event)
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        worker.errored.connect(lambda exc: notify("error", f"napari-sam: {what} failed: {exc}"))
        self._worker = worker
        self.s.status.emit(f"{what}...")
        self.started.emit()
        worker.start()
        return True

    def _propagator_for(self, obj: Any, action: str) -> Propagator | None:
        """A propagator along the object's axis, or None (with a notification)."""
        s = self.s
        if s.source.is_2d:
            notify("info", "napari-sam: propagation needs a 3D volume (this image is 2D)")
            return None
        if self.busy:
            notify("info", "napari-sam: a propagation is already running")
            return None
        if obj is None or obj.state is None or not obj.state.key_slices:
            notify("info", f"napari-sam: commit at least one slice of the object before you {action}")
            return None
        if obj.state.axis != s.pos.axis:
            notify("warning", f"napari-sam: {obj.name} was segmented along axis {obj.state.axis}; view that axis")
            return None
        return Propagator(s.backend_for(obj), s.store(), key_choice=s.model.key_choice)

    def propagate(self, obj: Any) -> bool:
        """Propagate ``obj`` (an annotation object) in the background. Returns True if it started."""
        propagator = self._propagator_for(obj, "propagate")
        if propagator is None:
            return False
        if not obj.state.needs_run:
            self.s.status.emit(f"{obj.name}: already propagated (commit a correction to redo part of it)")
            return False
        return self.start(self.s.model.propagation(obj.id, propagator), f"propagating {obj.name}")

    def correct(self, obj: Any, correction: Correction) -> bool:
        """Apply a 3D correction to ``obj`` in the background. Returns True if it started."""
        propagator = self._propagator_for(obj, "correct it")
        if propagator is None:
            return False
        try:
            run = self.s.model.correction(obj.id, correction, propagator)
        except NapariSamError as exc:
            notify("warning", f"napari-sam: {exc}")
            return False
        return self.start(run, f"correcting {obj.name}")

    def adapt(self, obj: Any) -> bool:
        """Adapt the model to ``obj``'s key slices, then propagate it again, in the background."""
        propagator = self._propagator_for(obj, "adapt the model to it")
        if propagator is None:
            return False
        return self.start(self.s.model.adaptation(obj.id, propagator), f"adapting the model to {obj.name}")

    def cancel(self) -> None:
        """Stop after the slice in progress; finished slices are kept."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def _on_event(self, event: Any) -> None:
        run, s = self.run, self.s
        if run is None or s.closed:
            return
        s.layers.apply(s.model.apply(run, event))
        update_napari_progress(self.pbar, int(event.done), int(event.total), f"napari-sam: {run.what}: {event.stage}")
        if event.payload is not None:  # a finished slice (not the run's closing event)
            self.progressed.emit(int(event.payload.index), int(event.done), int(event.total))

    def _on_finished(self, worker: Any) -> None:
        if worker is not self._worker:
            return
        self._worker = None
        run, self.run = self.run, None
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        if run is None or self.s.closed:
            return
        self.s.apply(self.s.model.finish(run))
        if run.adapted is not None:  # kept for the object's later runs (SegmentSession.backend_for)
            self.s.adapted[run.action["weights"].sha256] = run.adapted  # type: ignore[index]
        self.finished.emit(self._cancelled or not run.completed)
