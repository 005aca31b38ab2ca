"""The widget's *Export prompts...* button (issue #20): a session made with the mouse and
keyboard (a box, propagation, a click refining a slice, an eraser stroke, a 3D
correction) is written as a prompts file whose replay gives the labels the widget shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_sam.io import Volume  # noqa: E402
from napari_sam.prompts import load_prompts  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402
from test_napari_annotation import TIMEOUT_MS, _start  # noqa: E402
from test_napari_widget import click, draw_box, wait_preview  # noqa: E402
from test_propagation import BrightInBoxBackend, ball  # noqa: E402


def test_export_prompts_button_replays_to_the_widget_labels(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from qtpy.QtCore import Qt

    from napari_sam.plugin import _session_files

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    obj = ball()
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    backend = BrightInBoxBackend()
    viewer, widget, s = _start(make_napari_viewer, vol, backend)
    rr, cc = np.nonzero(obj[12])
    n = s.previews_shown
    draw_box(viewer, s, (12, rr.min(), cc.min()), (12, rr.max(), cc.max()))
    wait_preview(qtbot, s, n)
    qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)  # commit
    qtbot.waitUntil(lambda: s.model.object(1).key_slices == [12], timeout=5000)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        qtbot.keyClick(widget.add_button, Qt.Key_S, Qt.ShiftModifier)  # propagate
    viewer.dims.set_current_step(0, 9)
    qtbot.waitUntil(lambda: s.pos.index == 9, timeout=5000)
    n = s.previews_shown
    click(viewer, s, (9, 32, 30))  # a click on the object's pixels: the preview refines them
    wait_preview(qtbot, s, n)
    qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: 9 in s.model.object(1).key_slices, timeout=5000)
    s.labels.brush_size = 4
    s.labels.paint((15, 32, 30), 0)  # an eraser stroke on slice 15
    qtbot.waitUntil(lambda: 15 in s.model.object(1).painted, timeout=5000)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert s.correct((17, 32, 30), 0)
    shown = np.array(s.labels.data)
    assert shown.any()
    target = tmp_path / "ball.prompts.json"
    monkeypatch.setattr(_session_files.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    qtbot.mouseClick(widget.export_prompts_button, Qt.LeftButton)
    doc = json.loads(target.read_text())
    steps = [next(iter(st)) for st in doc["objects"][0]["steps"]]
    assert steps == ["commit", "propagate", "commit", "paint", "correction"]
    assert doc["window"] == [0.0, 255.0]
    replayed = segment_volume(Volume(vol), load_prompts(target), backend)
    np.testing.assert_array_equal(replayed.labels, shown)
    widget.close_session()


def test_a_window_changed_in_the_widget_replays_as_it_was(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A box on the bright core under contrast limits 0..255, then the user narrows them
    to 0..150 and segments a dim ball as a new object: the export gives each object its
    window and the replay the labels the widget shows."""
    from qtpy.QtCore import Qt

    from napari_sam.plugin import _session_files
    from test_session_windows import scene

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    vol, core, _shell, dim = scene()
    backend = BrightInBoxBackend()
    viewer, widget, s = _start(make_napari_viewer, vol, backend)

    def box_commit_propagate(obj):
        rr, cc = np.nonzero(obj[12])
        n = s.previews_shown
        draw_box(viewer, s, (12, rr.min(), cc.min()), (12, rr.max(), cc.max()))
        wait_preview(qtbot, s, n)
        qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)  # commit
        qtbot.waitUntil(lambda: s.model.current is not None and s.model.current.key_slices == [12], timeout=5000)
        with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
            qtbot.keyClick(widget.add_button, Qt.Key_S, Qt.ShiftModifier)  # propagate

    box_commit_propagate(core)
    viewer.layers["ball"].contrast_limits = (0.0, 150.0)  # the user changes the window
    qtbot.waitUntil(lambda: s.source.window().hi == 150.0 and s.store().window.hi == 150.0, timeout=5000)
    qtbot.mouseClick(widget.add_button, Qt.LeftButton)  # a new object
    qtbot.waitUntil(lambda: len(s.model) == 2, timeout=5000)
    box_commit_propagate(dim)
    shown = np.array(s.labels.data)
    assert set(np.unique(shown)) == {0, 1, 2}
    target = tmp_path / "two.prompts.json"
    monkeypatch.setattr(_session_files.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    qtbot.mouseClick(widget.export_prompts_button, Qt.LeftButton)
    doc = json.loads(target.read_text())
    assert [o["window"] for o in doc["objects"]] == [[0.0, 255.0], [0.0, 150.0]] and doc["window"] == [0.0, 150.0]
    replayed = segment_volume(Volume(vol), load_prompts(target), backend)
    np.testing.assert_array_equal(replayed.labels, shown)
    widget.close_session()
