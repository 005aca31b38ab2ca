"""Long computations on one object (propagation, a 3D correction, adaptation), safe to run on any thread.

A :class:`Run` works on a private copy of the object's propagation state, so
the thread that runs it never touches the annotation. Its :meth:`Run.steps`
is a job of the one protocol (:mod:`napari_sam.jobs`): a generator of
:class:`~napari_sam.jobs.Progress` events whose payload is a
:class:`~napari_sam.propagation.SliceUpdate` for each finished slice. The
thread that owns the annotation hands each event to
:meth:`Annotation.apply` (the slice is shown at once) and, at the end,
calls :meth:`Annotation.finish` (the run's state is adopted in one undoable
step). Whatever the user changes on the object meanwhile (a painted slice)
is applied to the annotation at once and queued for the run's state, so it
is never lost nor overwritten by the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..corrections import Correction
from ..jobs import Job, Progress
from ..propagation import PropagationState
from ..torch_threads import decoding

__all__ = ["Run", "as_progress", "StateOp"]

#: a change of one object's key slices, applied to a propagation state
StateOp = Callable[[PropagationState], None]

_DONE = object()


def as_progress(event: Any) -> Progress:
    """``event`` as a :class:`Progress` (a propagation ``SliceUpdate`` becomes its payload)."""
    if isinstance(event, Progress):
        return event
    if hasattr(event, "index") and hasattr(event, "mask"):
        return Progress(int(event.done), int(event.total), str(event.message), event)
    return Progress(0, 0, str(event), None)


class Run:
    """One long computation on object ``object_id``.

    state: the private copy it works on; what: its description ("propagate
    liver"); work: state -> iterator of events (``Progress`` or
    ``SliceUpdate``); corrections: the corrections it applies (recorded on
    the object when the run completes); propagates: whether it propagates
    (the object is then marked as propagated).
    """

    def __init__(
        self,
        object_id: int,
        state: PropagationState,
        work: Callable[[PropagationState], Iterator[Any]],
        what: str,
        corrections: list[Correction] | None = None,
        propagates: bool = True,
    ) -> None:
        self.object_id = object_id
        self.state = state
        self.what = what
        self.corrections = list(corrections or [])
        self.propagates = propagates
        #: changes the user made to the object during the run, replayed on the run's state at the end
        self.queued: list[StateOp] = []
        #: slices the user changed during the run: the run's results there are not shown
        self.user_slices: set[int] = set()
        #: True once the work ran to its end (False when cancelled)
        self.completed = False
        #: events the work yielded so far (a cancelled run stopped after this many)
        self.events = 0
        #: what the object's action log records for this run (:mod:`.actions`), None: nothing
        self.action: dict[str, Any] | None = None
        #: the length of the object's action log when the run started
        self.log_at = 0
        #: an adaptation's adapted model (set once its training finished), for later runs on the object
        self.adapted: Any = None
        self._work = work

    def steps(self) -> Job[PropagationState]:
        """The job: yields :class:`Progress` (payload: a ``SliceUpdate`` per finished
        slice); returns the run's state. Closing it cancels the run between steps;
        the slices already finished are kept."""
        work = iter(self._work(self.state))
        while True:
            with decoding():  # each step's decoder work on one thread, not across the yield
                event = next(work, _DONE)
            if event is _DONE:
                break
            self.events += 1
            yield as_progress(event)
        self.completed = True
        return self.state
