"""The widget on the annotation model: painting during a running propagation,
undo/redo through the model, and one loaded model shared by the widgets
(fake models and small synthetic images: seconds, not minutes)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_sam.annotation import Annotation  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.intensity import Window  # noqa: E402
from napari_sam.plugin.segment_widget import SegmentWidget  # noqa: E402
from napari_sam.propagation import Propagator  # noqa: E402
from test_annotation import SlowBackend  # noqa: E402
from test_napari_widget import draw_box, notifications, wait_preview  # noqa: E402
from test_propagation import BrightInBoxBackend, ball  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture
def ball_widget(make_napari_viewer, monkeypatch, tmp_path):
    """A bright ellipsoid (slices 5..19), the widget started on slice 12 with a slow fake box model."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    obj = ball()
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    viewer.add_image(vol, name="ball", contrast_limits=(0.0, 255.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_current_step(0, 12)
    backend = SlowBackend()
    assert widget.start(backend=backend)
    yield viewer, widget, widget.session, vol, obj, backend
    widget.close_session()


def _commit_box(qtbot, viewer, s, obj, z: int) -> None:
    rr, cc = np.nonzero(obj[z])
    n = s.previews_shown
    draw_box(viewer, s, (z, rr.min(), cc.min()), (z, rr.max(), cc.max()))
    wait_preview(qtbot, s, n)
    assert s.commit()


def test_painting_during_a_running_propagation_in_the_widget(ball_widget, qtbot):
    """napari's brush paints slice 6 while the propagation runs in its worker: the
    stroke is kept, the run does not paint over it, the layer and the model agree,
    and propagating again gives what painting after the run gives."""
    viewer, widget, s, vol, obj, backend = ball_widget
    _commit_box(qtbot, viewer, s, obj, 12)
    key = s.model.object(1).state.results[12]
    painted: list[int] = []

    def paint_once(index: int, done: int, total: int) -> None:
        if not painted and done >= 2:
            s.labels.brush_size = 5
            s.labels.selected_label = 1
            s.labels.paint((6, 32, 22), 1)  # a stroke on slice 6, which the run has not reached yet
            painted.append(done)

    s.propagation_progress.connect(paint_once)
    with notifications() as got, qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS) as fin:
        assert widget.propagate()
    assert painted and fin.args == [False]
    assert not [n for n in got if "failed" in str(n.message)]
    state = s.model.object(1).state
    qtbot.waitUntil(lambda: 6 in state.user_masks, timeout=5000)
    stroke = state.user_masks[6]
    assert stroke[32, 22] and 6 in s.model.object(1).painted
    np.testing.assert_array_equal(np.asarray(s.labels.data), s.model.labels)  # the layer shows the model
    np.testing.assert_array_equal(s.model.labels[6] == 1, stroke), "the run painted over the stroke"
    assert state.needs_run  # the stroke's neighbourhood is redone on the next run
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert widget.propagate()
    # the same without a thread: run, paint, run again
    emb = SliceEmbeddings(backend, vol, Window(0.0, 255.0))
    ref = Annotation(vol.shape)
    ref.add_object()
    ref.commit(1, 12, s.model.object(1).state.prompts[12], key)
    ref.propagate(1, Propagator(backend, emb))
    user = np.array(ref.labels)
    user[6] = np.where(stroke, 1, 0)
    ref.paint(user)
    ref.propagate(1, Propagator(backend, emb))
    np.testing.assert_array_equal(np.asarray(s.labels.data), ref.labels)


def test_undo_and_redo_in_the_widget_go_through_the_model(ball_widget, qtbot):
    viewer, widget, s, vol, obj, backend = ball_widget
    _commit_box(qtbot, viewer, s, obj, 12)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert widget.propagate()
    after = np.array(s.labels.data)
    assert (after == 1).sum() > 2 * (after[12] == 1).sum()
    widget.undo()
    assert np.array_equal(np.asarray(s.labels.data) == 1, np.isin(np.arange(24), [12])[:, None, None] & (after == 1))
    assert s.model.history.descriptions() == ["commit slice 12"]
    widget.redo()
    np.testing.assert_array_equal(np.asarray(s.labels.data), after)
    widget.undo()
    widget.undo()  # the commit made the object: it goes too
    assert len(s.objects) == 0 and not np.asarray(s.labels.data).any() and widget.object_list.count() == 0
    widget.redo()
    assert [o.name for o in s.objects] == ["object 1"] and widget.object_list.count() == 1


def test_two_widgets_share_one_loaded_model(make_napari_viewer, qtbot):
    """Segment Anything and Segment everything, each started as a user does, hold
    the same model instance: it is loaded once per process."""
    from napari_sam.plugin.auto_widget import AutoSegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    first, second = SegmentWidget(viewer), SegmentWidget(viewer)
    auto = AutoSegmentWidget(viewer)
    for w in (first, second):
        w.start_button.click()
        qtbot.waitUntil(lambda w=w: w.session is not None, timeout=120_000)
    assert second.session.backend is first.session.backend
    assert auto._get_backend() is first.session.backend
    for w in (first, second):
        w.close_session()


# ---------------------------------------------------------------- sessions (issue #20)
def _start(make_napari_viewer, vol, backend):
    viewer = make_napari_viewer()
    viewer.add_image(vol, name="ball", contrast_limits=(0.0, 255.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_current_step(0, 12)
    assert widget.start(backend=backend)
    return viewer, widget, widget.session


def _objects(s):
    return [(o.id, o.name, o.color, o.key_slices, sorted(o.painted)) for o in s.objects]


def test_save_close_open_then_correct_and_repropagate(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Commit and propagate with the mouse and keys, paint, save with Shift-W; close the
    viewer; a new viewer opens the session with the Open session button: the same
    labels and objects; then a correction on another slice is propagated."""
    from qtpy.QtCore import Qt

    from napari_sam.plugin import _session_files
    from napari_sam.plugin.segment_widget import SHORTCUTS
    from test_napari_widget import _bound

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    obj = ball()
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    viewer, widget, s = _start(make_napari_viewer, vol, BrightInBoxBackend())
    _commit_box(qtbot, viewer, s, obj, 12)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        _bound(viewer, SHORTCUTS["propagate"][0])(viewer)
    s.labels.brush_size = 3
    s.labels.paint((9, 32, 30), 0)  # an eraser stroke on slice 9
    qtbot.waitUntil(lambda: 9 in s.model.object(1).painted, timeout=5000)
    labels, objects = np.array(s.labels.data), _objects(s)
    folder = tmp_path / "ball.session"
    monkeypatch.setattr(_session_files.QFileDialog, "getSaveFileName", staticmethod(lambda *a: (str(folder), "")))
    _bound(viewer, SHORTCUTS["save_session"][0])(viewer)
    assert (folder / "session.json").is_file()
    widget.close_session()
    viewer.close()

    viewer, widget, s = _start(make_napari_viewer, vol, BrightInBoxBackend())
    assert not widget.recovery_offer.isVisibleTo(widget), "a clean close leaves no unsaved work"
    monkeypatch.setattr(_session_files.QFileDialog, "getExistingDirectory", staticmethod(lambda *a: str(folder)))
    qtbot.mouseClick(widget.open_session_button, Qt.LeftButton)
    np.testing.assert_array_equal(np.asarray(s.labels.data), labels)
    assert _objects(s) == objects and widget.object_list.count() == 1
    # continue as if napari had never closed: a box on slice 16, committed and propagated
    viewer.dims.set_current_step(0, 16)
    qtbot.waitUntil(lambda: s.pos.index == 16, timeout=5000)
    before = np.array(s.labels.data)
    _commit_box(qtbot, viewer, s, obj, 16)
    affected = s.model.object(1).state.affected_range(16)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert widget.propagate()
    after = np.asarray(s.labels.data)
    assert s.model.object(1).key_slices == [9, 12, 16]
    assert all(np.array_equal(after[i], before[i]) for i in range(24) if not affected[0] <= i <= affected[1])
    widget.close_session()


def test_unsaved_work_is_offered_after_a_crash(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The journal's recovery copy, as a crash leaves it, is offered when the same image is
    started again; Restore brings back the objects and labels up to the last finished action."""
    import shutil

    from qtpy.QtCore import Qt

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    obj = ball()
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    viewer, widget, s = _start(make_napari_viewer, vol, BrightInBoxBackend())
    _commit_box(qtbot, viewer, s, obj, 12)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert widget.propagate()
    widget.rename_object("ball")
    assert s.files.journal.flush()
    labels, objects = np.array(s.labels.data), _objects(s)
    copy = tmp_path / "as-a-crash-leaves-it"
    shutil.copytree(s.files.journal.folder, copy)
    journal_folder = s.files.journal.folder
    widget.close_session()  # (a crash would not get here: put the copy back as it was left)
    viewer.close()
    shutil.copytree(copy, journal_folder)

    viewer, widget, s = _start(make_napari_viewer, vol, BrightInBoxBackend())
    assert widget.recovery_offer.isVisibleTo(widget) and len(s.objects) == 0
    qtbot.mouseClick(widget.recovery_offer.restore_button, Qt.LeftButton)
    assert not widget.recovery_offer.isVisibleTo(widget)
    np.testing.assert_array_equal(np.asarray(s.labels.data), labels)
    assert _objects(s) == objects and [widget.object_list.item(0).text()] == ["ball"]
    widget.undo()  # and the session goes on: its own undo history starts here
    np.testing.assert_array_equal(np.asarray(s.labels.data), labels)
    widget.close_session()
