"""The Segment Anything widget, driven as a user would, on the real CT and
microscopy images with the embedded model (headless, under Xvfb).

Boxes and clicks go through napari's own mouse handling of the Shapes and
Points layers (press / drag / release at world positions), so that the
world -> voxel mapping (scale, translate) is exercised as in use.
Embeddings are shared between the tests (same image, model and window).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

from scipy import ndimage  # noqa: E402

from napari_mouse import mouse  # noqa: E402
from napari_sam.plugin import _prompt_layers as pl  # noqa: E402
from napari_sam.plugin.segment_widget import SHORTCUTS, SegmentWidget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 600_000  # a loaded 2-core CI machine encodes a CT slice in 1-10 s


# ---------------------------------------------------------------- helpers
def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / s if s else 1.0


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rr, cc = np.nonzero(mask)
    return int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())


def deepest_point(region: np.ndarray) -> tuple[int, int]:
    dt = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


_mouse = mouse


def draw_box(viewer, session, voxel_a, voxel_b) -> None:
    """Drag a rectangle in the boxes layer between two voxels (z, r, c) or (r, c), in world space."""
    image = session.source.layer
    a, b = np.asarray(image.data_to_world(voxel_a)), np.asarray(image.data_to_world(voxel_b))
    viewer.layers.selection.active = session.boxes
    session.boxes.mode = "add_rectangle"
    _mouse(session.boxes, "mouse_press", a)
    _mouse(session.boxes, "mouse_move", (a + b) / 2, is_dragging=True)
    _mouse(session.boxes, "mouse_move", b, is_dragging=True)
    _mouse(session.boxes, "mouse_release", b)


def click(viewer, session, voxel) -> None:
    """Click once on a voxel in the points layer (add mode)."""
    image = session.source.layer
    w = np.asarray(image.data_to_world(voxel))
    viewer.layers.selection.active = session.points
    session.points.mode = "add"
    _mouse(session.points, "mouse_press", w)
    _mouse(session.points, "mouse_release", w)


def go_to_slice(viewer, image, z: int) -> None:
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])


def wait_preview(qtbot, session, count_before: int) -> np.ndarray:
    qtbot.waitUntil(
        lambda: session.previews_shown > count_before and session.preview_mask is not None, timeout=TIMEOUT_MS
    )
    return session.preview_mask


@contextmanager
def notifications():
    """Collect the napari notifications shown inside the block, each as (message, severity):
    the whole message, also where the notification shows it shortened (napari_sam.plugin._notify)."""
    from types import SimpleNamespace

    from napari.utils.notifications import notification_manager

    got: list = []

    def keep(n) -> None:
        got.append(SimpleNamespace(message=getattr(n, "details", n.message), severity=n.severity))

    notification_manager.notification_ready.connect(keep)
    try:
        yield got
    finally:
        notification_manager.notification_ready.disconnect(keep)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory) -> Path:
    """One disk store for the module's tests (what the widget does by default)."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture
def ct_widget(make_napari_viewer, ct_dicom_dir, lite_medsam, embedding_dir, monkeypatch, ct_labels):
    """The CT opened through our reader, the widget docked and started on the liver's largest slice."""
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(embedding_dir))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ct_dicom_dir), plugin="napari-sam")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    go_to_slice(viewer, image, liver_slice(ct_labels))
    assert widget.start(backend=lite_medsam)
    yield viewer, widget, widget.session
    widget.close_session()


LIVER = 5
SPLEEN = 1


def liver_slice(ct_labels) -> int:
    return int(np.argmax((ct_labels == LIVER).sum(axis=(1, 2))))


