"""The one job protocol: generators of Progress, driven with a callback and a Cancel token."""

from __future__ import annotations

import pytest

from napari_sam.jobs import Cancel, Cancelled, Progress, drive


def _counting_job(n: int, log: list[str]):
    try:
        for i in range(n):
            yield Progress(i + 1, n, f"step {i + 1}/{n}", payload=i)
        return "finished"
    finally:
        log.append("cleaned up")


def test_drive_reports_every_step_and_returns_the_result():
    events, log = [], []
    assert drive(_counting_job(3, log), events.append) == "finished"
    assert [(e.done, e.total, e.payload) for e in events] == [(1, 3, 0), (2, 3, 1), (3, 3, 2)]
    assert events[-1].fraction == 1.0 and log == ["cleaned up"]


def test_cancel_token_closes_the_job_between_steps():
    cancel, events, log = Cancel(), [], []

    def on_progress(event: Progress) -> None:
        events.append(event)
        if event.done == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="propagation cancelled"):
        drive(_counting_job(10, log), on_progress, cancel, what="propagation")
    assert len(events) == 2 and log == ["cleaned up"]


def test_raise_if_set_and_empty_progress_fraction():
    cancel = Cancel()
    cancel.raise_if_set()
    cancel.set()
    with pytest.raises(Cancelled):
        cancel.raise_if_set("cache filling")
    assert Progress(0, 0).fraction == 0.0


def test_threaded_job_reports_progress_returns_and_stops_when_closed():
    import threading

    from napari_sam.jobs import threaded

    def work(progress, cancel):
        for i in range(3):
            progress(Progress(i + 1, 3, "step"))
        return threading.current_thread().name

    assert drive(threaded(work)) == "napari-sam job"

    stopped = []

    def endless(progress, cancel):
        i = 0
        while not cancel.is_set():
            i += 1
            progress(Progress(i, 0, "forever"))
        stopped.append(i)

    job = threaded(endless)
    assert next(job).done == 1
    job.close()  # what napari's worker.quit() does: the work sees the cancel token and returns
    assert stopped and stopped[0] >= 1

    def failing(progress, cancel):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        drive(threaded(failing))
