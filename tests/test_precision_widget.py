"""The widget's Precision choice reaches ``load_model`` and keys the loaded-model cache."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui]

from napari_sam.models import precision as P  # noqa: E402
from napari_sam.plugin.segment_widget import SegmentWidget  # noqa: E402


def test_precision_choice_is_passed_to_load_model(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam.models.registry as registry

    calls = []

    class _Loaded:  # load_model's result; the session start on it is not this test's concern
        name = "lite_medsam"

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: calls.append(k["precision"]) or _Loaded())
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    widget = SegmentWidget(viewer)
    monkeypatch.setattr(widget, "_begin", lambda source, backend: None)
    combo = widget.precision_combo
    assert [combo.itemText(i) for i in range(combo.count())] == list(P.PRECISIONS)
    assert combo.currentText() == P.DEFAULT_PRECISION
    combo.setCurrentText("bf16")
    assert widget.start() is True
    qtbot.waitUntil(lambda: widget._loader is None, timeout=30_000)
    combo.setCurrentText("auto")
    assert widget.start() is True
    qtbot.waitUntil(lambda: widget._loader is None, timeout=30_000)
    assert calls == ["bf16", "auto"]  # a model per precision, not the bf16 one reused
    combo.setCurrentText("bf16")
    assert widget.start() is True
    qtbot.waitUntil(lambda: widget._loader is None, timeout=30_000)
    # the widget keeps no models of its own: load_model shares the loaded instance (test_models_registry)
    assert calls == ["bf16", "auto", "bf16"]
