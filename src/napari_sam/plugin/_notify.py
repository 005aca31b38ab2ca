"""napari notifications for the plugin's messages (one line each, never a traceback).

napari's notification shows one line of text, elided, for four seconds: a
longer message was cut off before it could be read. A message that does not
fit that line is shown shortened (cut at a clause or word boundary, "..."),
with a *Details* button that opens the whole message in a dialog that stays
until closed (its text wraps and can be selected and copied).
"""

from __future__ import annotations

from typing import Any

from ..errors import NapariSamError

__all__ = ["fits_one_line", "notify", "notify_error", "shorten"]

PREFIX = "napari-sam: "
#: the notification's width (napari's NapariQtNotification.MIN_WIDTH) less its icon, buttons and margins
_TEXT_WIDTH = 400 - 130
#: the dialogs opened by "Details" (kept alive while shown)
_DIALOGS: list[Any] = []


def notify(level: str, message: str) -> None:
    """A napari notification (``level``: info, warning, error); a long ``message``
    is shortened, its whole text behind a *Details* button."""
    from napari.utils.notifications import Notification, notification_manager

    short = shorten(message)
    cut = short not in (message, message.removeprefix(PREFIX))
    actions = () if not cut else (("Details", lambda _toast: show_details(level, message)),)
    note = Notification(short, severity=level, actions=actions)
    note.details = message  # the whole text, for scripts and tests
    notification_manager.dispatch(note)


def notify_error(error: BaseException) -> None:
    """An error as a notification: ours (bad input, wrong order) as a warning with
    its message, anything else as an error with its type."""
    if isinstance(error, NapariSamError):
        notify("warning", f"{PREFIX}{error}")
    else:
        notify("error", f"{PREFIX}{type(error).__name__}: {error}")


def fits_one_line(text: str) -> bool:
    """Whether ``text`` fits the one line napari's notification shows (the application's font)."""
    from qtpy.QtGui import QFontMetrics
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return len(text) <= 40
    return QFontMetrics(app.font()).horizontalAdvance(text) <= _TEXT_WIDTH


def shorten(message: str) -> str:
    """``message`` if it fits one line; else, without the "napari-sam: " prefix, the rest if it fits or its
    longest leading clause (ending at ':', ';', ',', '.' or before '(') that fits, or, when that is
    under half as long as the words that fit, those words; with "..." appended."""
    if fits_one_line(message):
        return message
    body = message.removeprefix(PREFIX)
    if fits_one_line(body):
        return body
    words = body.split(" ")
    fit, clause = "", ""
    for n in range(1, len(words) + 1):
        head = " ".join(words[:n])
        if not fits_one_line(head.rstrip(":;,.") + "..."):
            break
        fit = head.rstrip(":;,.")
        if head.endswith((":", ";", ",", ".")) or words[n:] and words[n].startswith("("):
            clause = fit
    best = clause if len(clause) * 2 >= len(fit) else fit
    return (best or body[:12]) + "..."


def show_details(level: str, message: str) -> Any:
    """The whole ``message`` in a dialog over napari's window (not modal). Returns the dialog."""
    from napari._qt.qt_main_window import _QtMainWindow
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QMessageBox

    icon = {"info": QMessageBox.Information, "warning": QMessageBox.Warning}.get(level, QMessageBox.Critical)
    box = QMessageBox(icon, "napari-sam", message, QMessageBox.Close, _QtMainWindow.current())
    box.setTextInteractionFlags(Qt.TextSelectableByMouse)
    box.setModal(False)
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.destroyed.connect(lambda *_: _DIALOGS.remove(box) if box in _DIALOGS else None)
    _DIALOGS.append(box)
    box.show()
    return box
