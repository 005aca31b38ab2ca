"""The friction points of issue #14, each driven through the real widget with
pytest-qt's mouse and keyboard events (headless, under Xvfb).

The images are small and generated (a bright disc and a bright square on a
dark background, 2D and a short volume) so that each test encodes a slice or
two in seconds on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

from qtpy.QtCore import QPoint, Qt  # noqa: E402

from napari_sam.plugin.segment_widget import SHORTCUTS, SegmentWidget  # noqa: E402
from test_napari_widget import TIMEOUT_MS, draw_box, wait_preview  # noqa: E402


def _disc_image(n: int = 160) -> np.ndarray:
    """(n, n) float32: a bright disc (radius n/6) left and a bright square right, on dark noise."""
    rr, cc = np.mgrid[:n, :n]
    img = np.random.default_rng(0).normal(20, 3, (n, n))
    img[(rr - n / 2) ** 2 + (cc - n / 3) ** 2 < (n / 6) ** 2] = 200
    img[n // 3 : n // 3 + n // 5, 2 * n // 3 : 2 * n // 3 + n // 5] = 160
    return img.astype(np.float32)


def _disc_truth(n: int = 160) -> np.ndarray:
    rr, cc = np.mgrid[:n, :n]
    return (rr - n / 2) ** 2 + (cc - n / 3) ** 2 < (n / 6) ** 2


@pytest.fixture
def shown(make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch):
    """A shown viewer with the 2D disc image, the widget docked and started."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_disc_image(), name="disc")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    assert widget.start(backend=lite_medsam)
    win = viewer.window._qt_window
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    yield viewer, widget, widget.session
    widget.close_session()


def _box_preview(qtbot, viewer, s):
    n = s.previews_shown
    draw_box(viewer, s, (50, 24), (110, 84))
    return wait_preview(qtbot, s, n)


# ---------------------------------------------------------------- 2: shortcuts and focus clicks
def test_shortcuts_work_with_focus_in_the_dock(shown, qtbot):
    """Shift-C and Shift-Z typed while a dock button has focus commit and undo."""
    viewer, widget, s = shown
    _box_preview(qtbot, viewer, s)
    widget.add_button.setFocus()
    qtbot.waitUntil(widget.add_button.hasFocus, timeout=2000)
    qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: np.asarray(s.labels.data).any(), timeout=5000)
    assert widget.add_button.hasFocus()  # the key went to the shortcut, focus stayed in the dock
    qtbot.keyClick(widget.object_list, Qt.Key_Z, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: not np.asarray(s.labels.data).any(), timeout=5000)
    # typing a capital in a text field stays text (no commit)
    widget.checkpoint_edit.setFocus()
    qtbot.keyClicks(widget.checkpoint_edit, "C")
    assert widget.checkpoint_edit.text() == "C"
    assert not np.asarray(s.labels.data).any()


def test_a_click_that_gives_focus_back_adds_no_prompt(shown, qtbot):
    """Pressing on the canvas while the dock has focus only focuses the canvas;
    a press on an already focused canvas adds the click; a 1.5 px box is dropped."""
    viewer, widget, s = shown
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.layers.selection.active = s.points
    s.points.mode = "add"
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    widget.add_button.setFocus()
    qtbot.waitUntil(widget.add_button.hasFocus, timeout=2000)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=centre)
    qtbot.wait(50)
    assert canvas.hasFocus()
    assert len(s.points.data) == 0, "the focus click became a prompt"
    time.sleep(0.4)
    qtbot.mouseClick(canvas, Qt.LeftButton, pos=centre)
    qtbot.waitUntil(lambda: len(s.points.data) == 1, timeout=2000)
    # a stray rectangle (a click of the rectangle tool) is not a box prompt
    s.points.data = np.zeros((0, 2))
    draw_box(viewer, s, (80, 80), (81.5, 81.5))
    qtbot.waitUntil(lambda: len(s.boxes.data) == 0, timeout=2000)
    assert s.current_prompt() is None


