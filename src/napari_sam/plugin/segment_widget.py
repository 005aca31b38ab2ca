"""The dock widget: choose image, model and device; prompt, commit, propagate, export.

Every action is a public method (the GUI tests call them) and a keyboard
shortcut on the viewer (shown in each button's tooltip, listed in
:data:`SHORTCUTS` and in docs/napari.md). The controls are built in
:mod:`._segment_ui`; the work is a :class:`._session.SegmentSession`'s, on
the core's annotation model. Models come from
:func:`napari_sam.models.registry.load_model`, which shares one loaded
instance per model and settings with every widget of the process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QInputDialog, QListWidgetItem, QWidget

from ..errors import NapariSamError
from ..models.base import Backend
from . import _prompt_layers as pl
from ._image_source import ImageSource
from ._label_files import LabelFileActions
from ._layer_setup import widen_contrast_range
from ._notify import notify
from ._segment_ui import SHORTCUT_METHODS, SHORTCUTS, build_segment_ui, swatch
from ._session import SegmentSession
from ._session_files import SessionFileActions
from ._shortcuts import FocusClickGuard, WindowShortcuts
from ._vocabulary import remember_name, vocabulary


class SegmentWidget(SessionFileActions, LabelFileActions, QWidget):
    """Segment Anything in napari: boxes and clicks on a slice, live preview,
    objects, propagation through the volume, export."""

    session_started = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: SegmentSession | None = None
        self._session_key: tuple[str, str, str, str] | None = None
        self._loader: Any = None
        self._bound_keys: list[str] = []
        build_segment_ui(self)
        self._style_negative(False)
        self._refresh_images()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._bind_keys()
        self._focus_guard = FocusClickGuard(self.viewer)
        self._update_enabled()

    def _style_negative(self, negative: bool) -> None:
        color = pl.NEGATIVE_COLOR if negative else pl.POSITIVE_COLOR
        self.negative_button.setText("Clicks: negative" if negative else "Clicks: positive")
        self.negative_button.setChecked(negative)
        style = f"QPushButton {{ border: 2px solid {color}; color: {color}; }}"
        self.negative_button.setStyleSheet(style if self.session is not None else "")  # no colour before Start

    def _set_zoom(self, on: bool) -> None:
        if self.session is not None:
            self.session.zoom = bool(on)

    def _update_enabled(self) -> None:
        on = self.session is not None
        prop = on and self.session.propagating
        volume = on and not self.session.source.is_2d
        for b in (
            self.negative_button,
            self.candidate_button,
            self.clear_button,
            self.add_button,
            self.rename_button,
            self.delete_button,
            self.undo_button,
            self.redo_button,
            self.export_button,
            self.load_button,
            self.save_session_button,
            self.open_session_button,
            self.export_prompts_button,
        ):
            b.setEnabled(on)
        self.commit_button.setEnabled(on and not prop)
        self.propagate_button.setEnabled(volume and not prop)
        self.cancel_button.setEnabled(bool(prop))
        self.embed_all_button.setEnabled(volume)
        self.adapt_button.setEnabled(volume and not prop)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        actions = {}
        for action, (key, _what) in SHORTCUTS.items():
            method = getattr(self, SHORTCUT_METHODS.get(action, action))
            self.viewer.bind_key(key, lambda _viewer, m=method: m(), overwrite=True)
            self._bound_keys.append(key)
            actions[key] = method
        # the same keys wherever focus is in the window (the dock, the layer list)
        self._window_shortcuts = WindowShortcuts(self.viewer, actions)

    def _unbind_keys(self) -> None:
        if getattr(self, "_window_shortcuts", None) is not None:
            self._window_shortcuts.close()
            self._window_shortcuts = None
        for key in self._bound_keys:
            try:
                self.viewer.bind_key(key, None, overwrite=True)
            except (KeyError, TypeError, ValueError):
                pass
        self._bound_keys.clear()

    # ------------------------------------------------------------------ image list
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image)]

    def _refresh_images(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        names = [lay.name for lay in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        active = self.viewer.layers.selection.active
        if current in names:
            self.image_combo.setCurrentText(current)
        elif active is not None and active.name in names:
            self.image_combo.setCurrentText(active.name)
        self.image_combo.blockSignals(False)

    def _on_layer_removed(self, event: Any = None) -> None:
        self._refresh_images()
        s = self.session
        if s is None:
            return
        gone = [lay.name for lay in s.layers.all() if lay not in self.viewer.layers]
        if gone:
            self._stop_session()
            notify(
                "info",
                f"napari-sam: layer {gone[0]!r} was removed; the segmentation session stopped "
                "(press Start to begin again; committed labels are kept)",
            )

    def selected_layer(self) -> Any:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    # ------------------------------------------------------------------ start
    def start(self, backend: Backend | None = None) -> bool:
        """Start segmenting the chosen image layer.

        backend: an already loaded model (scripts, tests); otherwise the
        chosen model is loaded on the chosen device in the background.
        Returns False (with a notification) when the input cannot be used.
        """
        try:
            source = ImageSource.from_layer(self.selected_layer())
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            self._set_status(str(exc))
            return False
        key = (
            self.model_combo.currentText(),
            self.device_combo.currentText(),
            self.checkpoint_edit.text().strip(),
            self.precision_combo.currentText(),
        )
        s = self.session
        if (
            s is not None
            and s.source.layer is source.layer
            and (backend is s.backend or (backend is None and key == self._session_key))
        ):
            self._set_status("already segmenting this image with this model")
            return True
        if backend is not None:
            self._session_key = None
            self._begin(source, backend)
            return True
        if self._loader is not None:
            return False
        return self._load(key, source)

    def _load(self, key: tuple[str, str, str, str], source: ImageSource) -> bool:
        """Load the chosen model in the background (the process-wide shared instance when
        another widget loaded it already), then begin the session."""
        from napari.qt.threading import create_worker

        from ..models.registry import load_model

        worker = create_worker(
            load_model,
            key[0],
            checkpoint=key[2] or None,
            device=key[1],
            progress=False,
            precision=key[3],
            _progress={"desc": f"napari-sam: loading {key[0]} (downloading it the first time)"},
            _ignore_errors=True,
        )  # errors become notifications (below), not tracebacks
        worker.returned.connect(lambda b, k=key, s=source: self._on_model_loaded(k, b, s))
        worker.errored.connect(self._on_model_error)
        self._loader = worker
        self.start_button.setEnabled(False)
        self._set_status(f"loading {key[0]} on {key[1]}...")
        worker.start()
        return True

    def _on_model_loaded(self, key: tuple[str, str, str, str], backend: Backend, source: ImageSource) -> None:
        self._loader = None
        self.start_button.setEnabled(True)
        if source.layer in self.viewer.layers:
            self._session_key = key
            self._begin(source, backend)

    def _on_model_error(self, exc: Exception) -> None:
        self._loader = None
        self.start_button.setEnabled(True)
        msg = str(exc) if isinstance(exc, NapariSamError) else f"{type(exc).__name__}: {exc}"
        notify("error", f"napari-sam: cannot load the model: {msg}")
        self._set_status(f"model not loaded: {msg}")

    def _begin(self, source: ImageSource, backend: Backend) -> None:
        self._stop_session()
        labels = None
        name = f"{source.layer.name} labels"
        if name in self.viewer.layers and tuple(self.viewer.layers[name].data.shape) == source.layer_shape:
            labels = self.viewer.layers[name]
        try:
            from ..cache import default_cache_dir

            cache_dir = default_cache_dir() if self.disk_cache_check.isChecked() else None
            session = SegmentSession(
                self.viewer, source, backend, parent=self, labels_layer=labels, cache_dir=cache_dir
            )
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return
        self.session = session
        session.focus_click = self._focus_guard.take_focus_click
        session.zoom = self.zoom_check.isChecked()
        session.status.connect(self._set_status)
        session.preview_changed.connect(self._refresh_candidates)
        session.objects_changed.connect(self._refresh_objects)
        session.propagation_started.connect(self._update_enabled)
        session.propagation_finished.connect(lambda _c: self._update_enabled())
        session.propagation_started.connect(
            lambda: self.progress_panel.started(session.objects.current.name if session.objects.current else "")
        )
        session.propagation_progress.connect(self.progress_panel.advanced)
        session.propagation_finished.connect(self.progress_panel.finished)
        self._refresh_objects()
        self._style_negative(False)
        self._update_enabled()
        dev = getattr(backend, "device", "cpu")
        kind = "2D image" if source.is_2d else f"volume {source.shape}"
        self._set_status(f"{backend.name} on {dev}; {kind}. Draw a box (Shapes layer) or click (Points layer).")
        widen_contrast_range(source.layer)  # lung / bone windows stay reachable
        self.viewer.layers.selection.active = session.boxes
        for layer in (session.points, session.boxes):
            pl.sync_mode(layer)
        self.recovery_offer.offer(session.files.previous)
        self.session_started.emit()

    def stop(self) -> None:
        """Stop the session (background work ends; the layers stay, and Start picks them up again)."""
        self._stop_session()
        self._set_status("stopped; press Start to continue")

    def _stop_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            self._style_negative(False)
        self._refresh_objects()
        self._update_enabled()

    def _show_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` along the propagated axis (follow the front)."""
        s = self.session
        obj = s.objects.current if s is not None else None
        if s is None or s.source.is_2d or obj is None or obj.state is None:
            return
        layer = s.source.layer
        voxel = [0.0] * layer.ndim
        voxel[obj.state.axis] = float(index)
        world = layer.data_to_world(voxel)
        offset = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(obj.state.axis + offset, world[obj.state.axis])

    def _need_session(self) -> SegmentSession | None:
        if self.session is None:
            notify("info", "napari-sam: press Start first (choose an image layer)")
        return self.session

    # ------------------------------------------------------------------ actions
    def toggle_negative(self) -> bool:
        """Switch new clicks between positive and negative; returns True when negative."""
        s = self._need_session()
        if s is None:
            return False
        neg = not s.negative
        s.set_negative(neg)
        self._style_negative(neg)
        self.viewer.layers.selection.active = s.points
        return neg

    def next_candidate(self) -> int:
        s = self._need_session()
        return s.next_candidate() if s is not None else 0

    def select_candidate(self, index: int) -> int:
        """Preview candidate ``index`` (0-based; as clicking its thumbnail does)."""
        s = self._need_session()
        return s.select_candidate(index) if s is not None else 0

    def _refresh_candidates(self) -> None:
        s = self.session
        p = s.prediction if s is not None else None
        if p is None or s.prediction_pos is None or s.preview_mask is None:
            self.candidates_view.show_candidates(None, None, None, 0)
            return
        plane = np.take(s.source.volume, s.prediction_pos.index, axis=s.prediction_pos.axis)
        self.candidates_view.show_candidates(s.source.window().apply(plane), p.masks, p.scores, s.candidate)

    def clear_prompts(self) -> None:
        s = self._need_session()
        if s is not None:
            s.clear_prompts()

    def commit(self) -> bool:
        s = self._need_session()
        return s.commit() if s is not None else False

    def propagate(self) -> bool:
        s = self._need_session()
        ok = s.propagate() if s is not None else False
        self._update_enabled()
        return ok

    def adapt(self) -> bool:
        """*Adapt to my corrections*: adapt a copy of the model to the current object's key
        slices in the background, then propagate the object again with it (progress and
        cancel as for a propagation). Returns True if it started."""
        s = self._need_session()
        ok = s.adapt() if s is not None else False
        self._update_enabled()
        return ok

    def cancel_propagation(self) -> None:
        if self.session is not None:
            self.session.cancel_propagation()

    def embed_all(self) -> int:
        s = self._need_session()
        return s.embed_all() if s is not None else 0

    def undo(self) -> None:
        s = self._need_session()
        if s is not None:
            s.undo()

    def redo(self) -> None:
        s = self._need_session()
        if s is not None:
            s.redo()

    def add_object(self, name: str | None = None) -> Any:
        s = self._need_session()
        return s.add_object(name) if s is not None else None

    def rename_object(self, name: str | None = None, object_id: int | None = None) -> None:
        s = self._need_session()
        if s is None or s.objects.current is None:
            return
        oid = object_id if object_id is not None else s.objects.current.id
        if name is None:
            text, ok = QInputDialog.getText(self, "Rename object", "Name:", text=s.objects.get(oid).name)
            if not ok:
                return
            name = text
        s.rename_object(oid, name)

    def _apply_name(self) -> None:
        """Rename the current object to the name field's text and remember the name."""
        name = self.name_edit.text().strip()
        s = self.session
        if not name or s is None:
            return
        if s.objects.current is None:
            s.add_object(name)
        else:
            s.rename_object(s.objects.current.id, name)
        remember_name(name)
        self._completer_model.setStringList(vocabulary())

    def delete_object(self, object_id: int | None = None) -> None:
        s = self._need_session()
        if s is None or s.objects.current is None:
            return
        s.delete_object(object_id if object_id is not None else s.objects.current.id)

    # ------------------------------------------------------------------ objects list
    def _refresh_objects(self) -> None:
        self.object_list.blockSignals(True)
        s = self.session
        ids = [o.id for o in s.objects] if s is not None else []
        listed = [int(self.object_list.item(i).data(Qt.UserRole)) for i in range(self.object_list.count())]
        if ids == listed and s is not None:  # same objects: update in place (safe inside an edit signal)
            for i, o in enumerate(s.objects):
                item = self.object_list.item(i)
                if item.text() != o.name:
                    item.setText(o.name)
                if o.id == s.objects.current_id and self.object_list.currentRow() != i:
                    self.object_list.setCurrentRow(i)
            self.object_list.blockSignals(False)
            return
        self.object_list.clear()
        if s is not None:
            for o in s.objects:
                item = QListWidgetItem(swatch(o.color), o.name)
                item.setData(Qt.UserRole, o.id)
                item.setFlags(item.flags() | Qt.ItemIsEditable)
                item.setToolTip(f"label id {o.id}")
                self.object_list.addItem(item)
                if o.id == s.objects.current_id:
                    self.object_list.setCurrentItem(item)
        self.object_list.blockSignals(False)

    def _on_object_selected(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        if item is not None and self.session is not None:
            self.session.select_object(int(item.data(Qt.UserRole)))
            self.name_edit.setText(item.text())

    def _on_object_edited(self, item: QListWidgetItem) -> None:
        if self.session is not None:
            self.session.rename_object(int(item.data(Qt.UserRole)), item.text())

    # ------------------------------------------------------------------ teardown
    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Stop background work, unbind the shortcuts (layers stay in the viewer)."""
        self._stop_session()
        self._unbind_keys()
        self._focus_guard.close()
        try:
            self.viewer.layers.events.inserted.disconnect(self._refresh_images)
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        except (TypeError, ValueError, RuntimeError):
            pass


__all__ = ["SegmentWidget", "SHORTCUTS"]
