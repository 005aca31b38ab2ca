"""One job protocol for every long computation: a generator of :class:`Progress`.

Propagation, automatic mode, batch segmentation and cache filling are all
*jobs*: generators that do one step of work per ``yield`` and report a
:class:`Progress` event each time, and ``return`` their result. Two consumers
drive them:

- napari's ``thread_worker`` (a generator worker reports every yield and can be
  aborted between yields, which closes the generator);
- :func:`drive`, for scripts and the CLI, which calls a progress callback per
  event and stops when a :class:`Cancel` token is set; the CLI's callback is a
  :class:`ProgressBar` (tqdm on stderr).

A job is stopped in exactly one of two ways: its generator is closed
(``gen.close()``, what napari's ``worker.quit()`` does), or the :class:`Cancel`
token the caller holds is set (checked by :func:`drive` between steps, and by
a job itself around long inner loops with :meth:`Cancel.raise_if_set`).
Either way the job's ``finally`` blocks run, so nothing half-written remains.

This module is a leaf: it imports nothing from napari-sam but ``errors``
(and tqdm only when a :class:`ProgressBar` is made).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import NapariSamError

__all__ = ["Cancel", "Cancelled", "Job", "Progress", "ProgressBar", "ProgressCallback", "drive", "threaded"]

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One step of a job.

    done, total: steps finished and planned (``total`` may grow as a job learns
        more, e.g. propagation discovering where an object ends);
    stage: a short human text ("slice 4/20", "decoding 120/300 prompts");
    payload: what this step produced, for consumers that show results as they
        arrive (a propagation ``SliceUpdate``, an automatic-mode slice ...);
        ``None`` when the step has nothing to show.
    """

    done: int
    total: int
    stage: str = ""
    payload: Any = None

    @property
    def fraction(self) -> float:
        """``done / total`` clipped to [0, 1] (0 for an empty job)."""
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))


#: a job: yields :class:`Progress`, returns its result
Job = Generator[Progress, None, R]
#: the callback :func:`drive` calls with each event
ProgressCallback = Callable[[Progress], None]


class Cancelled(NapariSamError):
    """A job was cancelled through its :class:`Cancel` token."""


class Cancel(threading.Event):
    """The one cancel token: ``set()`` it from any thread (a button, SIGINT,
    a batch scheduler); jobs stop at their next step."""

    def raise_if_set(self, what: str = "job") -> None:
        """Raise :class:`Cancelled` if the token is set (for a job's inner loops)."""
        if self.is_set():
            raise Cancelled(f"{what} cancelled")


def drive(job: Job[R], progress: ProgressCallback | None = None, cancel: Cancel | None = None, what: str = "job") -> R:
    """Run ``job`` to its end and return its result.

    progress: called with every :class:`Progress` event, on the caller's thread.
    cancel: checked after every step; when set, the generator is closed (its
        ``finally`` blocks run) and :class:`Cancelled` is raised.
    """
    while True:
        if cancel is not None and cancel.is_set():
            job.close()
            raise Cancelled(f"{what} cancelled")
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


def threaded(work: Callable[[ProgressCallback, Cancel], R], cancel: Cancel | None = None) -> Job[R]:
    """A callback-style computation as a job.

    ``work(progress, cancel)`` runs on its own thread; every :class:`Progress` it
    reports is yielded here, on the consumer's thread, and its return value is
    the job's result (its exception is re-raised here). Closing the job sets
    ``cancel`` and waits for ``work`` to notice it and return, so a job driven
    by napari's ``thread_worker`` can be aborted like any other.
    """
    import queue

    cancel = cancel if cancel is not None else Cancel()
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work(events.put, cancel)
        except BaseException as exc:  # re-raised on the consumer's thread
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=target, name="napari-sam job", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not None:
            yield event
    finally:
        if thread.is_alive():
            cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class ProgressBar:
    """The command line's consumer of :class:`Progress` events: a tqdm bar on
    stderr (silent when ``quiet``), usable as :func:`drive`'s ``progress``.

    desc: the bar's label; unit: what a step is ("slice", "case", "tile").
    Called with a :class:`Progress` event it shows done / total and the stage.
    It also takes ``(done, total, stage)``, for the computations that report
    through such a callback rather than as a job (fine-tuning's training and
    its embedding of the training volumes).
    """

    def __init__(self, desc: str, quiet: bool = False, unit: str = "slice") -> None:
        self.desc, self.quiet, self.unit = desc, quiet, unit
        self._bar = None  # made at the first event: a job that fails before any step prints no bar

    def __call__(self, event: Progress | int, total: int | None = None, stage: str = "") -> None:
        if not isinstance(event, Progress):
            event = Progress(int(event), int(total or 0), stage)
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=0, desc=self.desc, unit=self.unit, disable=self.quiet, file=sys.stderr, leave=True)
        if self._bar.total != event.total:
            self._bar.total = event.total
        self._bar.n = event.done
        if event.stage:
            self._bar.set_postfix_str(event.stage, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
