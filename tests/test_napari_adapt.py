"""*Adapt to my corrections* in the widget (issue #15): after a slice is painted and the
object propagated, the button (a real mouse click) adapts a copy of the model in the
background and propagates the object again with it: the result changes, the base
model's weights do not, the adapted model is kept for the session (and restored from a
saved session), and the exported prompts file replays the adaptation to the same labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_sam.annotation.actions import latest_weights  # noqa: E402
from napari_sam.io import Volume  # noqa: E402
from napari_sam.prompts import load_prompts  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402
from test_napari_annotation import TIMEOUT_MS  # noqa: E402
from test_session_adapted import tube  # noqa: E402


def _decoder(backend):
    return {k: v.clone() for k, v in backend.mask_decoder.state_dict().items()}


def test_adapt_button_changes_the_object_not_the_base_model(
    make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch
):
    import torch
    from qtpy.QtCore import Qt

    from napari_sam.plugin import _session_files
    from napari_sam.plugin.segment_widget import SegmentWidget

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    img, core = tube()
    viewer = make_napari_viewer()
    viewer.add_image(img, name="tube", contrast_limits=(0.0, 1.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_current_step(0, 4)
    assert widget.start(backend=lite_medsam)
    s = widget.session
    s.labels.selected_label = 1
    s.labels.brush_size = 18
    s.labels.paint((4, 48, 48), 1)  # the user paints the core on slice 4
    qtbot.waitUntil(lambda: len(s.model) == 1 and 4 in s.model.object(1).painted, timeout=5000)
    s.model.select(1)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        qtbot.keyClick(widget.add_button, Qt.Key_S, Qt.ShiftModifier)  # propagate
    before_labels = np.array(s.labels.data)
    base = _decoder(lite_medsam)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(widget.adapt_button, Qt.LeftButton)
    after = np.array(s.labels.data)
    assert np.count_nonzero(after != before_labels) > 0, "the adapted model changed the object's slices"
    assert np.array_equal(after[4], before_labels[4])  # the painted slice stays
    assert all(torch.equal(base[k], v) for k, v in lite_medsam.mask_decoder.state_dict().items())
    log = s.model.object(1).log
    assert [a["op"] for a in log] == ["paint", "propagate", "adapt"] and log[-1]["steps"] > 0
    adapted = s.backend_for(s.model.object(1))
    assert adapted is s.adapted[latest_weights(s.model.object(1)).sha256] is not lite_medsam
    # saved and opened again: the object's runs use the adapted model restored from the session folder
    assert widget.save_session(tmp_path / "tube.session") is not None
    assert (tmp_path / "tube.session" / "adapted").is_dir()
    assert s.open_session(tmp_path / "tube.session") and not s.adapted
    restored = s.backend_for(s.model.object(1))
    assert restored is not lite_medsam and restored is not adapted
    assert all(torch.equal(v, _decoder(adapted)[k]) for k, v in _decoder(restored).items())
    target = tmp_path / "tube.prompts.json"
    monkeypatch.setattr(_session_files.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    qtbot.mouseClick(widget.export_prompts_button, Qt.LeftButton)
    replayed = segment_volume(Volume(img), load_prompts(target), lite_medsam)
    np.testing.assert_array_equal(replayed.labels, after)
    widget.close_session()
