"""Issue #14, point 9: notifications are not cut off.

napari's notification shows one elided line for a few seconds. A long message
is shown shortened to what fits, and its whole text is one click away
(*Details*), in a dialog that stays. Driven with real mouse events on a shown
viewer (under Xvfb).
"""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui]

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QLabel, QMessageBox, QPushButton  # noqa: E402

from napari_sam.plugin._notify import fits_one_line, notify, shorten  # noqa: E402
from napari_sam.plugin.segment_widget import SegmentWidget  # noqa: E402

LONG = (
    "napari-sam: layer 'CT abdomen (portal venous phase)' was removed; the segmentation session stopped "
    "(press Start to begin again; committed labels are kept)"
)


def _toasts(viewer):
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    canvas = viewer.window._qt_viewer.canvas.native
    return [t for t in canvas.findChildren(NapariQtNotification) if t.isVisible()]


def _shown_text(toast) -> str:
    """The text the notification paints (QLabel's own text: superqt stores the elided version there)."""
    return QLabel.text(toast.message)


@pytest.fixture
def viewer(make_napari_viewer, qtbot):
    from napari.settings import get_settings

    viewer = make_napari_viewer(show=True)
    get_settings().application.gui_notification_level = "info"
    win = viewer.window._qt_window
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    return viewer


def test_shorten_keeps_short_messages_and_cuts_long_ones_at_a_clause(qapp):
    short = "napari-sam: nothing to undo"
    assert shorten(short) == short
    cut = shorten(LONG)
    assert cut.endswith("...") and fits_one_line(cut)
    assert "napari-sam" not in cut and LONG[len("napari-sam: ") :].startswith(cut[:-3])


def test_start_without_an_image_gives_a_readable_notification(viewer, qtbot):
    """Start with no image layer (a real click): the notification's text is shown whole."""
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    qtbot.mouseClick(widget.start_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(_toasts(viewer)), timeout=5000)
    [toast] = _toasts(viewer)
    qtbot.waitExposed(toast)
    full = toast.message.text()
    assert full and _shown_text(toast) == full, f"cut off: {_shown_text(toast)!r} of {full!r}"


def test_long_notification_is_shortened_with_its_details_a_click_away(viewer, qtbot):
    notify("info", LONG)
    qtbot.waitUntil(lambda: bool(_toasts(viewer)), timeout=5000)
    [toast] = _toasts(viewer)
    qtbot.waitExposed(toast)
    # what is painted is the whole (shortened) text: nothing elided mid-word
    shown = _shown_text(toast)
    assert shown == toast.message.text() == shorten(LONG), shown
    [details] = [b for b in toast.findChildren(QPushButton) if b.text() == "Details"]
    qtbot.mouseClick(details, Qt.LeftButton)
    qtbot.waitUntil(lambda: any(b.isVisible() for b in viewer.window._qt_window.findChildren(QMessageBox)))
    [box] = [b for b in viewer.window._qt_window.findChildren(QMessageBox) if b.isVisible()]
    assert box.text() == LONG and not box.isModal()
    # the dialog stays until closed: longer than the notification's 4 s
    qtbot.wait(4500)
    assert box.isVisible()
    qtbot.mouseClick(box.button(QMessageBox.Close), Qt.LeftButton)
    qtbot.waitUntil(lambda: not any(b.isVisible() for b in viewer.window._qt_window.findChildren(QMessageBox)))
