"""Corrections in the napari widget: a click on any slice after propagating (fake model, synthetic volume)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_sam.corrections import Correction, apply_correction  # noqa: E402
from napari_sam.plugin.segment_widget import SegmentWidget  # noqa: E402
from napari_sam.propagation import PropagationState  # noqa: E402
from test_corrections import leaky_scene  # noqa: E402
from test_propagation import BrightInBoxBackend, key_prompt  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture
def leaky_widget(make_napari_viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    vol, target, other = leaky_scene()
    viewer.add_image(vol, name="leaky", contrast_limits=(0.0, 255.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_current_step(0, 10)
    assert widget.start(backend=BrightInBoxBackend())
    yield viewer, widget, widget.session, vol, target, other
    widget.close_session()


def test_widget_correction_removes_the_leak_in_3d_and_matches_the_core(leaky_widget, qtbot):
    viewer, widget, s, vol, target, other = leaky_widget
    obj = widget.add_object("target")
    obj.state = PropagationState(shape=vol.shape)
    obj.state.add_prompt(10, key_prompt(target, 10))
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert s.propagate()
    before = np.asarray(s.labels.data) == obj.id
    assert (before & other).sum() > 500
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert s.correct((16, 32, 54), 0)
    after = np.asarray(s.labels.data) == obj.id
    assert np.array_equal(after, obj.state.volume_mask())  # the layer shows the corrected state
    assert (after & other).sum() < 0.25 * (before & other).sum()
    assert all(np.array_equal(after[i], before[i]) for i in range(12))  # slices the leak never reached
    # the same as the core's apply_correction from the same start
    core = PropagationState(shape=vol.shape)
    core.add_prompt(10, key_prompt(target, 10))
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import Window
    from napari_sam.propagation import Propagator

    prop = Propagator(BrightInBoxBackend(), SliceEmbeddings(BrightInBoxBackend(), vol, Window(0, 255)))
    apply_correction(core, prop, Correction((16, 32, 54), 0))
    assert np.array_equal(core.volume_mask(), after)
    # one undo step brings the leak back
    s.undo()
    assert np.array_equal(np.asarray(s.labels.data) == obj.id, before)
    # a correction outside the volume is refused (a notification), nothing starts
    assert not s.correct((99, 0, 0), 1)
