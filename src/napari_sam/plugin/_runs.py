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
        update_napari_progress(self.pbar, int(event.done), int(event.total),
                               f"napari-sam: {run.what}: {event.stage}")
        index = getattr(event.payload, "index", -1)
        self.progressed.emit(int(index), int(event.done), int(event.total))

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
        self.finished.emit(self._cancelled or not run.completed)
