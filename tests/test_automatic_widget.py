"""The "Segment everything" widget action, headless (pytest-qt, Xvfb):
it runs in a background worker, reports progress, can be cancelled, and
writes a Labels layer placed on the image.

Run with: xvfb-run -a python -m pytest tests/test_automatic_widget.py
"""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: F401  isort: skip  (before napari: see conftest)

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from fake_blob_backend import FakeBlobBackend, blob_image, touching_pairs_image  # noqa: E402
from napari_sam.evaluation import match_instances  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer):
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    viewer = make_napari_viewer()
    img, lab = touching_pairs_image()
    viewer.add_image(img, name="blobs", scale=(0.5, 0.5), translate=(3.0, 4.0), contrast_limits=(0.0, 1.0))
    w = AutoSegmentWidget(viewer, backend=FakeBlobBackend())
    viewer.window.add_dock_widget(w, name="Segment everything")
    return viewer, w, lab


def test_parameters_are_visible_and_follow_the_preset(widget):
    """The tuned parameters are on screen, the preset sets their defaults, and
    the model's role (split-check or masks) follows its check box."""
    viewer, w, _ = widget
    assert w.image_combo.currentText() == "blobs"
    for spin in (w.density_spin, w.quality_spin, w.stability_spin, w.min_size_spin):
        assert spin.isVisibleTo(w)
    assert w.split_check.isChecked() and w.settings().model_role == "split-check"
    w.split_check.setChecked(False)  # the model's masks replace the blobs
    assert w.settings().model_role == "masks"
    w.preset_combo.setCurrentText("ct")
    s = w.settings()
    assert s.proposals == "regions" and w.quality_spin.value() == pytest.approx(s.quality_threshold)
    w.preset_combo.setCurrentText("microscopy")
    w.quality_spin.setValue(0.35)
    w.min_size_spin.setValue(25)
    s = w.settings()
    assert s.proposals == "auto" and s.quality_threshold == pytest.approx(0.35) and s.min_size == 25


def test_segment_everything_writes_a_labels_layer(widget, qtbot):
    """A background run writes a Labels layer on the image (same scale and
    translation). The image holds touching pairs the blobs merge: F1 >= 0.95
    needs the (fake) model's answers (without them: about 0.5). Re-running
    replaces the layer's data; with the CT preset (tile embeddings) a re-run
    with another threshold encodes nothing."""
    viewer, w, lab = widget
    w.run()
    assert w.running and not w.run_button.isEnabled()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    layer = viewer.layers["blobs objects"]
    assert layer.__class__.__name__ == "Labels"
    assert match_instances(np.asarray(layer.data), lab).f1 >= 0.95
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3.0, 4.0)
    assert "object(s)" in w.status.text() and w.run_button.isEnabled()
    n_layers = len(viewer.layers)
    w.preset_combo.setCurrentText("ct")
    for quality in (0.5, 0.2):
        w.quality_spin.setValue(quality)
        w.run()
        qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert len(viewer.layers) == n_layers
    assert w.last_result.encoder_calls == 0


def test_cancel_stops_without_writing(make_napari_viewer, qtbot):
    """Cancel during a run (the model checking splits, one slow encoder run
    per mosaic) stops it at the next step; no layer is written."""
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    class SlowBackend(FakeBlobBackend):
        def embed(self, image):
            import time

            time.sleep(0.5)
            return super().embed(image)

    viewer = make_napari_viewer()
    img, _ = touching_pairs_image()
    viewer.add_image(np.block([[img, img], [img, img]]), name="blobs")  # ~20 splits to check: ~5 mosaics
    w = AutoSegmentWidget(viewer, backend=SlowBackend())
    w.run()
    qtbot.waitUntil(lambda: "checking splits" in w.status.text(), timeout=30_000)  # it reports progress
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=30_000)
    assert "blobs objects" not in viewer.layers
    assert w.status.text() == "cancelled" and w.run_button.isEnabled()


def test_volume_layer_gives_3d_labels(make_napari_viewer, qtbot):
    """A 2-slice stack gives (z, y, x) labels with one id per object through the slices."""
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    viewer = make_napari_viewer()
    img, lab = blob_image((96, 96), touching_pair=False)
    viewer.add_image(np.stack([img, img]), name="stack", contrast_limits=(0.0, 1.0))
    w = AutoSegmentWidget(viewer, backend=FakeBlobBackend())
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    data = np.asarray(viewer.layers["stack objects"].data)
    assert data.shape == (2, 96, 96) and data.max() == lab.max()
    w.current_slice_check.setChecked(True)
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    data = np.asarray(viewer.layers["stack objects"].data)
    assert data.shape == (2, 96, 96) and data[1].max() == 0 and data[0].max() == lab.max()


def test_the_manifest_docks_segment_everything(make_napari_viewer):
    """A user opens it from the Plugins menu: npe2 builds it from napari.yaml."""
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="empty")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    assert isinstance(w, AutoSegmentWidget) and w.image_combo.currentText() == "empty"


def test_microscopy_stack_gets_3d_instances_in_the_layers_scale(make_napari_viewer, qtbot):
    """A microscopy stack with an anisotropic layer scale is segmented in 3D
    (one id per nucleus across slices, F1 >= 0.8 at 1.5:1 contrast), with
    progress, and the Labels layer takes the image's scale; Cancel stops it.
    The default 3D path runs no model (docs/automatic.md), so this test does
    not depend on the model's answers."""
    from napari_sam.intensity import resolve_window
    from napari_sam.plugin.auto_widget import AutoSegmentWidget
    from napari_sam.synthetic import nuclei_stack

    s = nuclei_stack(contrast=1.5, seed=21)
    viewer = make_napari_viewer()
    win = resolve_window(s.image, None, None, None)
    viewer.add_image(s.image, name="nuclei", scale=s.spacing, contrast_limits=(win.lo, win.hi))
    w = AutoSegmentWidget(viewer, backend=FakeBlobBackend())
    stages = []
    w.run()
    w.worker.yielded.connect(lambda ev: stages.append(ev.stage))
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    layer = viewer.layers["nuclei objects"]
    assert tuple(layer.scale) == pytest.approx(s.spacing)
    assert match_instances(np.asarray(layer.data), s.labels).f1 >= 0.8
    assert any("proposals" in m for m in stages)
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.status.text() == "cancelled"
