"""The friction points of issue #14, each driven through the real widget with
pytest-qt's mouse and keyboard events (headless, under Xvfb).

The images are small and generated (a bright disc and a bright square on a
dark background, 2D and a short volume) so that each test encodes a slice or
two in seconds on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

from qtpy.QtCore import QPoint, Qt  # noqa: E402

from napari_sam.napari._widget import SHORTCUTS, SegmentWidget  # noqa: E402
from test_napari_widget import TIMEOUT_MS, draw_box, wait_preview  # noqa: E402


def _disc_image(n: int = 160) -> np.ndarray:
    """(n, n) float32: a bright disc (radius n/6) left and a bright square right, on dark noise."""
    rr, cc = np.mgrid[:n, :n]
    img = np.random.default_rng(0).normal(20, 3, (n, n))
    img[(rr - n / 2) ** 2 + (cc - n / 3) ** 2 < (n / 6) ** 2] = 200
    img[n // 3: n // 3 + n // 5, 2 * n // 3: 2 * n // 3 + n // 5] = 160
    return img.astype(np.float32)


def _disc_truth(n: int = 160) -> np.ndarray:
    rr, cc = np.mgrid[:n, :n]
    return (rr - n / 2) ** 2 + (cc - n / 3) ** 2 < (n / 6) ** 2


@pytest.fixture
def shown(make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch):
    """A shown viewer with the 2D disc image, the widget docked and started."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_disc_image(), name="disc")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    assert widget.start(backend=lite_medsam)
    win = viewer.window._qt_window
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    yield viewer, widget, widget.session
    widget.close_session()


def _box_preview(qtbot, viewer, s):
    n = s.previews_shown
    draw_box(viewer, s, (50, 24), (110, 84))
    return wait_preview(qtbot, s, n)


# ---------------------------------------------------------------- 2: shortcuts and focus clicks
def test_shortcuts_work_with_focus_in_the_dock(shown, qtbot):
    """Shift-C and Shift-Z typed while a dock button has focus commit and undo."""
    viewer, widget, s = shown
    _box_preview(qtbot, viewer, s)
    widget.add_button.setFocus()
    qtbot.waitUntil(widget.add_button.hasFocus, timeout=2000)
    qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: np.asarray(s.labels.data).any(), timeout=5000)
    assert widget.add_button.hasFocus()  # the key went to the shortcut, focus stayed in the dock
    qtbot.keyClick(widget.object_list, Qt.Key_Z, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: not np.asarray(s.labels.data).any(), timeout=5000)
    # typing a capital in a text field stays text (no commit)
    widget.checkpoint_edit.setFocus()
    qtbot.keyClicks(widget.checkpoint_edit, "C")
    assert widget.checkpoint_edit.text() == "C"
    assert not np.asarray(s.labels.data).any()


def test_a_click_that_gives_focus_back_adds_no_prompt(shown, qtbot):
    """Pressing on the canvas while the dock has focus only focuses the canvas;
    a press on an already focused canvas adds the click; a 1.5 px box is dropped."""
    viewer, widget, s = shown
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.layers.selection.active = s.points
    s.points.mode = "add"
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    widget.add_button.setFocus()
    qtbot.waitUntil(widget.add_button.hasFocus, timeout=2000)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=centre)
    qtbot.wait(50)
    assert canvas.hasFocus()
    assert len(s.points.data) == 0, "the focus click became a prompt"
    time.sleep(0.4)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=centre)
    qtbot.waitUntil(lambda: len(s.points.data) == 1, timeout=2000)
    # a stray rectangle (a click of the rectangle tool) is not a box prompt
    s.points.data = np.zeros((0, 2))
    draw_box(viewer, s, (80, 80), (81.5, 81.5))
    qtbot.waitUntil(lambda: len(s.boxes.data) == 0, timeout=2000)
    assert s.current_prompt() is None