# ---------------------------------------------------------------- 3: propagation progress
def _disc_volume(n: int = 128, z: int = 7) -> np.ndarray:
    """(z, n, n) float32: a bright ball-like stack of discs (largest in the middle) on dark noise."""
    rr, cc = np.mgrid[:n, :n]
    vol = np.random.default_rng(1).normal(20, 3, (z, n, n))
    for k in range(z):
        rad = n / 5 * (1 - 0.5 * abs(k - z // 2) / (z // 2))
        vol[k][(rr - n / 2) ** 2 + (cc - n / 2) ** 2 < rad**2] = 200
    return vol.astype(np.float32)


def test_propagation_progress_is_visible(make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch):
    """Commit with Shift-C, press Propagate: the widget's bar counts slices with an
    ETA, the view follows the front, and napari's own progress moves with it."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(_disc_volume(), name="balls")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_point(0, 3)
    assert widget.start(backend=lite_medsam)
    s = widget.session
    panel = widget.progress_panel
    assert not panel.isVisible()
    n = s.previews_shown
    draw_box(viewer, s, (3, 36, 36), (3, 92, 92))
    wait_preview(qtbot, s, n)
    widget.commit()
    panel.follow_check.setChecked(True)
    seen: list[tuple] = []
    bars: list = []
    s.propagation_started.connect(lambda: bars.append(s._prop_pbar))

    def record(index, done, total):
        from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

        dialog = viewer.window._qt_window._activity_dialog
        ours = [b for b in dialog.findChildren(QtLabeledProgressBar) if b.progress is bars[-1]]
        gui = ours[0].qt_progress_bar if ours else None
        seen.append(
            (
                index,
                done,
                total,
                panel.bar.value(),
                panel.bar.maximum(),
                panel.label.text(),
                gui.value() if gui else None,
                gui.maximum() if gui else None,
                s.pos.index if s.pos else None,
            )
        )

    s.propagation_progress.connect(record)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(widget.propagate_button, Qt.LeftButton)
    assert panel.isVisible(), (widget.isVisible(), panel.isVisibleTo(widget))
    assert len(seen) >= 4
    for _index, done, total, value, maximum, text, pn, ptotal, _ in seen:
        assert (value, maximum) == (done, total)  # the widget's bar shows slices done / total
        if pn is not None or done < total:  # (napari may drop its finished bar before the last report)
            assert (pn, ptotal) == (done, total)  # napari's activity bar is not stuck at 0
        assert f"({done}/{total})" in text
    assert any("left" in t[5] for t in seen)  # an ETA while running
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] == seen[-1][0], timeout=5000)  # followed the front
    assert panel.bar.value() == panel.bar.maximum()
    assert "done" in panel.label.text()
    del image
    widget.close_session()


# ---------------------------------------------------------------- 1: candidates at a glance
def test_candidates_shown_with_score_and_outline(shown, qtbot):
    """A click gives several candidates: each is shown with its score and an outlined
    thumbnail; clicking a thumbnail makes it the preview."""
    from napari_sam.plugin._candidates_view import OUTLINE
    from test_napari_widget import click

    viewer, widget, s = shown
    view = widget.candidates_view
    assert not view.isVisible()
    n = s.previews_shown
    click(viewer, s, (80, 53))
    wait_preview(qtbot, s, n)
    p = s.prediction
    assert view.isVisible()
    assert view.shown == [(i + 1, pytest.approx(float(sc))) for i, sc in enumerate(p.scores)]
    for i, b in enumerate(view.buttons[: len(p.masks)]):
        assert b.isVisible() and b.text() == f"{i + 1}: {float(p.scores[i]):.2f}"
        img = b.icon().pixmap(64, 64).toImage()
        px = {img.pixelColor(x, y).getRgb()[:3] for x in range(0, 64, 2) for y in range(0, 64, 2)}
        assert any(all(abs(a - b) <= 8 for a, b in zip(c, OUTLINE)) for c in px)  # outline drawn
    assert view.buttons[0].isChecked()
    if len(p.masks) > 1:
        qtbot.mouseClick(view.buttons[1], Qt.LeftButton)
        assert s.candidate == 1 and np.array_equal(s.preview_mask, p.masks[1])
        assert view.buttons[1].isChecked() and not view.buttons[0].isChecked()
    s.clear_prompts()
    qtbot.waitUntil(lambda: not view.isVisible(), timeout=2000)


# ---------------------------------------------------------------- 6: export location and mode
def test_export_defaults_to_a_safe_named_place_and_follows_the_umask(shown, qtbot, tmp_path, monkeypatch):
    from napari_sam.plugin import _label_files

    viewer, widget, s = shown
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    s.source.layer.name = "dicom"
    _box_preview(qtbot, viewer, s)
    assert widget.commit()
    proposed: list[str] = []
    answer = {"path": None}

    def fake_dialog(_parent, _title, start, _filters):
        proposed.append(start)
        return (answer["path"] or start), ""

    monkeypatch.setattr(_label_files.QFileDialog, "getSaveFileName", staticmethod(fake_dialog))
    old = os.umask(0o027)
    try:
        qtbot.keyClick(widget.add_button, Qt.Key_E, Qt.ShiftModifier)  # Shift-E with focus in the dock
        qtbot.waitUntil(lambda: len(proposed) == 1, timeout=5000)
        first = Path(proposed[0])
        assert first == home / "Documents" / "dicom_labels.nii.gz"
        qtbot.waitUntil(first.exists, timeout=5000)
        assert stat.S_IMODE(first.stat().st_mode) == 0o640  # 0666 less the umask, not mkstemp's 0600
        assert stat.S_IMODE(first.with_name("dicom_labels.json").stat().st_mode) == 0o640
        other = tmp_path / "results"
        other.mkdir()
        answer["path"] = str(other / "mine.nii.gz")
        widget.export_dialog()
        answer["path"] = None
        widget.export_dialog()
        assert Path(proposed[-1]) == other / "dicom_labels.nii.gz"  # the last export folder
    finally:
        os.umask(old)


# ---------------------------------------------------------------- 7: fits a 1080 px screen
def test_both_widgets_fit_a_1080_px_screen(make_napari_viewer, qtbot, lite_medsam):
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((20, 64, 64), np.float32), name="vol")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment Anything")
    auto = AutoSegmentWidget(viewer, backend=lite_medsam)
    viewer.window.add_dock_widget(auto, name="Segment everything")
    win = viewer.window._qt_window
    win.resize(1600, 1000)
    qtbot.wait(200)
    assert win.minimumSizeHint().height() <= 1000
    assert win.height() <= 1080
    slider = viewer.window._qt_viewer.dims
    bottom = slider.mapTo(win, slider.rect().bottomLeft()).y()
    assert slider.isVisible() and bottom <= win.height()  # the slice slider stays on screen
    # the shortcuts are behind a help button, not a block of text
    tip = seg.help_button.toolTip()
    assert all(f"<b>{key}</b>" in tip for key, _ in SHORTCUTS.values())
    seg.close_session()


# ---------------------------------------------------------------- 8: layer controls show the real tool
def test_layer_controls_show_the_tool_in_use_after_start(shown, qtbot):
    viewer, widget, s = shown
    controls = viewer.window._qt_viewer.controls.widgets
    qtbot.wait(50)
    assert s.boxes.mode == "add_rectangle" and controls[s.boxes].rectangle_button.isChecked()
    assert not controls[s.boxes].panzoom_button.isChecked()
    assert s.points.mode == "add" and controls[s.points].addition_button.isChecked()
    assert not controls[s.points].panzoom_button.isChecked()


# ---------------------------------------------------------------- 9: the smaller points
def test_name_field_completes_and_remembers_typed_names(shown, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    viewer, widget, s = shown
    _box_preview(qtbot, viewer, s)
    assert widget.commit()
    edit = widget.name_edit
    edit.setFocus()
    qtbot.keyClicks(edit, "sple")
    comp = edit.completer()
    comp.setCompletionPrefix("sple")
    found = [comp.completionModel().index(i, 0).data() for i in range(comp.completionModel().rowCount())]
    assert "spleen" in found
    edit.clear()
    qtbot.keyClicks(edit, "my lesion A")  # capitals in the field stay text, not shortcuts
    qtbot.keyClick(edit, Qt.Key_Return)
    assert s.objects.current.name == "my lesion A" and widget.object_list.item(0).text() == "my lesion A"
    # a new widget offers the typed name
    other = SegmentWidget(viewer)
    assert "my lesion A" in other._completer_model.stringList()
    other.close_session()


def test_undo_of_the_only_commit_leaves_no_empty_object(shown, qtbot):
    viewer, widget, s = shown
    _box_preview(qtbot, viewer, s)
    qtbot.keyClick(widget.add_button, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: len(s.objects) == 1 and np.asarray(s.labels.data).any(), timeout=5000)
    qtbot.keyClick(widget.add_button, Qt.Key_Z, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: not np.asarray(s.labels.data).any(), timeout=5000)
    assert len(s.objects) == 0 and widget.object_list.count() == 0
    # a named object stays (the user made it on purpose)
    widget.add_object("liver")
    _box_preview(qtbot, viewer, s)
    widget.commit()
    widget.undo()
    assert [o.name for o in s.objects] == ["liver"]


def test_status_contrast_hover_names_and_idle_look(make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch):
    """2D: no "slice 0"; the contrast slider's range is the data's, not the window;
    hovering a label shows its name; "Clicks: positive" is not coloured before Start;
    Segment everything starts on the selected image."""
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    viewer = make_napari_viewer(show=True)
    ct = viewer.add_image(
        np.linspace(-1000, 1500, 160 * 160, dtype=np.float32).reshape(160, 160), name="ct", contrast_limits=(-110, 190)
    )
    disc = viewer.add_image(_disc_image(), name="disc")
    viewer.layers.selection.active = disc
    auto = AutoSegmentWidget(viewer, backend=lite_medsam)
    assert auto.image_combo.currentText() == "disc"
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image_combo.currentText() == "disc"
    assert not widget.negative_button.isEnabled() and widget.negative_button.styleSheet() == ""
    widget.image_combo.setCurrentText("ct")
    assert tuple(ct.contrast_limits_range) == (-110, 190)  # napari locks it to the window
    assert widget.start(backend=lite_medsam)
    s = widget.session
    assert tuple(ct.contrast_limits_range) == (-1000, 1500) and tuple(ct.contrast_limits) == (-110, 190)
    assert widget.negative_button.styleSheet() != ""
    statuses: list[str] = []
    s.status.connect(statuses.append)
    n = s.previews_shown
    draw_box(viewer, s, (50, 24), (110, 84))
    wait_preview(qtbot, s, n)
    widget.commit()
    widget.rename_object("vessel")
    assert statuses and not any("slice 0" in t for t in statuses), statuses
    # hover over the label: napari's status shows the object's name
    status = s.labels.get_status((80, 50), view_direction=None, dims_displayed=[0, 1], world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "vessel" in text, text
    widget.close_session()


# ---------------------------------------------------------------- 4: napari-sam as the reader
def test_reader_offer_makes_napari_sam_the_reader_for_nifti(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The widget offers once to set napari's reader preference; after "Yes" a .nii.gz opens
    with napari-sam (geometry in the layer) with no plugin named and no chooser."""
    import SimpleITK as sitk
    from napari.settings import get_settings

    from napari_sam.plugin._reader_preference import PATTERNS

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    plugins = get_settings().plugins
    saved = dict(plugins.extension2reader)
    plugins.extension2reader = {k: v for k, v in saved.items() if k not in PATTERNS}
    try:
        img = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (4, 16, 16)).astype(np.float32))
        img.SetSpacing((0.5, 0.5, 2.0))
        path = tmp_path / "scan.nii.gz"
        sitk.WriteImage(img, str(path))
        viewer = make_napari_viewer(show=True)
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget)
        offer = widget.reader_offer
        assert offer.isVisibleTo(widget), offer.should_offer()
        qtbot.mouseClick(offer.yes_button, Qt.LeftButton)
        assert not offer.isVisibleTo(widget)
        assert all(plugins.extension2reader.get(p) == "napari-sam" for p in PATTERNS)
        viewer.window._qt_viewer._qt_open([str(path)], stack=False)  # what File > Open does
        [layer] = [lay for lay in viewer.layers if lay.name == "scan"]
        assert "napari_sam" in layer.metadata and tuple(layer.scale) == (2.0, 0.5, 0.5)
        assert not SegmentWidget(viewer).reader_offer.isVisibleTo(widget)  # offered once only
        widget.close_session()
    finally:
        plugins.extension2reader = saved
