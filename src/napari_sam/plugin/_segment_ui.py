"""The segment widget's controls: built here, wired to the widget's public methods.

:func:`build_segment_ui` adds every control to a :class:`SegmentWidget` as an
attribute (``image_combo``, ``commit_button``, ...); the widget itself only
holds the actions. :data:`SHORTCUTS` lists each action's key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)

from . import _prompt_layers as pl
from ._candidates_view import CandidatesView
from ._compact import help_button, scrolling_layout
from ._progress_panel import ProgressPanel
from ._reader_preference import ReaderOffer
from ._session_files import RecoveryOffer
from ._vocabulary import vocabulary

__all__ = ["SHORTCUTS", "SHORTCUT_METHODS", "build_segment_ui", "make_button", "swatch", "available_devices"]

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
    "redo": ("Shift-Y", "redo what the last undo took back (also Ctrl+Shift+Z on the labels layer)"),
    "export": ("Shift-E", "save the labels as NIfTI in the image's geometry"),
    "save_session": ("Shift-W", "save the session (objects, key slices, prompts, labels) to a folder"),
}

#: the widget method each shortcut calls (the action's name when not listed)
SHORTCUT_METHODS = {"export": "export_dialog", "save_session": "save_session_dialog"}


def available_devices() -> list[str]:
    """The device choices: auto, cpu, and CUDA / Apple MPS where present."""
    import torch

    devs = ["auto", "cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


def swatch(color: tuple[int, int, int]) -> QIcon:
    """A small square icon of ``color`` (r, g, b)."""
    pix = QPixmap(14, 14)
    pix.fill(QColor(*color))
    return QIcon(pix)


def make_button(text: str, action: str | None, slot: Callable[[], Any], tip: str) -> QPushButton:
    """A button calling ``slot``; its tooltip names the action's shortcut."""
    b = QPushButton(text)
    if action is not None:
        key, what = SHORTCUTS[action]
        tip = f"{tip or what.capitalize()} [{key}]"
    b.setToolTip(tip)
    b.clicked.connect(lambda _checked=False: slot())
    return b


def _model_form(w: Any, lay: Any) -> None:
    from ..models.precision import DEFAULT_PRECISION, PRECISIONS
    from ..models.registry import REGISTRY

    form = QFormLayout()
    w.image_combo = QComboBox()
    w.image_combo.setToolTip("The image layer to segment (2D grayscale or RGB, or a 3D volume)")
    w.model_combo = QComboBox()
    for name, spec in REGISTRY.items():
        w.model_combo.addItem(name)
        w.model_combo.setItemData(w.model_combo.count() - 1, spec.description, Qt.ToolTipRole)
    w.model_combo.setToolTip("The segmentation model")
    w.device_combo = QComboBox()
    w.device_combo.addItems(available_devices())
    w.device_combo.setToolTip("Where the model runs; auto picks CUDA, then Apple MPS, then the CPU")
    w.precision_combo = QComboBox()
    w.precision_combo.addItems(PRECISIONS)
    w.precision_combo.setCurrentText(DEFAULT_PRECISION)
    w.precision_combo.setToolTip(
        "Image encoder precision: auto takes bf16 where the CPU or GPU runs it "
        "natively (faster), else fp32; see docs/performance.md"
    )
    w.checkpoint_edit = QLineEdit()
    w.checkpoint_edit.setPlaceholderText("default: embedded or downloaded once")
    w.checkpoint_edit.setToolTip(
        "Optional local checkpoint file for the chosen model (offline use, "
        "fine-tuned weights, models without a direct download)"
    )
    browse = QToolButton()
    browse.setText("...")
    browse.setToolTip("Choose a checkpoint file")
    browse.clicked.connect(lambda: _browse_checkpoint(w))
    ckpt_row = QHBoxLayout()
    ckpt_row.addWidget(w.checkpoint_edit)
    ckpt_row.addWidget(browse)
    for label, field in (
        ("Image", w.image_combo),
        ("Model", w.model_combo),
        ("Checkpoint", ckpt_row),
        ("Device", w.device_combo),
        ("Precision", w.precision_combo),
    ):
        form.addRow(label, field)
    lay.addLayout(form)


