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
