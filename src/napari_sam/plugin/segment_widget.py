"""The dock widget: choose image, model and device; prompt, commit, propagate, export.

Every action is a public method (the GUI tests call them) and a keyboard
shortcut on the viewer (shown in each button's tooltip, listed in
:data:`SHORTCUTS` and in docs/napari.md). The work itself is done by a
:class:`._session.SegmentSession`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from qtpy.QtCore import QStringListModel, Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QCheckBox, QComboBox, QCompleter, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QInputDialog, QLabel,
                            QLineEdit, QListWidget, QListWidgetItem, QPushButton, QToolButton, QVBoxLayout, QWidget)

from ..errors import NapariSamError
from ..models.base import Backend
from . import _prompt_layers as pl
from ._image_source import ImageSource
from ._session import SegmentSession, notify
from ._candidates_view import CandidatesView
from ._compact import help_button, scrolling_layout
from ._layer_setup import widen_contrast_range
from ._vocabulary import remember_name, vocabulary
from ._reader_preference import ReaderOffer
from ._settings import default_export_path, remember_export
from ._progress_panel import ProgressPanel
from ._shortcuts import FocusClickGuard, WindowShortcuts

#: action -> (key, what it does); bound on the viewer while the widget is open
SHORTCUTS: dict[str, tuple[str, str]] = {
    "toggle_negative": ("N", "switch new clicks between positive (green) and negative (red)"),
    "next_candidate": ("Shift-M", "show the next candidate mask"),
    "commit": ("Shift-C", "commit the preview to the current object on this slice"),
    "clear_prompts": ("Shift-X", "clear the clicks and box on this slice"),
    "propagate": ("Shift-S", "propagate the current object through the volume"),
    "cancel_propagation": ("Shift-Escape", "cancel the running propagation (finished slices are kept)"),
    "add_object": ("Shift-O", "add a new object"),
    "undo": ("Shift-Z", "undo the last commit / propagation / paint (also Ctrl+Z on the labels layer)"),
    "export": ("Shift-E", "save the labels as NIfTI in the image's geometry"),
}


def _available_devices() -> list[str]:
    import torch

    devs = ["auto", "cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


def _swatch(color: tuple[int, int, int]) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(*color))
    return QIcon(pix)


class SegmentWidget(QWidget):
    """Segment Anything in napari: boxes and clicks on a slice, live preview,
    objects, propagation through the volume, export."""

    session_started = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: SegmentSession | None = None
        self._backends: dict[tuple[str, str, str, str], Backend] = {}
        self._loader: Any = None
        self._bound_keys: list[str] = []
        self._build_ui()
        self._refresh_images()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._bind_keys()
        self._focus_guard = FocusClickGuard(self.viewer)
        self._update_enabled()

    # ------------------------------------------------------------------ UI
    def _button(self, text: str, action: str | None, slot: Callable[[], Any], tip: str) -> QPushButton:
        b = QPushButton(text)
        if action is not None:
            key, what = SHORTCUTS[action]
            tip = f"{tip or what.capitalize()} [{key}]"
        b.setToolTip(tip)
        b.clicked.connect(lambda _checked=False: slot())
        return b

    def _build_ui(self) -> None:
        from ..models.registry import REGISTRY

        lay = scrolling_layout(self)  # fits a 1080 px screen with Segment everything docked too
        self.reader_offer = ReaderOffer()  # once: make napari-sam napari's reader for medical files
        lay.addWidget(self.reader_offer)
        self.reader_offer.setVisible(self.reader_offer.should_offer())  # (after parenting, which hides)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image layer to segment (2D grayscale or RGB, or a 3D volume)")
        self.model_combo = QComboBox()
        for name, spec in REGISTRY.items():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, spec.description, Qt.ToolTipRole)
        self.model_combo.setToolTip("The segmentation model")
        self.device_combo = QComboBox()
        self.device_combo.addItems(_available_devices())
        self.device_combo.setToolTip("Where the model runs; auto picks CUDA, then Apple MPS, then the CPU")
        from ..models.precision import DEFAULT_PRECISION, PRECISIONS

        self.precision_combo = QComboBox()
        self.precision_combo.addItems(PRECISIONS)
        self.precision_combo.setCurrentText(DEFAULT_PRECISION)
        self.precision_combo.setToolTip("Image encoder precision: auto takes bf16 where the CPU or GPU runs it "
                                        "natively (faster), else fp32; see docs/performance.md")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("default: embedded or downloaded once")
        self.checkpoint_edit.setToolTip("Optional local checkpoint file for the chosen model (offline use, "
                                        "fine-tuned weights, models without a direct download)")
        browse = QToolButton()
        browse.setText("...")
        browse.setToolTip("Choose a checkpoint file")
        browse.clicked.connect(self._browse_checkpoint)
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint_edit)
        ckpt_row.addWidget(browse)
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Checkpoint", ckpt_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        lay.addLayout(form)
        from ..cache import default_cache_dir

        self.disk_cache_check = QCheckBox("Keep embeddings on disk")
        self.disk_cache_check.setChecked(True)
        self.disk_cache_check.setToolTip("Store slice embeddings in the napari-sam cache folder "
                                         f"({default_cache_dir()}; set NAPARI_SAM_CACHE_DIR to move it), "
                                         "so that reopening the same image with the same contrast encodes nothing")
        lay.addWidget(self.disk_cache_check)
        self.zoom_check = QCheckBox("Zoom small objects")
        self.zoom_check.setChecked(True)
        self.zoom_check.setToolTip("Decode a small object's prompt on a magnified crop around it (the model sees "
                                   "it at full input size): sharper outlines of nuclei and small structures; "
                                   "the first prompt on a new crop encodes it (~0.5 s)")
        self.zoom_check.toggled.connect(self._set_zoom)
        lay.addWidget(self.zoom_check)
        self.start_button = self._button("Start", None, self.start,
                                         "Load the model and add the prompt, preview and labels layers")
        lay.addWidget(self.start_button)

        box = QGroupBox("Prompts on this slice")
        bl = QVBoxLayout(box)
        legend = QLabel(f'Boxes: <span style="color:{pl.BOX_COLOR}">&#9633;</span> &nbsp; clicks: '
                        f'<span style="color:{pl.POSITIVE_COLOR}">&#9679; positive</span> &nbsp; '
                        f'<span style="color:{pl.NEGATIVE_COLOR}">&#9679; negative</span>')
        legend.setTextFormat(Qt.RichText)
        bl.addWidget(legend)
        self.negative_button = self._button("Clicks: positive", "toggle_negative", self.toggle_negative,
                                            "Switch new clicks between positive (green) and negative (red)")
        self.negative_button.setCheckable(True)
        self._style_negative(False)
        bl.addWidget(self.negative_button)
        row = QHBoxLayout()
        self.candidate_button = self._button("Next candidate", "next_candidate", self.next_candidate, "")
        self.clear_button = self._button("Clear", "clear_prompts", self.clear_prompts, "")
        row.addWidget(self.candidate_button)
        row.addWidget(self.clear_button)
        bl.addLayout(row)
        self.candidates_view = CandidatesView(self.select_candidate)
        self.candidates_view.setVisible(False)
        bl.addWidget(self.candidates_view)
        self.commit_button = self._button("Commit to object", "commit", self.commit, "")
        bl.addWidget(self.commit_button)
        lay.addWidget(box)

        obox = QGroupBox("Objects")
        ol = QVBoxLayout(obox)
        self.object_list = QListWidget()
        self.object_list.setToolTip("Objects (one label id each). Double-click to rename; select to make current")
        self.object_list.setMaximumHeight(120)
        self.object_list.currentItemChanged.connect(self._on_object_selected)
        self.object_list.itemChanged.connect(self._on_object_edited)
        ol.addWidget(self.object_list)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name the current object (liver, nucleus, ...)")
        self.name_edit.setToolTip("Name of the current object; suggestions from anatomy and cell names "
                                  "and the names you typed before. Enter to apply")
        self._completer_model = QStringListModel(vocabulary())
        completer = QCompleter(self._completer_model, self.name_edit)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        completer.setFilterMode(Qt.MatchContains)
        self.name_edit.setCompleter(completer)
        self.name_edit.returnPressed.connect(self._apply_name)
        ol.addWidget(self.name_edit)
        row = QHBoxLayout()
        self.add_button = self._button("Add", "add_object", self.add_object, "")
        self.rename_button = self._button("Rename", None, self.rename_object, "Rename the selected object")
        self.delete_button = self._button("Delete", None, self.delete_object,
                                          "Delete the selected object and its pixels (undoable)")
        for b in (self.add_button, self.rename_button, self.delete_button):
            row.addWidget(b)
        ol.addLayout(row)
        lay.addWidget(obox)

        vbox = QGroupBox("Volume")
        vl = QVBoxLayout(vbox)
        row = QHBoxLayout()
        self.propagate_button = self._button("Propagate", "propagate", self.propagate, "")
        self.cancel_button = self._button("Cancel", "cancel_propagation", self.cancel_propagation, "")
        row.addWidget(self.propagate_button)
        row.addWidget(self.cancel_button)
        vl.addLayout(row)
        self.embed_all_button = self._button("Embed all slices", None, self.embed_all,
                                             "Compute every slice's image embedding in the background "
                                             "(otherwise slices are embedded when first needed)")
        vl.addWidget(self.embed_all_button)
        self.progress_panel = ProgressPanel(on_slice=self._show_slice)
        vl.addWidget(self.progress_panel)
        lay.addWidget(vbox)

        row = QHBoxLayout()
        self.undo_button = self._button("Undo", "undo", self.undo, "")
        self.export_button = self._button("Export...", "export", self.export_dialog, "")
        self.load_button = self._button("Load labels as objects...", None, self.load_labels_dialog,
                                        "Bring in an existing segmentation (label map, DICOM SEG, .seg.nrrd): "
                                        "each label becomes an object whose slices are key slices")
        row.addWidget(self.undo_button)
        row.addWidget(self.export_button)
        row.addWidget(self.load_button)
        lay.addLayout(row)
        self.status_label = QLabel("Choose an image layer and press Start.")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        self.help_button = help_button(
            "Keyboard shortcuts (anywhere in the viewer window while this widget is open):<br>"
            + "<br>".join(f"<b>{k}</b>: {w}" for k, w in SHORTCUTS.values()))
        lay.addWidget(self.help_button)
        lay.addStretch(1)

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
        for b in (self.negative_button, self.candidate_button, self.clear_button, self.add_button,
                  self.rename_button, self.delete_button, self.undo_button, self.export_button,
                  self.load_button):
            b.setEnabled(on)
        self.commit_button.setEnabled(on and not prop)
        self.propagate_button.setEnabled(volume and not prop)
        self.cancel_button.setEnabled(bool(prop))
        self.embed_all_button.setEnabled(volume)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        actions = {}
        for action, (key, _what) in SHORTCUTS.items():
            method = getattr(self, action if action != "export" else "export_dialog")
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
        gone = [lay.name for lay in (s.source.layer, s.labels, s.preview, s.points, s.boxes)
                if lay not in self.viewer.layers]
        if gone:
            self._stop_session()
            notify("info", f"napari-sam: layer {gone[0]!r} was removed; the segmentation session stopped "
                           "(press Start to begin again; committed labels are kept)")

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
        key = (self.model_combo.currentText(), self.device_combo.currentText(), self.checkpoint_edit.text().strip(),
               self.precision_combo.currentText())
        s = self.session
        if s is not None and s.source.layer is source.layer and (
                backend is s.backend or (backend is None and self._backends.get(key) is s.backend)):
            self._set_status("already segmenting this image with this model")
            return True
        if backend is not None:
            self._begin(source, backend)
            return True
        if key in self._backends:
            self._begin(source, self._backends[key])
            return True
        if self._loader is not None:
            return False
        from napari.qt.threading import create_worker

        from ..models.registry import load_model

        worker = create_worker(load_model, key[0], checkpoint=key[2] or None, device=key[1], progress=False,
                               precision=key[3],
                               _progress={"desc": f"napari-sam: loading {key[0]} (downloading it the first time)"},
                               _ignore_errors=True)  # errors become notifications (below), not tracebacks
        worker.returned.connect(lambda b, k=key, s=source: self._on_model_loaded(k, b, s))
        worker.errored.connect(self._on_model_error)
        self._loader = worker
        self.start_button.setEnabled(False)
        self._set_status(f"loading {key[0]} on {key[1]}...")
        worker.start()
        return True

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", str(Path.home()),
                                              "Checkpoints (*.pt *.pth *.ckpt *.safetensors);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def _on_model_loaded(self, key: tuple[str, str, str, str], backend: Backend, source: ImageSource) -> None:
        self._loader = None
        self.start_button.setEnabled(True)
        self._backends[key] = backend
        if source.layer in self.viewer.layers:
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
            session = SegmentSession(self.viewer, source, backend, parent=self, labels_layer=labels,
                                     cache_dir=cache_dir)
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
        session.propagation_started.connect(lambda: self.progress_panel.started(
            session.objects.current.name if session.objects.current else ""))
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
        if s is None:
            return False
        if s.objects.current is None:
            s.add_object()
        return s.commit()

    def propagate(self) -> bool:
        s = self._need_session()
        ok = s.propagate() if s is not None else False
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

    def export(self, path: str | Path) -> list[str]:
        """Save the labels to ``path`` (.nii/.nii.gz/.nrrd/.mha) in the image's geometry."""
        s = self._need_session()
        if s is None:
            return []
        try:
            return s.export(path)
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return []

    def load_labels(self, path: str | Path) -> list[int]:
        """Add each label of ``path`` (label map, DICOM SEG, .seg.nrrd) as an object; returns their ids."""
        from ._load_objects import load_labels_as_objects

        s = self._need_session()
        if s is None:
            return []
        try:
            ids, notes = load_labels_as_objects(s, path)
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return []
        for note in notes:
            notify("info", f"napari-sam: {note}")
        self._set_status(f"loaded {len(ids)} object(s) from {Path(path).name}")
        return ids

    def load_labels_dialog(self) -> list[int]:
        if self._need_session() is None:
            return []
        path, _ = QFileDialog.getOpenFileName(self, "Load labels as objects", str(Path.home()),
                                              "Segmentations (*.nii.gz *.nii *.nrrd *.mha *.dcm);;All files (*)")
        return self.load_labels(path) if path else []

    def export_dialog(self) -> list[str]:
        s = self._need_session()
        if s is None:
            return []
        proposed = default_export_path(s.source.layer.name)
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", str(proposed),
                                              "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha);;"
                                              "3D Slicer segmentation (*.seg.nrrd);;DICOM SEG (*.dcm)")
        out = self.export(path) if path else []
        if out:
            remember_export(out[0])
        return out

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
                item = QListWidgetItem(_swatch(o.color), o.name)
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
