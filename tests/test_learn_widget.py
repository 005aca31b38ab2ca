"""The "Learn from my annotations" panel with real mouse and keyboard events (pytest-qt, Xvfb).

It fine-tunes the embedded model on a Labels layer's objects in a background
worker (progress, cancel), teaches their names as a class, switches the
Segment Anything widget to the tuned checkpoint, and finds the class by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: F401  isort: skip  (before napari: see conftest)

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import Qt  # noqa: E402

from napari_sam.finetune.checkpoint import read_class_state, read_provenance  # noqa: E402
from test_finetune import _disks  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def panel(make_napari_viewer, tmp_path):
    from napari_sam.plugin.learn_widget import LearnWidget

    viewer = make_napari_viewer()
    img, lab = _disks(seed=3)
    viewer.add_image(img, name="disks", contrast_limits=(0.0, 1.0))
    layer = viewer.add_labels(lab, name="my objects")
    layer.features = {"index": [1, 2, 3, 4], "name": ["nucleus"] * 4}
    w = LearnWidget(viewer)
    viewer.window.add_dock_widget(w, name="Learn")
    w.image_combo.setCurrentText("disks")
    w.labels_combo.setCurrentText("my objects")
    w.output_edit.setText(str(tmp_path / "tuned.pt"))
    return viewer, w, lab, tmp_path / "tuned.pt"


def test_fine_tune_on_my_objects_then_find_them_by_name(panel, qtbot):
    viewer, w, lab, ckpt = panel
    w.epochs.setValue(1)
    progress = []
    w.progress.valueChanged.connect(progress.append)
    qtbot.mouseClick(w.train_button, Qt.LeftButton)
    assert w.running and not w.train_button.isEnabled() and w.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not w.running, timeout=600_000)
    assert ckpt.is_file() and "wrote" in w.status.text(), w.status.text()
    assert progress, "no progress was shown"
    assert read_class_state(ckpt)["names"] == ["nucleus"]
    assert read_provenance(ckpt)["samples"]["train"] > 0

    w.text_edit.setFocus()
    qtbot.keyClicks(w.text_edit, "Nucleus")
    qtbot.keyClick(w.text_edit, Qt.Key_Return)
    qtbot.waitUntil(lambda: not w.running and "found:" in " ".join(viewer.layers[-1].name.split()[:1]), timeout=600_000)
    found = np.asarray(viewer.layers["found: Nucleus"].data) > 0
    assert found.any()
    ious = [((found & (lab == k)).sum() / (found | (lab == k)).sum()) for k in range(1, 5)]
    assert max(ious) > 0.3, ious  # one nucleus, found by name, propagated through the 3 slices


def test_cancel_stops_fine_tuning_and_keeps_the_best_checkpoint(panel, qtbot):
    _viewer, w, _lab, ckpt = panel
    w.epochs.setValue(50)
    qtbot.mouseClick(w.train_button, Qt.LeftButton)
    qtbot.waitUntil(
        lambda: w.progress.maximum() > 0 and "epoch" in w.status.text().lower() or ckpt.is_file(), timeout=600_000
    )
    qtbot.mouseClick(w.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=600_000)
    assert w.train_button.isEnabled() and not w.cancel_button.isEnabled()
    assert ckpt.is_file() and read_provenance(ckpt)["validation"]["interrupted"] is True


def test_unknown_class_is_a_notification_not_a_crash(panel, qtbot, monkeypatch):
    from napari_sam.finetune.checkpoint import base_state, save_tuned
    from napari_sam.finetune.classes import ClassHead

    _viewer, w, _lab, ckpt = panel
    messages = []
    w.text_edit.setText("liver")
    head = ClassHead(["nucleus"], torch.randn(2, 256), torch.zeros(2), torch.arange(2), "logistic")
    save_tuned(ckpt, base_state("lite_medsam")[0], {}, {"kind": "test"}, classes=head.to_state())
    monkeypatch.setattr("napari_sam.plugin.learn_widget.notify", lambda level, m: messages.append((level, m)))
    ckpt.rename(ckpt.with_suffix(".away"))
    qtbot.mouseClick(w.find_button, Qt.LeftButton)  # no checkpoint: says so
    assert not w.running and "checkpoint not found" in messages[-1][1]
    ckpt.with_suffix(".away").rename(ckpt)
    qtbot.mouseClick(w.find_button, Qt.LeftButton)
    assert not w.running and messages and "'liver' has not been taught" in messages[-1][1]
    assert "it knows: nucleus" in messages[-1][1]


def test_use_in_segment_anything_switches_its_checkpoint(panel, qtbot):
    from napari_sam.plugin.segment_widget import SegmentWidget

    viewer, w, _lab, ckpt = panel
    assert w.use_tuned() is False  # no Segment Anything widget open yet
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment Anything")
    w.use_button.setEnabled(True)
    qtbot.mouseClick(w.use_button, Qt.LeftButton)
    assert seg.checkpoint_edit.text() == str(ckpt)


def test_folder_of_pairs_is_read_by_file_name(tmp_path):
    import tifffile

    from napari_sam.errors import NapariSamError
    from napari_sam.plugin.learn_widget import folder_pairs

    img, lab = _disks(seed=1, n=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / "images" / name, img[0])
        tifffile.imwrite(tmp_path / "labels" / name, lab[0])
    pairs = folder_pairs(tmp_path)
    assert len(pairs) == 2 and pairs[0][1].shape == (1, 96, 96) and sorted(pairs[0][2]) == [1, 2, 3, 4]
    (tmp_path / "labels" / "b.tif").unlink()
    with pytest.raises(NapariSamError, match="b.tif: no label map"):
        folder_pairs(tmp_path)
