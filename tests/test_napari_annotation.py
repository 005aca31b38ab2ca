"""The widget on the annotation model: painting during a running propagation,
undo/redo through the model, and one loaded model shared by the widgets
(fake models and small synthetic images: seconds, not minutes)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from test_annotation import SlowBackend  # noqa: E402
from test_napari_widget import draw_box, notifications, wait_preview  # noqa: E402
from test_propagation import ball  # noqa: E402

from napari_sam.annotation import Annotation  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.intensity import Window  # noqa: E402
from napari_sam.plugin.segment_widget import SegmentWidget  # noqa: E402
from napari_sam.propagation import Propagator  # noqa: E402

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
    assert np.array_equal(
        np.asarray(s.labels.data) == 1, np.isin(np.arange(24), [12])[:, None, None] & (after == 1)
    )
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
