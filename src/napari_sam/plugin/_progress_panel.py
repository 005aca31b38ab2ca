"""Propagation progress in the dock: a bar with slices done / total and the
time left, the slice that just finished, and an option to follow the front.

napari's activity dock is collapsed by default and was left at 0 % while its
text said 4/20; this panel is always in view in the widget.
:func:`update_napari_progress` moves napari's own bar correctly (through
``progress.update``, which emits the value event, instead of setting ``n``).
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget


def format_eta(seconds: float) -> str:
    """Seconds -> "12 s" / "3 min 05 s"."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def update_napari_progress(pbar: Any, done: int, total: int, description: str) -> None:
    """Set napari's ``progress`` to ``done`` of ``total`` so that its GUI bar follows."""
    if pbar is None:
        return
    if pbar.total != total:
        pbar.total = int(total)  # emits the total event
    delta = int(done) - int(pbar.n)
    if delta >= 0:
        pbar.update(delta)  # emits the value event the activity dock listens to
    else:
        pbar.n = int(done)
        pbar.update(0)
    pbar.set_description(description)


class ProgressPanel(QWidget):
    """Slices done / total, time left, and "follow the front".

    Drive it with :meth:`started`, :meth:`advanced` (slice index, done, total)
    and :meth:`finished`; ``on_slice`` is called with each finished slice index
    while "Follow the front" is checked (the widget moves the viewer there).
    """

    def __init__(self, on_slice: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.on_slice = on_slice
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("%v / %m slices")
        self.bar.setToolTip("Propagation: slices done / slices to do")
        lay.addWidget(self.bar)
        row = QHBoxLayout()
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.follow_check = QCheckBox("Follow the front")
        self.follow_check.setToolTip("Show each slice as it finishes (moves the slice slider)")
        row.addWidget(self.label, 1)
        row.addWidget(self.follow_check)
        lay.addLayout(row)
        self._t0 = 0.0
        self._first_done = 0
        self.last_slice: int | None = None
        self.setVisible(False)

    def started(self, name: str = "") -> None:
        self._t0 = time.perf_counter()
        self._first_done = 0
        self.last_slice = None
        self.bar.setRange(0, 0)  # busy until the first slice reports the total
        self.label.setText(f"propagating {name}: starting..." if name else "starting...")
        self.setVisible(True)

    def advanced(self, index: int, done: int, total: int) -> None:
        total = max(int(total), int(done), 1)
        self.bar.setRange(0, total)
        self.bar.setValue(int(done))
        self.last_slice = int(index)
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (total - done) if done > 0 else float("nan")
        left = f", about {format_eta(eta)} left" if done > 0 and done < total else ""
        self.label.setText(f"slice {index} done ({done}/{total}){left}")
        if self.follow_check.isChecked() and self.on_slice is not None:
            self.on_slice(int(index))

    def finished(self, cancelled: bool) -> None:
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
        if not cancelled:
            self.bar.setValue(self.bar.maximum())
        took = format_eta(time.perf_counter() - self._t0)
        self.label.setText(f"{'cancelled' if cancelled else 'done'} in {took}")