def _browse_checkpoint(w: Any) -> None:
    path, _ = QFileDialog.getOpenFileName(
        w, "Model checkpoint", str(Path.home()), "Checkpoints (*.pt *.pth *.ckpt *.safetensors);;All files (*)"
    )
    if path:
        w.checkpoint_edit.setText(path)


def _options(w: Any, lay: Any) -> None:
    from ..cache import default_cache_dir

    w.disk_cache_check = QCheckBox("Keep embeddings on disk")
    w.disk_cache_check.setChecked(True)
    w.disk_cache_check.setToolTip(
        "Store slice embeddings in the napari-sam cache folder "
        f"({default_cache_dir()}; set NAPARI_SAM_CACHE_DIR to move it), "
        "so that reopening the same image with the same contrast encodes nothing"
    )
    lay.addWidget(w.disk_cache_check)
    w.zoom_check = QCheckBox("Zoom small objects")
    w.zoom_check.setChecked(True)
    w.zoom_check.setToolTip(
        "Decode a small object's prompt on a magnified crop around it (the model sees "
        "it at full input size): sharper outlines of nuclei and small structures; "
        "the first prompt on a new crop encodes it (~0.5 s)"
    )
    w.zoom_check.toggled.connect(w._set_zoom)
    lay.addWidget(w.zoom_check)
    w.start_button = make_button("Start", None, w.start, "Load the model and add the prompt, preview and labels layers")
    lay.addWidget(w.start_button)


def _prompts_box(w: Any, lay: Any) -> None:
    box = QGroupBox("Prompts on this slice")
    bl = QVBoxLayout(box)
    legend = QLabel(
        f'Boxes: <span style="color:{pl.BOX_COLOR}">&#9633;</span> &nbsp; clicks: '
        f'<span style="color:{pl.POSITIVE_COLOR}">&#9679; positive</span> &nbsp; '
        f'<span style="color:{pl.NEGATIVE_COLOR}">&#9679; negative</span>'
    )
    legend.setTextFormat(Qt.RichText)
    bl.addWidget(legend)
    w.negative_button = make_button(
        "Clicks: positive",
        "toggle_negative",
        w.toggle_negative,
        "Switch new clicks between positive (green) and negative (red)",
    )
    w.negative_button.setCheckable(True)
    bl.addWidget(w.negative_button)
    row = QHBoxLayout()
    w.candidate_button = make_button("Next candidate", "next_candidate", w.next_candidate, "")
    w.clear_button = make_button("Clear", "clear_prompts", w.clear_prompts, "")
    row.addWidget(w.candidate_button)
    row.addWidget(w.clear_button)
    bl.addLayout(row)
    w.candidates_view = CandidatesView(w.select_candidate)
    w.candidates_view.setVisible(False)
    bl.addWidget(w.candidates_view)
    w.commit_button = make_button("Commit to object", "commit", w.commit, "")
    bl.addWidget(w.commit_button)
    lay.addWidget(box)


def _objects_box(w: Any, lay: Any) -> None:
    obox = QGroupBox("Objects")
    ol = QVBoxLayout(obox)
    w.object_list = QListWidget()
    w.object_list.setToolTip("Objects (one label id each). Double-click to rename; select to make current")
    w.object_list.setMaximumHeight(120)
    w.object_list.currentItemChanged.connect(w._on_object_selected)
    w.object_list.itemChanged.connect(w._on_object_edited)
    ol.addWidget(w.object_list)
    w.name_edit = QLineEdit()
    w.name_edit.setPlaceholderText("name the current object (liver, nucleus, ...)")
    w.name_edit.setToolTip(
        "Name of the current object; suggestions from anatomy and cell names "
        "and the names you typed before. Enter to apply"
    )
    w._completer_model = QStringListModel(vocabulary())
    completer = QCompleter(w._completer_model, w.name_edit)
    completer.setCaseSensitivity(Qt.CaseInsensitive)
    completer.setFilterMode(Qt.MatchContains)
    w.name_edit.setCompleter(completer)
    w.name_edit.returnPressed.connect(w._apply_name)
    ol.addWidget(w.name_edit)
    row = QHBoxLayout()
    w.add_button = make_button("Add", "add_object", w.add_object, "")
    w.rename_button = make_button("Rename", None, w.rename_object, "Rename the selected object")
    w.delete_button = make_button(
        "Delete", None, w.delete_object, "Delete the selected object and its pixels (undoable)"
    )
    for b in (w.add_button, w.rename_button, w.delete_button):
        row.addWidget(b)
    ol.addLayout(row)
    lay.addWidget(obox)