# ---------------------------------------------------------------- the CT
def test_box_commit_propagate_export_matches_core(ct_widget, qtbot, tmp_path, ct_labels, ct_volume, lite_medsam):
    """Box on a slice -> preview -> commit -> propagate -> export; the exported
    NIfTI's Dice equals what the core computes on its own from the same box
    (its own embeddings, key mask and propagation)."""
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.io import read_labels_aligned
    from napari_sam.prompts import parse_prompts
    from napari_sam.segmentation import segment_volume

    viewer, widget, s = ct_widget
    k = liver_slice(ct_labels)
    truth = ct_labels == LIVER
    assert s.pos.index == k and s.pos.axis == 0
    box = bbox(truth[k])
    r0, c0, r1, c1 = box
    n = s.previews_shown
    draw_box(viewer, s, (k, r0, c0), (k, r1, c1))
    assert len(s.boxes.data) == 1
    prompt = s.current_prompt()
    assert prompt.box == (r0, c0, r1, c1)  # world -> voxel mapping is exact
    preview = wait_preview(qtbot, s, n)
    assert dice(preview, truth[k]) > 0.9
    assert np.array_equal(s.preview.data[k] > 0, preview)  # shown in the preview layer

    assert widget.commit()
    obj = s.objects.current
    widget.rename_object("liver")
    assert obj.name == "liver" and widget.object_list.item(0).text() == "liver"
    committed = np.asarray(s.labels.data[k]) == obj.id
    assert np.array_equal(committed, preview)
    assert len(s.boxes.data) == 0 and s.preview.data[k].max() == 0  # prompts cleared after commit
    assert obj.state.key_slices == [k] and obj.state.prompts[k].box == prompt.box  # the prompt is kept

    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS) as fin:
        assert widget.propagate()
    assert fin.args == [False]
    gui = np.asarray(s.labels.data) == obj.id
    assert gui[k].sum() == committed.sum() and np.array_equal(gui[k], committed)  # key slice kept
    assert (gui.sum(axis=(1, 2)) > 0).sum() >= 10

    out = tmp_path / "liver.nii.gz"
    assert widget.export(out) == [str(out), str(tmp_path / "liver.json")]
    side = json.loads((tmp_path / "liver.json").read_text())
    assert side["labels"]["1"]["name"] == "liver"
    exported = read_labels_aligned(out, ct_volume) == obj.id
    np.testing.assert_array_equal(exported, gui)
    dice_gui = dice(exported, truth)

    # the core on its own: the same box and window, embeddings computed afresh (stored as the widget stores them)
    window = s.store().window
    pf = parse_prompts(
        {
            "window": [window.lo, window.hi],
            "objects": [{"id": 1, "name": "liver", "propagate": True, "prompts": [{"slice": k, "box": list(box)}]}],
        }
    )
    fresh = tmp_path / "core-embeddings"
    core = segment_volume(
        ct_volume,
        pf,
        lite_medsam,
        embeddings_for=lambda w, a: SliceEmbeddings(lite_medsam, ct_volume.array, w, a, cache_dir=fresh),
    )
    assert core.states[1].key_slices == [k] and any(fresh.iterdir())
    dice_core = dice(core.labels == 1, truth)
    print(
        f"\nliver Dice from one box on slice {k}: widget export {dice_gui:.4f}, core on its own {dice_core:.4f} "
        f"({int(((core.labels == 1) != exported).sum())} voxels differ)"
    )
    np.testing.assert_array_equal(core.labels == 1, exported)
    assert dice_gui > 0.85

    # a correction on the worst slice: only its affected range is redone, the rest is kept bit for bit
    per_slice = [dice(gui[i], truth[i]) if truth[i].any() or gui[i].any() else 1.0 for i in range(len(gui))]
    j = int(np.argmin(per_slice))
    if j == k or not truth[j].any():
        pytest.skip("no slice worth correcting")
    go_to_slice(viewer, s.source.layer, j)
    qtbot.waitUntil(lambda: s.pos.index == j, timeout=5000)
    r0, c0, r1, c1 = bbox(truth[j])
    n = s.previews_shown
    draw_box(viewer, s, (j, r0, c0), (j, r1, c1))
    fixed = wait_preview(qtbot, s, n)
    assert widget.commit()
    affected = s.objects.current.state.affected_range(j)
    before = gui.copy()
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
        assert widget.propagate()
    after = np.asarray(s.labels.data) == obj.id
    np.testing.assert_array_equal(after[j], fixed)
    outside = [i for i in range(len(after)) if not affected[0] <= i <= affected[1]]
    for i in outside:
        np.testing.assert_array_equal(after[i], before[i])
    assert dice(after, truth) >= dice_gui - 0.005

    # undo the propagation, then the correction: labels and key slices step back together
    widget.undo()
    assert s.objects.current.state.key_slices == sorted({k, j})
    widget.undo()
    assert s.objects.current.state.key_slices == [k]
    np.testing.assert_array_equal(np.asarray(s.labels.data) == obj.id, before)


