"""Keyboard shortcuts that work wherever focus is in the viewer window.

napari's ``viewer.bind_key`` only sees keys while the canvas has focus: after
a button press or an object rename in the dock, Shift-S or Shift-Z did
nothing. Here every action is a :class:`QShortcut` on the viewer's main
window with ``Qt.WindowShortcut`` context, so it fires whether focus is on
the canvas, a layer list or a button of the dock. Text fields keep their
keys: a line edit claims printable keys (Qt's ShortcutOverride), so typing a
name with capitals does not trigger Shift-C.

Also here: :class:`FocusClickGuard`, which tells whether a mouse press on
the canvas only gave focus back to it (such a click must not add a prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QShortcut, QWidget

#: a press this soon (s) after the canvas got focus back from another widget only gives focus
FOCUS_CLICK_S = 0.35


def qt_key(key: str) -> str:
    """napari's key notation ("Shift-M") -> Qt's ("Shift+M")."""
    return key.replace("-", "+")


def main_window(viewer: Any) -> QWidget | None:
    """The viewer's Qt main window, or None (headless viewer)."""
    win = getattr(viewer, "window", None)
    return getattr(win, "_qt_window", None)


class WindowShortcuts:
    """QShortcuts on the viewer's main window (``Qt.WindowShortcut`` context).

    actions: key in napari notation ("Shift-M") -> callable with no argument.
    """

    def __init__(self, viewer: Any, actions: dict[str, Callable[[], Any]]) -> None:
        self.shortcuts: list[QShortcut] = []
        window = main_window(viewer)
        if window is None:
            return
        for key, slot in actions.items():
            sc = QShortcut(QKeySequence(qt_key(key)), window)
            sc.setContext(Qt.WindowShortcut)
            sc.setAutoRepeat(False)
            sc.activated.connect(lambda s=slot: s())
            self.shortcuts.append(sc)

    def close(self) -> None:
        """Remove the shortcuts from the window."""
        for sc in self.shortcuts:
            sc.setEnabled(False)
            sc.setParent(None)
            sc.deleteLater()
        self.shortcuts.clear()


class FocusClickGuard(QObject):
    """Watches the canvas: a mouse press right after the canvas got focus back
    from another widget of the window is a focus click, not a prompt."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._focus_in = -1.0
        self._press_is_focus_click = False
        self._last_press = -1.0
        self.canvas = None
        try:
            self.canvas = viewer.window._qt_viewer.canvas.native
        except AttributeError:
            return
        self.canvas.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        kind = event.type()
        if kind == QEvent.FocusIn and event.reason() in (Qt.MouseFocusReason,):
            self._focus_in = time.perf_counter()
        elif kind == QEvent.MouseButtonPress:
            now = time.perf_counter()
            self._last_press = now
            self._press_is_focus_click = 0 <= now - self._focus_in <= FOCUS_CLICK_S
        return False

    def take_focus_click(self) -> bool:
        """True (once) when the latest mouse press only gave focus back to the canvas."""
        hit = self._press_is_focus_click and time.perf_counter() - self._last_press < 5.0
        self._press_is_focus_click = False
        return hit

    def close(self) -> None:
        if self.canvas is not None:
            try:
                self.canvas.removeEventFilter(self)
            except RuntimeError:
                pass
            self.canvas = None
