"""The "Segment everything" action: automatic segmentation of an image layer.

A small dock widget: pick an image layer and a preset (microscopy or CT),
adjust the parameters users tune (grid density, quality and stability
thresholds, minimum size, object diameter, zoom, tiling), press *Segment
everything*. The work runs in napari's generator ``thread_worker`` (progress
bar, *Cancel* between steps, the GUI never freezes) and the result arrives as
a Labels layer placed on the image (same scale and translation).

The model sees what the user sees: the layer's contrast limits are the
intensity window. A 3D microscopy layer is segmented with 3D proposals in the
layer's physical scale (:mod:`napari_sam.automatic.volume`); a CT volume slice by
slice with objects linked across slices; *current slice only* segments the
displayed slice.

The segmentation itself is :class:`napari_sam.automatic.AutomaticSegmenter`;
this module only adapts layers and widgets to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..automatic import AutomaticSegmenter, AutoSettings, Stack3DSettings, StackSegmenter
from ..embeddings import CropEmbeddings
from ..errors import NapariSamError
from ..intensity import Window
from ..jobs import Progress
from ..models.base import Backend
from ..zoom import ZoomSettings

PRESETS = ("microscopy", "ct")
PROPOSALS = ("preset", "blobs", "regions", "box-grid", "point-grid", "blobs+box-grid", "regions+box-grid")


def _notify(level: str, message: str) -> None:
    try:
        from napari.utils.notifications import show_error, show_info

        (show_error if level == "error" else show_info)(message)
    except Exception:  # pragma: no cover - notifications are best effort
        pass


class AutoSegmentWidget(QWidget):
    """Dock widget running automatic segmentation on an image layer.

    napari_viewer: the viewer (npe2 passes it); backend: a loaded model, or a
    function returning one (called in the worker thread on first use);
    default: the embedded model, loaded on first run.
    """

    def __init__(
        self, napari_viewer: Any, backend: Backend | Callable[[], Backend] | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._backend_source = backend
        self._backend: Backend | None = backend if isinstance(backend, Backend) else None
        self._embeddings: CropEmbeddings | None = None
        self.worker: Any = None
        self.last_result = None
        self._build_ui()
        self._refresh_layers()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._apply_preset()

    # ------------------------------------------------------------------ UI
    def _build_form(self) -> QFormLayout:
        """The parameter fields users tune, in a form."""
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("the image layer to segment")
        form.addRow("Image", self.image_combo)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESETS)
        self.preset_combo.setToolTip("defaults for fluorescence microscopy (blobs) or CT (intensity regions)")
        self.preset_combo.currentTextChanged.connect(lambda _t: self._apply_preset())
        form.addRow("Preset", self.preset_combo)
        self.proposals_combo = QComboBox()
        self.proposals_combo.addItems(PROPOSALS)
        self.proposals_combo.setToolTip(
            "where the prompts come from: image structure (blobs, regions), "
            "a box grid, or a point grid (point-capable models)"
        )
        form.addRow("Proposals", self.proposals_combo)
        self.density_spin = QSpinBox()
        self.density_spin.setRange(1, 128)
        self.density_spin.setToolTip("grid density: points per tile side (point grid)")
        form.addRow("Grid density", self.density_spin)
        self.quality_spin = self._unit_spin("minimum predicted IoU of a kept mask")
        form.addRow("Quality threshold", self.quality_spin)
        self.stability_spin = self._unit_spin("minimum stability of a kept mask (IoU of masks at logit -1 and +1)")
        form.addRow("Stability threshold", self.stability_spin)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setSpecialValueText("auto")
        self.min_size_spin.setToolTip("smallest object kept, pixels (auto: from the object diameter)")
        form.addRow("Min size (px)", self.min_size_spin)
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 10000.0)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSpecialValueText("auto")
        self.diameter_spin.setToolTip("typical object diameter in pixels (auto: estimated from the image)")
        form.addRow("Object diameter", self.diameter_spin)
        self.split_check = QCheckBox("keep blob outlines; the model splits touching ones")
        self.split_check.setToolTip(
            "blobs: the outlines found in the image are kept and the model, at zoom, "
            "decides which touching blobs hold several objects (microscopy default); "
            "unchecked, the model's masks replace the blobs"
        )
        form.addRow("", self.split_check)
        self.zoom_check = QCheckBox("zoom small objects")
        self.zoom_check.setToolTip(
            "decode each proposal on a magnified crop: sharper outlines, one encoder run per crop (slower); for the model's masks (the box above unchecked)"
        )
        form.addRow("", self.zoom_check)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setToolTip("tile side for large images, pixels")
        form.addRow("Tile size", self.tile_spin)
        self.halo_spin = QSpinBox()
        self.halo_spin.setRange(0, 2048)
        self.halo_spin.setToolTip("tile overlap on each side, pixels (the largest object never cut)")
        form.addRow("Halo", self.halo_spin)
        self.current_slice_check = QCheckBox("current slice only (3D)")
        form.addRow("", self.current_slice_check)
        return form

    def _build_ui(self) -> None:
        form = self._build_form()
        self.run_button = QPushButton("Segment everything")
        self.run_button.setToolTip("find and segment every object of the image, in the background")
        self.run_button.clicked.connect(lambda _c=False: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda _c=False: self.cancel())
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        from ._compact import scrolling_layout

        layout = scrolling_layout(self)  # fits a 1080 px screen beside the Segment Anything widget
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    @staticmethod
    def _unit_spin(tip: str) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(0.0, 1.0)
        s.setSingleStep(0.05)
        s.setDecimals(2)
        s.setToolTip(tip)
        return s

    def _refresh_layers(self, *_args: Any) -> None:
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        active = self.viewer.layers.selection.active
        if current in names:
            self.image_combo.setCurrentText(current)
        elif isinstance(active, Image):  # first fill: the image the user has selected, not the first one
            self.image_combo.setCurrentText(active.name)

    def _apply_preset(self) -> None:
        """Show the chosen preset's defaults in the parameter fields."""
        s = AutoSettings.for_ct() if self.preset_combo.currentText() == "ct" else AutoSettings.for_microscopy()
        self.proposals_combo.setCurrentText("preset")
        self.density_spin.setValue(s.points_per_side)
        self.quality_spin.setValue(s.quality_threshold)
        self.stability_spin.setValue(s.stability_threshold)
        self.min_size_spin.setValue(s.min_size or 0)
        self.diameter_spin.setValue(s.object_diameter or 0.0)
        self.zoom_check.setChecked(s.zoom is not None)
        self.split_check.setChecked(s.model_role == "split-check")
        self.tile_spin.setValue(int(s.tile_shape[0]))
        self.halo_spin.setValue(int(s.halo))

    # ------------------------------------------------------------------ parameters
    def settings(self) -> AutoSettings:
        """The :class:`AutoSettings` the fields describe (raises InputError on bad values)."""
        changes: dict[str, Any] = {
            "points_per_side": self.density_spin.value(),
            "quality_threshold": round(self.quality_spin.value(), 4),
            "stability_threshold": round(self.stability_spin.value(), 4),
            "min_size": self.min_size_spin.value() or None,
            "object_diameter": self.diameter_spin.value() or None,
            "zoom": ZoomSettings() if self.zoom_check.isChecked() else None,
            "tile_shape": (self.tile_spin.value(), self.tile_spin.value()),
            "halo": self.halo_spin.value(),
            "model_role": "split-check" if self.split_check.isChecked() else "masks",
        }
        if self.proposals_combo.currentText() != "preset":
            changes["proposals"] = self.proposals_combo.currentText()
        if self.preset_combo.currentText() == "ct":
            return AutoSettings.for_ct(**changes)
        return AutoSettings.for_microscopy(**changes)

    def image_layer(self):
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self) -> None:
        """Start automatic segmentation of the chosen layer in a background worker."""
        from napari.qt.threading import thread_worker

        if self.running:
            return
        layer = self.image_layer()
        if layer is None:
            _notify("error", "napari-sam: add an image layer to segment first")
            return
        try:
            settings = self.settings()
        except NapariSamError as exc:
            _notify("error", f"napari-sam: {exc}")
            return
        data = np.asarray(layer.data)
        rgb = bool(getattr(layer, "rgb", False))
        ndim = data.ndim - (1 if rgb else 0)
        if ndim not in (2, 3):
            _notify("error", f"napari-sam: layer {layer.name!r} has {ndim} dimensions; expected 2D or 3D")
            return
        window = _layer_window(layer, data, rgb)
        z = None
        if ndim == 3 and self.current_slice_check.isChecked():
            z = int(self.viewer.dims.current_step[0])
        job = _Job(layer.name, data, rgb, ndim, z, window, settings)
        job.scale = tuple(float(abs(v)) for v in tuple(layer.scale)[-3:]) if ndim == 3 else None
        job.stack3d = (
            ndim == 3
            and not rgb
            and self.preset_combo.currentText() == "microscopy"
            and self.proposals_combo.currentText() in ("preset", "blobs")
        )
        worker = thread_worker(self._work, progress=False)(job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result, j=job: self._on_done(j, result))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText("starting ...")
        worker.start()

    def cancel(self) -> None:
        """Stop the running segmentation at its next step; nothing is written."""
        if self.worker is not None:
            self.status.setText("cancelling ...")
            self.worker.quit()

    def _get_backend(self) -> Backend:
        if self._backend is None:
            if callable(self._backend_source):
                self._backend = self._backend_source()
            else:
                from ..models.registry import load_model

                self._backend = load_model()
        if self._embeddings is None or self._embeddings.backend is not self._backend:
            self._embeddings = CropEmbeddings(self._backend, max_in_memory=64)
        return self._backend

    def _work(self, job: _Job):
        """Runs in the worker thread: a job (generator of jobs.Progress) returning the AutoResult."""
        yield Progress(0, 1, "loading model")
        backend = self._get_backend()
        segmenter = AutomaticSegmenter(backend, job.settings, self._embeddings)
        win = job.window
        if job.ndim == 2:
            result = yield from segmenter.iter_segment(win.apply(job.data))
        elif job.z is not None:
            result = yield from segmenter.iter_segment(win.apply(job.data[job.z]))
        elif job.stack3d:
            # microscopy stack: 3D proposals in the layer's physical scale (napari_sam.automatic.volume)
            st = Stack3DSettings(spacing=job.scale, object_diameter=job.settings.object_diameter)
            result = yield from StackSegmenter(backend, st, self._embeddings).iter_segment(win.apply(job.data))
        else:
            result = yield from segmenter.iter_segment_volume(lambda k: win.apply(job.data[k]), len(job.data))
        return result

    def _on_progress(self, ev: Progress) -> None:
        if ev.total > 0:
            self.progress.setRange(0, ev.total)
            self.progress.setValue(min(ev.done, ev.total))
        self.status.setText(ev.stage)

    def _on_done(self, job: _Job, result) -> None:
        self.last_result = result
        layer = self.viewer.layers[job.layer_name] if job.layer_name in self.viewer.layers else None
        labels = result.labels
        if job.z is not None:  # one slice of a volume: a full-size labels layer with that slice filled
            full = np.zeros(job.data.shape[:3], labels.dtype)
            full[job.z] = labels
            labels = full
        kwargs: dict[str, Any] = {"name": f"{job.layer_name} objects"}
        if layer is not None:
            nd = labels.ndim
            kwargs["scale"] = tuple(layer.scale)[-nd:]
            kwargs["translate"] = tuple(layer.translate)[-nd:]
        name = kwargs["name"]
        if name in self.viewer.layers:
            self.viewer.layers[name].data = labels
            out = self.viewer.layers[name]
        else:
            out = self.viewer.add_labels(labels, **kwargs)
        out.metadata["napari_sam_auto"] = {
            "timings": result.timings,
            "proposals": result.proposals,
            "diameter": result.diameter,
        }
        n = int(labels.max(initial=0))
        self.status.setText(f"{n} object(s) in {result.timings.get('total', 0.0):.1f} s ({result.proposals} prompts)")

    def _on_error(self, exc: Exception) -> None:
        msg = str(exc) if isinstance(exc, NapariSamError) else f"{type(exc).__name__}: {exc}"
        self.status.setText(f"failed: {msg}")
        _notify("error", f"napari-sam: automatic segmentation failed: {msg}")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if self.status.text() in ("cancelled", "cancelling ...") else 1)


class _Job:
    """What one run needs, captured on the GUI thread."""

    def __init__(
        self,
        layer_name: str,
        data: np.ndarray,
        rgb: bool,
        ndim: int,
        z: int | None,
        window: Window,
        settings: AutoSettings,
    ) -> None:
        self.layer_name, self.data, self.rgb, self.ndim, self.z = layer_name, data, rgb, ndim, z
        self.window, self.settings = window, settings
        self.scale: tuple[float, ...] | None = None
        self.stack3d = False


def _layer_window(layer: Any, data: np.ndarray, rgb: bool) -> Window:
    """The intensity window the model sees: the layer's contrast limits (what the user sees)."""
    if rgb:
        return Window(0.0, 255.0 if data.dtype == np.uint8 else float(max(1.0, data.max())), "dtype")
    lo, hi = (float(v) for v in layer.contrast_limits)
    if not hi > lo:
        hi = lo + 1.0
    return Window(lo, hi, "contrast-limits")