def test_widget_and_cli_give_the_same_label_map(ct_widget, qtbot, tmp_path, ct_volume, ct_dicom_dir, embedding_dir):
    """The quick start's liver box and aorta click on slice 10, given with the mouse
    in the widget, committed and propagated with its keys; ``napari-sam segment`` on
    a prompts file of the same prompts gives the same label map, voxel for voxel
    (with ``--zoom``, as the widget zooms small objects by default)."""
    from napari_sam.cli import main
    from napari_sam.io import read_labels_aligned

    viewer, widget, s = ct_widget
    go_to_slice(viewer, s.source.layer, 10)
    qtbot.waitUntil(lambda: s.pos.index == 10, timeout=5000)
    for name, give in (
        ("liver", lambda: draw_box(viewer, s, (10, 196, 107), (10, 374, 269))),
        ("aorta", lambda: click(viewer, s, (10, 298, 263))),
    ):
        widget.add_object(name)
        n = s.previews_shown
        give()
        wait_preview(qtbot, s, n)
        _bound(viewer, SHORTCUTS["commit"][0])(viewer)
        assert s.objects.current.key_slices == [10]
        with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS):
            _bound(viewer, SHORTCUTS["propagate"][0])(viewer)
    gui = np.array(s.labels.data)
    assert set(np.unique(gui)) == {0, 1, 2}
    window = s.store().window
    prompts = {
        "window": [window.lo, window.hi],
        "objects": [
            {"id": o.id, "name": o.name, "propagate": True, "prompts": [o.state.prompts[10].to_json()]}
            for o in s.objects
        ],
    }
    assert prompts["objects"][0]["prompts"] == [{"slice": 10, "box": [196.0, 107.0, 374.0, 269.0]}]
    assert prompts["objects"][1]["prompts"] == [{"slice": 10, "points": [[298.0, 263.0]], "labels": [1]}]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "cli.nii.gz"
    argv = [
        "segment",
        str(ct_dicom_dir),
        "--prompts",
        str(tmp_path / "prompts.json"),
        "--output",
        str(out),
        "--cache-dir",
        str(embedding_dir),
        "--quiet",
    ] + (["--zoom"] if widget.zoom_check.isChecked() else [])
    assert main(argv) == 0
    cli = read_labels_aligned(out, ct_volume)
    print(
        f"\nwidget vs CLI: {int((cli != gui).sum())} voxels differ of {gui.size}; objects' voxels "
        f"{[int((gui == i).sum()) for i in (1, 2)]}"
    )
    np.testing.assert_array_equal(cli, gui)


def test_cancel_mid_propagation_keeps_finished_slices(ct_widget, qtbot, ct_labels):
    viewer, widget, s = ct_widget
    truth = ct_labels == SPLEEN
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    go_to_slice(viewer, s.source.layer, k)
    qtbot.waitUntil(lambda: s.pos.index == k, timeout=5000)
    obj = widget.add_object("spleen")
    r0, c0, r1, c1 = bbox(truth[k])
    n = s.previews_shown
    draw_box(viewer, s, (k, r0, c0), (k, r1, c1))
    wait_preview(qtbot, s, n)
    assert widget.commit()
    seen: list[int] = []

    def on_progress(index: int, done: int, total: int) -> None:
        seen.append(index)
        if len(seen) == 3:
            widget.cancel_propagation()

    s.propagation_progress.connect(on_progress)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS) as fin:
        assert widget.propagate()
        assert not widget.propagate_button.isEnabled() and widget.cancel_button.isEnabled()
    assert fin.args == [True]
    state = obj.state
    assert state.needs_run, "a cancelled run leaves the unfinished slices marked"
    finished = sorted(state.results)
    assert k in finished and len(finished) >= 3
    labels = np.asarray(s.labels.data) == obj.id
    for i in range(labels.shape[0]):  # the layer holds exactly the finished slices
        np.testing.assert_array_equal(labels[i], state.results[i] if i in state.results else False)
    kept = {i: state.results[i].copy() for i in finished}
    # running again finishes the rest; what was finished stays as it was
    s.propagation_progress.disconnect(on_progress)
    with qtbot.waitSignal(s.propagation_finished, timeout=TIMEOUT_MS) as fin:
        assert widget.propagate()
    assert fin.args == [False] and not state.needs_run
    for i, m in kept.items():
        np.testing.assert_array_equal(state.results[i], m)
    assert dice(np.asarray(s.labels.data) == obj.id, truth) > 0.8

    # painting with napari's label tools on a propagated slice makes it a correction (a key slice)
    m = max(i for i in state.results if i != k and state.results[i].any())
    go_to_slice(viewer, s.source.layer, m)
    qtbot.waitUntil(lambda: s.pos.index == m, timeout=5000)
    r, c = deepest_point(state.results[m])
    s.labels.brush_size = 9
    s.labels.paint((m, r, c), 0)  # erase a disc inside the spleen, as the eraser would
    qtbot.waitUntil(lambda: m in state.key_slices, timeout=5000)
    np.testing.assert_array_equal(state.user_masks[m], np.asarray(s.labels.data[m]) == obj.id)
    assert not state.user_masks[m][r, c]
    widget.undo()  # and undo puts the pixels and the key slices back
    obj = s.objects.get(obj.id)
    assert obj.state.key_slices == [k]
    assert np.asarray(s.labels.data[m])[r, c] == obj.id

    # only negative clicks on a slice commit "object absent here": a stop slice, pixels erased
    assert not s.negative
    widget.toggle_negative()
    click(viewer, s, (m, r, c))
    qtbot.waitUntil(lambda: s.prediction_prompt is not None and s.prediction_prompt.only_negative, timeout=5000)
    assert widget.commit()
    assert obj.state.is_stop_slice(m) and not np.any(np.asarray(s.labels.data[m]) == obj.id)
    widget.undo()
    assert s.objects.get(obj.id).state.key_slices == [k]


