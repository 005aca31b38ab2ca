"""Keeping the docked widgets within a 1080 px screen: their content sits in a
scroll area (the dock can be shorter than the content), and long help text is
behind a "?" button (its tooltip, also shown on click) instead of a block of
text."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QCursor
from qtpy.QtWidgets import QFrame, QScrollArea, QToolButton, QToolTip, QVBoxLayout, QWidget

#: the most a docked widget asks for (px); the rest scrolls
MAX_HINT_HEIGHT = 420


class _Scroll(QScrollArea):
    """A scroll area that asks for little height, so that napari's window still fits."""

    def sizeHint(self):  # noqa: N802 (Qt API)
        hint = super().sizeHint()
        inner = self.widget().sizeHint() if self.widget() is not None else hint
        hint.setWidth(inner.width() + 20)
        hint.setHeight(min(inner.height() + 4, MAX_HINT_HEIGHT))
        return hint

    def minimumSizeHint(self):  # noqa: N802 (Qt API)
        hint = super().minimumSizeHint()
        hint.setHeight(min(hint.height(), 160))
        return hint


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area holding a content widget; returns the content's layout."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = _Scroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    content = QWidget()
    scroll.setWidget(content)
    outer.addWidget(scroll)
    widget.scroll_area = scroll  # type: ignore[attr-defined]
    return QVBoxLayout(content)


def help_button(html: str) -> QToolButton:
    """A "?" button whose tooltip (also shown when clicked) is ``html``."""
    b = QToolButton()
    b.setText("?  Shortcuts")
    b.setToolButtonStyle(Qt.ToolButtonTextOnly)
    b.setToolTip(html)
    b.clicked.connect(lambda _c=False: QToolTip.showText(QCursor.pos(), html, b))
    return b
