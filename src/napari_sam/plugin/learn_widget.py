"""The "Learn from my annotations" panel: fine-tune on committed objects, find classes by name.

Two sections, each a background job with a progress bar and *Cancel*:

- **Fine-tune**: trains the model on the chosen image and the objects of a
  Labels layer (the objects the user committed or painted; their names come
  from the layer's ``name`` feature, else the layer's name), through
  :func:`napari_sam.finetune.volumes.finetune_volumes`: simulated prompts,
  held-out slices, early stopping, and a checkpoint written atomically at
  every improvement (so *Cancel* keeps the best so far). The names are taught
  as classes. *Use in Segment Anything* then switches the segment widget to
  the tuned checkpoint.
- **Find by name**: a text prompt ("liver, spleen") on the chosen image with
  a taught checkpoint (:mod:`napari_sam.text_prompts`): each class is found,
  boxed on its most confident slice and propagated; the result arrives as a
  Labels layer on the image.

The compute is the core's; this module only adapts layers and widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariSamError
from ..io import Volume
from ..jobs import Cancel, Progress, threaded
from ._image_source import ImageSource
from ._notify import notify


def _layer_volume(layer: Any) -> Volume:
    """A napari Image layer as a core Volume (geometry, modality and DICOM window from our reader)."""
    src = ImageSource.from_layer(layer)
    meta = (layer.metadata or {}).get("napari_sam", {})
    md = {k: meta[k] for k in ("path", "modality", "dicom_window") if meta.get(k) is not None}
    if md.get("dicom_window") is not None:
        md["dicom_window"] = tuple(md["dicom_window"])
    md.update(is_2d=src.is_2d, is_rgb=src.is_rgb)
    return Volume(np.ascontiguousarray(src.volume), src.geometry, md)


def _label_names(layer: Any, ids: list[int]) -> dict[int, str]:
    """Object names from the Labels layer's ``name`` feature (index = label id), else its layer name."""
    feats = getattr(layer, "features", None)
    table: dict[int, str] = {}
    if feats is not None and "name" in getattr(feats, "columns", ()):
        index = feats["index"] if "index" in feats.columns else feats.index
        table = {int(i): str(n) for i, n in zip(index, feats["name"]) if str(n)}
    return {i: table.get(i, layer.name) for i in ids}


def folder_pairs(folder: Path) -> list[tuple[Volume, np.ndarray, dict[int, str]]]:
    """The image/label pairs of ``folder/images`` and ``folder/labels`` (matched by file name;
    names from the labels' JSON, as ``napari-sam finetune`` reads them)."""
    from ..finetune.pipeline import label_names, read_pair

    images, labels = folder / "images", folder / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise NapariSamError(f"{folder}: expected the sub-folders images/ and labels/")
    pairs = []
    for img in sorted(p for p in images.iterdir() if not p.name.startswith(".")):
        lab = labels / img.name
        if not lab.exists():
            raise NapariSamError(f"{img.name}: no label map of that name in {labels}")
        vol, lmap = read_pair(img, lab)
        pairs.append((vol, lmap, label_names(lab, [int(v) for v in np.unique(lmap) if v != 0])))
    if not pairs:
        raise NapariSamError(f"{images}: no image to train on")
    return pairs