def _volume_box(w: Any, lay: Any) -> None:
    vbox = QGroupBox("Volume")
    vl = QVBoxLayout(vbox)
    row = QHBoxLayout()
    w.propagate_button = make_button("Propagate", "propagate", w.propagate, "")
    w.cancel_button = make_button("Cancel", "cancel_propagation", w.cancel_propagation, "")
    row.addWidget(w.propagate_button)
    row.addWidget(w.cancel_button)
    vl.addLayout(row)
    w.embed_all_button = make_button(
        "Embed all slices",
        None,
        w.embed_all,
        "Compute every slice's image embedding in the background (otherwise slices are embedded when first needed)",
    )
    w.adapt_button = make_button(
        "Adapt to my corrections",
        None,
        w.adapt,
        "Train a copy of the model on the current object's committed and corrected slices (30 s at most; "
        "the base model is never changed), then propagate the object again with it",
    )
    row = QHBoxLayout()
    row.addWidget(w.embed_all_button)
    row.addWidget(w.adapt_button)
    vl.addLayout(row)
    w.progress_panel = ProgressPanel(on_slice=w._show_slice)
    vl.addWidget(w.progress_panel)
    lay.addWidget(vbox)


def _bottom(w: Any, lay: Any) -> None:
    row = QHBoxLayout()
    w.undo_button = make_button("Undo", "undo", w.undo, "")
    w.redo_button = make_button("Redo", "redo", w.redo, "")
    w.export_button = make_button("Export...", "export", w.export_dialog, "")
    w.load_button = make_button(
        "Load labels as objects...",
        None,
        w.load_labels_dialog,
        "Bring in an existing segmentation (label map, DICOM SEG, .seg.nrrd) as objects: "
        "each label becomes an object whose slices are key slices",
    )
    for b in (w.undo_button, w.redo_button, w.export_button, w.load_button):
        row.addWidget(b)
    lay.addLayout(row)
    row = QHBoxLayout()
    w.save_session_button = make_button("Save session...", "save_session", w.save_session_dialog, "")
    w.open_session_button = make_button(
        "Open session...",
        None,
        w.open_session_dialog,
        "Continue a session saved on this image (objects, key slices, prompts)",
    )
    w.export_prompts_button = make_button(
        "Export prompts...",
        None,
        w.export_prompts_dialog,
        "Write the session as a prompts file (its actions in order, painted slices as mask files): "
        "napari-sam segment IMAGE --prompts FILE gives the same labels",
    )
    for b in (w.save_session_button, w.open_session_button, w.export_prompts_button):
        row.addWidget(b)
    lay.addLayout(row)
    w.status_label = QLabel("Choose an image layer and press Start.")
    w.status_label.setWordWrap(True)
    lay.addWidget(w.status_label)
    w.help_button = help_button(
        "Keyboard shortcuts (anywhere in the viewer window while this widget is open):<br>"
        + "<br>".join(f"<b>{k}</b>: {what}" for k, what in SHORTCUTS.values())
    )
    lay.addWidget(w.help_button)
    lay.addStretch(1)


def build_segment_ui(w: Any) -> None:
    """Add the widget's controls to ``w`` (a :class:`SegmentWidget`)."""
    lay = scrolling_layout(w)  # fits a 1080 px screen with Segment everything docked too
    w.reader_offer = ReaderOffer()  # once: make napari-sam napari's reader for medical files
    lay.addWidget(w.reader_offer)
    w.reader_offer.setVisible(w.reader_offer.should_offer())  # (after parenting, which hides)
    w.recovery_offer = RecoveryOffer(w._on_recovery_answer)  # shown when a crashed session left work
    lay.addWidget(w.recovery_offer)
    w.recovery_offer.setVisible(False)
    _model_form(w, lay)
    _options(w, lay)
    _prompts_box(w, lay)
    _objects_box(w, lay)
    _volume_box(w, lay)
    _bottom(w, lay)