def test_clicks_negative_switch_and_candidate_cycling(ct_widget, qtbot, ct_labels):
    viewer, widget, s = ct_widget
    k = liver_slice(ct_labels)
    truth = ct_labels[k] == LIVER
    r, c = deepest_point(truth)
    n = s.previews_shown
    click(viewer, s, (k, r, c))
    assert len(s.points.data) == 1
    np.testing.assert_allclose(s.points.face_color[0][:3], _rgb(pl.POSITIVE_COLOR), atol=0.01)
    first = wait_preview(qtbot, s, n)
    # the widget shows exactly what the core's predictor answers to this click
    from napari_sam.predictor import SlicePredictor

    core = SlicePredictor(s.backend)
    core.set_embedding(s.store().peek(k))
    expected = core.predict(points=[(r, c)], labels=[1])
    np.testing.assert_array_equal(first, expected.masks[0])
    assert first[r, c] and dice(first, truth) > 0.5
    pred = s.prediction
    k_cand = len(pred.masks)
    shown = []
    for _ in range(k_cand + 1):
        idx = widget.next_candidate()
        shown.append(idx)
        np.testing.assert_array_equal(s.preview.data[k] > 0, pred.masks[idx])
    assert shown == [(i + 1) % k_cand for i in range(k_cand + 1)]  # cycles and wraps

    # N switches new clicks to negative (red); a negative click re-predicts
    key_func = _bound(viewer, SHORTCUTS["toggle_negative"][0])
    key_func(viewer)
    assert s.negative and widget.negative_button.isChecked() and "negative" in widget.negative_button.text()
    outside = np.argwhere(ndimage.binary_dilation(first, iterations=15) & ~ndimage.binary_dilation(first, iterations=5))
    rr, cc = outside[len(outside) // 2]
    n = s.previews_shown
    click(viewer, s, (k, rr, cc))
    np.testing.assert_allclose(s.points.face_color[1][:3], _rgb(pl.NEGATIVE_COLOR), atol=0.01)
    assert list(s.points.features["sign"]) == ["positive", "negative"]
    second = wait_preview(qtbot, s, n)
    prompt = s.prediction_prompt
    assert list(prompt.labels) == [1, 0] and not second[rr, cc]

    # clear removes this slice's prompts and the preview
    widget.clear_prompts()
    assert len(s.points.data) == 0 and s.preview.data[k].max() == 0


def test_contrast_limits_are_the_window_and_reembed_lazily(ct_widget, qtbot):
    viewer, widget, s = ct_widget
    image = s.source.layer
    old = s.store()
    assert (old.window.lo, old.window.hi) == tuple(image.contrast_limits)
    import time

    from qtpy.QtCore import QTimer

    # the viewer stays responsive while the slice is re-embedded: a 20 ms timer keeps ticking
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    image.contrast_limits = (-1000.0, 400.0)
    qtbot.waitUntil(lambda: s.store() is not old, timeout=5000)
    new = s.store()
    assert (new.window.lo, new.window.hi) == (-1000.0, 400.0)
    qtbot.waitUntil(lambda: new.peek(s.pos.index) is not None, timeout=TIMEOUT_MS)
    timer.stop()
    assert new.ready() == [s.pos.index]  # only the slice on screen, not the volume
    encode = new.encode_seconds[-1]
    gaps = np.diff(ticks)
    print(
        f"\nre-embedding took {encode:.2f} s; UI timer gaps meanwhile: median {np.median(gaps) * 1000:.0f} ms, "
        f"max {gaps.max() * 1000:.0f} ms"
    )
    assert gaps.max() < max(0.5, 0.5 * encode), "the GUI thread was blocked while encoding"


def test_shortcuts_are_bound_shown_in_tooltips_and_documented(ct_widget):
    viewer, widget, s = ct_widget
    doc = (ROOT / "docs" / "napari.md").read_text()
    tips = " ".join(b.toolTip() for b in widget.findChildren(type(widget.commit_button)))
    for key, _what in SHORTCUTS.values():
        assert _bound(viewer, key) is not None, key
        assert f"[{key}]" in tips, key
        assert f"`{key}`" in doc, key


def _bound(viewer, key: str):
    from app_model.types import KeyBinding

    want = KeyBinding.from_str(key.replace("-", "+"))
    for kb, func in viewer.keymap.items():
        if kb == want:
            return func
    return None


def _rgb(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255 for i in (0, 2, 4))


# ---------------------------------------------------------------- 2D images
def test_2d_grayscale_anisotropic_scale(make_napari_viewer, qtbot, data_dir, lite_medsam, tmp_path, monkeypatch):
    import tifffile

    from napari_sam.io import read_image

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    image = tifffile.imread(str(data_dir / "nuclei_2d" / "image.tif"))
    truth_all = tifffile.imread(str(data_dir / "nuclei_2d" / "labels.tif"))
    ids, counts = np.unique(truth_all[truth_all > 0], return_counts=True)
    truth = truth_all == ids[np.argmax(counts)]
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="nuclei", scale=(0.5, 0.25), translate=(3.0, -7.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.start(backend=lite_medsam)
    s = widget.session
    assert s.source.is_2d and s.labels.data.shape == image.shape
    np.testing.assert_allclose(s.boxes.scale, layer.scale)
    r0, c0, r1, c1 = bbox(truth)
    n = s.previews_shown
    draw_box(viewer, s, (r0, c0), (r1, c1))
    assert s.current_prompt().box == (r0, c0, r1, c1)
    preview = wait_preview(qtbot, s, n)
    assert dice(preview, truth) > 0.7
    assert widget.commit()
    with notifications() as got:
        assert not widget.propagate()
    assert any("3D" in str(n.message) for n in got)
    # Start again: same session; Stop + Start: the layers and objects are picked up, not duplicated
    n_layers = len(viewer.layers)
    assert widget.start(backend=lite_medsam) and widget.session is s
    widget.stop()
    assert widget.start(backend=lite_medsam) and widget.session is not s
    s = widget.session
    assert len(viewer.layers) == n_layers
    assert [o.id for o in s.objects] == [1] and np.array_equal(s.labels.data > 0, preview)
    paths = widget.export(tmp_path / "nuclei.nii.gz")
    back = read_image(paths[0])
    assert back.array.shape == (1,) + image.shape
    np.testing.assert_array_equal(back.array[0] > 0, preview)
    np.testing.assert_allclose(back.geometry.spacing[:2], (0.25, 0.5))  # (x, y) spacing from the layer scale
    widget.close_session()


def test_2d_rgb_sample(make_napari_viewer, qtbot, lite_medsam, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    viewer = make_napari_viewer()
    [rgb] = viewer.open_sample("napari-sam", "rgb_cells")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    # as a user does: press Start; the chosen model loads in a worker, then the session begins
    assert widget.model_combo.currentText() == "lite_medsam"
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=TIMEOUT_MS)
    s = widget.session
    assert s.source.is_rgb and s.source.volume.shape == (1, 256, 256, 3)
    dark = ndimage.binary_opening(rgb.data.mean(axis=2) < 150, iterations=2)
    lab, n_blobs = ndimage.label(dark)
    sizes = ndimage.sum(dark, lab, range(1, n_blobs + 1))
    blob = lab == 1 + int(np.argsort(sizes)[len(sizes) // 2])  # a median-sized nucleus
    r0, c0, r1, c1 = bbox(blob)
    n = s.previews_shown
    draw_box(viewer, s, (r0 - 2, c0 - 2), (r1 + 2, c1 + 2))
    preview = wait_preview(qtbot, s, n)
    assert dice(preview, blob) > 0.7
    widget.close_session()


# ---------------------------------------------------------------- bad input
def test_bad_input_gives_notifications_not_tracebacks(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    with notifications() as got:
        assert widget.start() is False
    assert widget.session is None and any("no image layer" in str(n.message) for n in got)
    assert "no image layer" in widget.status_label.text()

    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="4d")
    widget.image_combo.setCurrentText("4d")
    with notifications() as got:
        assert widget.start() is False
    assert widget.session is None
    assert any("4 spatial dimensions" in str(n.message) for n in got)

    # a checkpoint that does not exist: the loading worker's error becomes a notification
    viewer.add_image(np.zeros((32, 32), np.float32), name="small")
    widget.image_combo.setCurrentText("small")
    widget.checkpoint_edit.setText(str(Path("/nonexistent/model.pt")))
    with notifications() as got:
        assert widget.start() is True  # loading started in the background
        qtbot.waitUntil(lambda: widget._loader is None, timeout=60_000)
    assert widget.session is None
    assert any("checkpoint not found" in str(n.message) for n in got), [str(n.message) for n in got]
    widget.checkpoint_edit.setText("")

    # closing the widget unbinds its shortcuts
    widget.close_session()
    assert all(_bound(viewer, key) is None for key, _ in SHORTCUTS.values())
    widget._bind_keys()

    # actions before Start explain what to do
    with notifications() as got:
        assert widget.commit() is False
        assert widget.propagate() is False
    assert sum("press Start" in str(n.message) for n in got) == 2


class _FakeBackend:
    """A stand-in model for background-logic tests: instant 'embeddings', no decoding."""

    name = "fake"
    device = "cpu"
    image_size = 256
    supports_points = True

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def embed(self, image):
        import torch

        from napari_sam.models.base import Embedding

        self.calls.append(tuple(image.shape[:2]))
        return Embedding(torch.zeros(1, 1, 1, 1), tuple(image.shape[:2]), tuple(image.shape[:2]), self.name)


def test_embed_all_slices_in_the_background(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(
        np.random.default_rng(0).normal(size=(7, 24, 32)).astype(np.float32), name="vol", scale=(3.0, 1.0, 0.5)
    )
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.disk_cache_check.setChecked(False)
    backend = _FakeBackend()
    viewer.dims.set_point(0, 9.0)  # slice 3
    assert widget.start(backend=backend)
    s = widget.session
    assert s.pos.index == 3
    qtbot.waitUntil(lambda: s.store().peek(3) is not None, timeout=10_000)  # the slice on screen first
    assert widget.embed_all_button.isEnabled()
    assert widget.embed_all() == 6
    qtbot.waitUntil(lambda: s.store().ready() == list(range(7)), timeout=10_000)
    assert len(backend.calls) == 7 and set(backend.calls) == {(24, 32)}
    assert widget.embed_all() == 0  # nothing left to do
    widget.close_session()


def test_zoom_sharpens_small_objects_in_the_preview(
    make_napari_viewer, qtbot, data_dir, lite_medsam, tmp_path, monkeypatch
):
    """A box on a small nucleus is decoded on a magnified crop (the widget's
    "Zoom small objects", on by default): better outlines than the whole slice
    at the model's 256 px, and the crop's embedding lands in the disk cache."""
    import tifffile

    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "emb"))
    image = tifffile.imread(str(data_dir / "nuclei_2d" / "image.tif"))
    truth_all = tifffile.imread(str(data_dir / "nuclei_2d" / "labels.tif"))
    ids, counts = np.unique(truth_all[truth_all > 0], return_counts=True)
    picks = ids[np.argsort(counts)][len(ids) // 4 :: max(1, len(ids) // 6)][:5]  # small to mid-sized nuclei
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.zoom_check.isChecked()
    assert widget.start(backend=lite_medsam)
    s = widget.session
    scores: dict[bool, list[float]] = {True: [], False: []}
    for zoom in (True, False):
        widget.zoom_check.setChecked(zoom)
        for i in picks:
            truth = truth_all == i
            r0, c0, r1, c1 = bbox(truth)
            s.clear_prompts()
            n = s.previews_shown
            draw_box(viewer, s, (r0, c0), (r1, c1))
            assert s.current_prompt().box == (r0, c0, r1, c1)
            scores[zoom].append(dice(wait_preview(qtbot, s, n), truth))
            assert (s.prediction.crop is not None) == zoom
    assert np.mean(scores[True]) > np.mean(scores[False]) + 0.03, scores
    assert any((tmp_path / "emb").glob("crop-*.zarr"))
    widget.close_session()
