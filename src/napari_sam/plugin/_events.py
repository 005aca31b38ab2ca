"""napari events -> session actions, debounced.

:class:`SessionEvents` connects the viewer's slice and display changes, the
image's contrast limits, the prompt layers' edits and the labels layer's
paint strokes to the session, and disconnects them all on close. Slice and
contrast changes wait until they settle before anything is embedded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer

from . import _prompt_layers as pl

if TYPE_CHECKING:
    from ._session import SegmentSession

__all__ = ["SessionEvents", "SLICE_DEBOUNCE_MS", "WINDOW_DEBOUNCE_MS"]

#: wait this long after the last slice / contrast change before embedding (ms)
SLICE_DEBOUNCE_MS = 200
WINDOW_DEBOUNCE_MS = 400


class SessionEvents(QObject):
    """The event wiring of one session."""

    def __init__(self, session: SegmentSession) -> None:
        super().__init__(session)
        self.s = session
        self._connections: list[tuple[Any, Any]] = []
        self._slice_timer = self._timer(session.on_slice_settled)
        self._window_timer = self._timer(session.on_window_settled)
        viewer, layers = session.viewer, session.layers
        self._connect(viewer.dims.events.current_step, self._on_dims)
        self._connect(viewer.dims.events.order, self._on_dims)
        self._connect(viewer.dims.events.ndisplay, self._on_dims)
        self._connect(session.source.layer.events.contrast_limits, self._on_contrast)
        self._connect(layers.points.events.data, self._on_points_changed)
        self._connect(layers.boxes.events.data, self._on_boxes_changed)
        self._connect(layers.labels.events.paint, self._on_painted)

    def _timer(self, slot: Any) -> QTimer:
        t = QTimer(self)
        t.setSingleShot(True)
        t.timeout.connect(slot)
        return t

    def _connect(self, emitter: Any, callback: Any) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def close(self) -> None:
        self._slice_timer.stop()
        self._window_timer.stop()
        for emitter, cb in self._connections:
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connections.clear()

    # ------------------------------------------------------------------ handlers
    def _on_dims(self, event: Any = None) -> None:
        self._slice_timer.start(SLICE_DEBOUNCE_MS)
        s = self.s
        pos = s.position()
        if pos is not None and pos != s.pos:
            s.pos = pos
            s.previewer.clear()
            s.previewer.forget()

    def _on_contrast(self, event: Any = None) -> None:
        self._window_timer.start(WINDOW_DEBOUNCE_MS)

    def _on_points_changed(self, event: Any = None) -> None:
        s = self.s
        action = getattr(event, "action", None)
        if action in ("adding", "removing"):
            return
        if action == "added" and s.focus_click is not None and s.focus_click():
            QTimer.singleShot(0, lambda: pl.drop_last(s.points))  # it only gave focus back
            return
        s.update_preview()

    def _on_boxes_changed(self, event: Any = None) -> None:
        s = self.s
        action = getattr(event, "action", None)
        if action in ("adding", "removing"):
            return
        if action == "added":
            stray = pl.is_stray_box(s.boxes) or (s.focus_click is not None and s.focus_click())
            QTimer.singleShot(0, (lambda: pl.drop_last(s.boxes)) if stray else self._keep_newest_box)
            if stray:
                return
        s.update_preview()

    def _keep_newest_box(self) -> None:
        s = self.s
        if s.closed:
            return
        pos = s.position()
        if pos is not None and pl.keep_newest_box(s.boxes, s.source, pos):
            s.update_preview()

    def _on_painted(self, event: Any = None) -> None:
        """The user painted or erased: the annotation learns it once the pixels are in the layer."""
        if not self.s.closed:
            QTimer.singleShot(0, self.s.on_painted)