class LearnWidget(QWidget):
    """Dock widget: fine-tune on a Labels layer's objects; segment taught classes by name."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.cancel_token: Cancel | None = None
        self.last_outcome = None
        self._build_ui()
        self._refresh_layers()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.progress, self.status = QProgressBar(), QLabel("")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        bottom = QHBoxLayout()
        bottom.addWidget(self.progress)
        bottom.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        for w in (self._tune_box(), self._find_box()):
            lay.addWidget(w)
        lay.addLayout(bottom)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _tune_box(self) -> QGroupBox:
        """ "Fine-tune on my objects": the training data, budget and checkpoint, and the buttons."""
        from qtpy.QtWidgets import QComboBox

        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        self.image_combo.setToolTip("the image the objects were drawn on")
        self.labels_combo.setToolTip("the Labels layer holding your committed objects (names: its 'name' feature)")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 50)
        self.epochs.setValue(4)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.5, 240)
        self.minutes.setValue(10)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("or a folder with images/ and labels/ (same file names)")
        self.folder_edit.setToolTip(
            "train on a folder of image/label pairs instead of the layers above: "
            "FOLDER/images/X and FOLDER/labels/X, any reader format"
        )
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("default: ~/napari-sam/<image>_tuned.pt")
        self.output_edit.setToolTip("where the tuned checkpoint is written (atomically; never over an input)")
        self.train_button, self.use_button = (QPushButton("Fine-tune"), QPushButton("Use in Segment Anything"))
        self.train_button.clicked.connect(self.train)
        self.use_button.clicked.connect(self.use_tuned)
        self.use_button.setEnabled(False)
        form = QFormLayout()
        for label, field in (
            ("Image", self.image_combo),
            ("Objects", self.labels_combo),
            ("Folder", self.folder_edit),
            ("Epochs", self.epochs),
            ("Max minutes", self.minutes),
            ("Checkpoint", self.output_edit),
        ):
            form.addRow(label, field)
        tune = QGroupBox("Fine-tune on my objects")
        tv = QVBoxLayout(tune)
        tv.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.use_button)
        tv.addLayout(row)
        return tune

    def _find_box(self) -> QGroupBox:
        """ "Find by name": class names to find with the checkpoint's taught classes."""
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("liver, spleen")
        self.text_edit.setToolTip("class names the checkpoint was taught, separated by commas")
        self.text_edit.returnPressed.connect(self.find)
        self.find_button = QPushButton("Find")
        self.find_button.clicked.connect(self.find)
        find = QGroupBox("Find by name (taught classes)")
        fr = QHBoxLayout(find)
        fr.addWidget(self.text_edit)
        fr.addWidget(self.find_button)
        return find

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([lay.name for lay in self.viewer.layers if isinstance(lay, kind)])
            if current:
                combo.setCurrentText(current)

    def _layer(self, combo) -> Any:
        name = combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def checkpoint_path(self) -> Path:
        """The tuned checkpoint's path: the field, else ~/napari-sam/<image>_tuned.pt."""
        text = self.output_edit.text().strip()
        if text:
            return Path(text).expanduser()
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.image_combo.currentText()) or "image"
        return Path.home() / "napari-sam" / f"{stem}_tuned.pt"

    # ------------------------------------------------------------------ jobs
    @property
    def running(self) -> bool:
        return self.worker is not None

    def train(self) -> None:
        """Fine-tune on the chosen Labels layer's objects in a background worker."""
        self._launch(self._training_job, "fine-tuning")

    def _launch(self, make_job, what: str) -> None:
        """Prepare a job on the GUI thread (bad input: a notification), then run it."""
        try:
            work, done = make_job()
        except NapariSamError as exc:
            notify("error", f"napari-sam: {exc}")
            return
        self._start(work, done, what)

    def _training_job(self):
        from ..finetune.train import FinetuneSettings
        from ..finetune.volumes import finetune_volumes
        from ..models.registry import load_model

        pairs = self._training_pairs()
        out = self.checkpoint_path()
        if out.suffix != ".pt":
            raise NapariSamError(f"{out}: the checkpoint must end in .pt")
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = FinetuneSettings(epochs=self.epochs.value(), max_seconds=60 * self.minutes.value())

        def work(progress, cancel):
            backend = load_model("lite_medsam")
            return finetune_volumes(
                backend,
                pairs,
                settings,
                out,
                progress=lambda d, t, s: progress(Progress(d, t, s)),
                cancel=cancel.is_set,
            )

        def done(outcome) -> None:
            self.last_outcome = outcome
            r = outcome.result
            self.use_button.setEnabled(True)
            self.status.setText(
                f"wrote {out}: validation Dice {r.base_val_dice:.3f} -> {r.best_val_dice:.3f}"
                f"{' (stopped early: best kept)' if r.interrupted else ''}"
            )

        return work, done

    def _training_pairs(self) -> list[tuple[Volume, np.ndarray, dict[int, str]]]:
        """(volume, labels, names) to train on: the folder's pairs, else the chosen layers."""
        folder = self.folder_edit.text().strip()
        if folder:
            return folder_pairs(Path(folder).expanduser())
        image, labels_layer = self._layer(self.image_combo), self._layer(self.labels_combo)
        if labels_layer is None:
            raise NapariSamError("choose a Labels layer holding your objects (commit some first)")
        volume = _layer_volume(image)
        labels = np.asarray(labels_layer.data).astype(np.int64)
        labels = labels[None] if volume.is_2d else labels
        return [(volume, labels, _label_names(labels_layer, [int(v) for v in np.unique(labels) if v != 0]))]

    def find(self) -> None:
        """Segment the named classes on the chosen image with the tuned checkpoint."""
        self._launch(self._find_job, "finding")

    def _find_job(self):
        from ..finetune.classes import load_class_head
        from ..intensity import resolve_window
        from ..models.registry import load_model
        from ..prompts import parse_prompts
        from ..segmentation import segment_volume
        from ..text_prompts import parse_class_names, text_prompts_file

        image = self._layer(self.image_combo)
        volume = _layer_volume(image)
        names = parse_class_names(self.text_edit.text())
        ckpt = self.checkpoint_path()
        head = load_class_head(ckpt)
        for name in names:
            head.index_of(name)
        md = volume.metadata
        window = resolve_window(volume.array, None, md.get("modality"), md.get("dicom_window"))
        transform = ImageSource.from_layer(image).transform_kwargs()

        def work(progress, cancel):
            from ..embeddings import SliceEmbeddings

            backend = load_model("lite_medsam", checkpoint=ckpt)
            store = SliceEmbeddings(backend, volume.array, window, 0)
            embs = []
            for z in range(volume.shape[0]):
                cancel.raise_if_set("finding")
                embs.append(store.get(z))
                progress(Progress(z + 1, volume.shape[0], f"reading slice {z + 1}/{volume.shape[0]}"))
            doc, _found = text_prompts_file(
                head,
                names,
                embs,
                backend.image_size,
                volume.shape[0] > 1,
                warn=lambda m: notify("info", f"napari-sam: {m}"),
            )
            doc["window"] = [window.lo, window.hi]
            return segment_volume(
                volume, parse_prompts(doc, where="text"), backend, embeddings_for=lambda w, a: store, cancel=cancel
            )

        def done(result) -> None:
            labels = result.labels[0] if volume.is_2d else result.labels
            layer = self.viewer.add_labels(labels, name=f"found: {', '.join(names)}", **transform)
            layer.features = {"index": list(result.names), "name": list(result.names.values())}
            self.status.setText(f"found {len(result.names)} of {len(names)}: {', '.join(result.names.values())}")

        return work, done

    def _start(self, work, done, what: str) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        self.cancel_token = Cancel()
        worker = create_worker(threaded, work, self.cancel_token, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(done)
        worker.errored.connect(lambda exc: notify("error", f"napari-sam: {what} failed: {exc}"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        for b in (self.train_button, self.find_button):
            b.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"{what} ...")
        worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next step (a fine-tuning keeps its best checkpoint)."""
        if self.cancel_token is not None:
            self.cancel_token.set()
            self.status.setText("cancelling ...")

    def _on_progress(self, ev: Progress) -> None:
        if ev.total > 0:
            self.progress.setRange(0, ev.total)
            self.progress.setValue(min(ev.done, ev.total))
        self.status.setText(ev.stage)

    def _on_finished(self) -> None:
        self.worker = None
        for b in (self.train_button, self.find_button):
            b.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)

    def use_tuned(self) -> bool:
        """Switch every open Segment Anything widget to the tuned checkpoint; False when none is open."""
        from .segment_widget import SegmentWidget

        found = False
        for widget in _dock_widgets(self.viewer):
            if isinstance(widget, SegmentWidget):
                widget.checkpoint_edit.setText(str(self.checkpoint_path()))
                found = True
        notify(
            "info",
            f"napari-sam: segment with {self.checkpoint_path()}"
            if found
            else "napari-sam: open Segment Anything first, then press this again",
        )
        return found


def _dock_widgets(viewer: Any) -> list[Any]:
    """The widgets docked in the viewer's window (napari's public mapping of the inner widgets)."""
    return list(getattr(viewer.window, "dock_widgets", {}).values())
