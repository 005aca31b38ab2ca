"""Make the screenshots of docs/napari.md: the widget docked beside the shared CT.

    xvfb-run -a python docs/make_screenshots.py

It does what a user does: opens the DICOM series through the plugin's reader,
starts the widget with the embedded model, draws a box on the liver's largest
slice (the box is taken from the reference labels, as a user would draw it
tightly), commits, propagates, then does the same for the spleen. Writes
docs/napari_ct_preview.png (box + live preview before commit),
and docs/napari_ct_liver.png (liver and spleen propagated, widget docked);
then runs "Segment everything" on the nuclei image: docs/napari_nuclei_auto.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch  # noqa: F401  # before napari: see tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from common import load_ct, shared_data_dir  # noqa: E402

OUT = ROOT / "docs"


def pump(cond, timeout=1800.0):
    """Run Qt's event loop until ``cond()`` holds (or ``timeout`` seconds)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    t0 = time.perf_counter()
    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(lambda: loop.quit() if cond() or time.perf_counter() - t0 > timeout else None)
    poll.start()
    if not cond():
        loop.exec_()
    poll.stop()


def settle(seconds=0.6):
    t0 = time.perf_counter()
    pump(lambda: time.perf_counter() - t0 > seconds)


def main() -> None:
    import napari
    import napari._qt.qt_main_window as qt_main_window

    qt_main_window.SHOW_QT_WARNING = False  # napari's PyQt5-deprecation toast would cover the canvas
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    from napari_sam.models.registry import load_model
    from napari_sam.plugin.segment_widget import SegmentWidget

    vol, labels, names = load_ct()
    ids = {v: k for k, v in names.items()}
    viewer = napari.Viewer(show=True, title="napari-sam")
    viewer.window.resize(1500, 950)
    [image] = viewer.open(str(shared_data_dir() / "ct_abdomen_dicom" / "dicom"), plugin="napari-sam")
    image.name = "CT abdomen"
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything", area="right")

    def go(z: int) -> None:
        viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
        settle(0.5)

    def draw_box(z, r0, c0, r1, c1) -> None:
        s = widget.session
        a = np.asarray(image.data_to_world((z, r0, c0)))
        b = np.asarray(image.data_to_world((z, r1, c1)))
        viewer.layers.selection.active = s.boxes
        s.boxes.mode = "add_rectangle"
        ev = dict(button=1, dims_displayed=[1, 2], view_direction=[1.0, 0.0, 0.0])
        mouse_press_callbacks(s.boxes, read_only_mouse_event(type="mouse_press", position=tuple(a), **ev))
        mouse_move_callbacks(
            s.boxes, read_only_mouse_event(type="mouse_move", position=tuple(b), is_dragging=True, **ev)
        )
        mouse_release_callbacks(s.boxes, read_only_mouse_event(type="mouse_release", position=tuple(b), **ev))

    def segment(name: str, organ_id: int, shoot: Path | None = None) -> None:
        truth = labels == organ_id
        z = int(np.argmax(truth.sum(axis=(1, 2))))
        go(z)
        s = widget.session
        if s.objects.current is None or s.objects.current.state is not None:
            widget.add_object(name)
        else:
            widget.rename_object(name)
        rr, cc = np.nonzero(truth[z])
        n = s.previews_shown
        draw_box(z, rr.min(), cc.min(), rr.max(), cc.max())
        pump(lambda: s.previews_shown > n)
        settle()
        if shoot is not None:
            viewer.screenshot(path=str(shoot), canvas_only=False, flash=False)
            print("wrote", shoot)
        widget.commit()
        done: list[bool] = []
        s.propagation_finished.connect(done.append)
        widget.propagate()
        pump(lambda: bool(done))
        s.propagation_finished.disconnect(done.append)
        settle()

    widget.start(backend=load_model("lite_medsam", device="cpu"))
    pump(lambda: widget.session is not None)
    s = widget.session
    viewer.layers.selection.active = s.boxes
    segment("liver", ids["liver"], OUT / "napari_ct_preview.png")
    segment("spleen", ids["spleen"])
    # a slice away from both key slices, the liver selected in the objects list
    widget.session.select_object(1)
    widget._refresh_objects()
    liver = labels == ids["liver"]
    go(int(np.argmin(np.where(liver.any(axis=(1, 2)), liver.sum(axis=(1, 2)), 1 << 30))) + 2)
    viewer.layers.selection.active = s.labels
    settle(1.0)
    viewer.screenshot(path=str(OUT / "napari_ct_liver.png"), canvas_only=False, flash=False)
    print("wrote", OUT / "napari_ct_liver.png")
    widget.close_session()
    viewer.close()


def nuclei_everything() -> None:
    """docs/napari_nuclei_auto.png: "Segment everything" on the nuclei image,
    opened from the Plugins menu's entry as a user does."""
    import napari
    import napari._qt.qt_main_window as qt_main_window
    import tifffile

    qt_main_window.SHOW_QT_WARNING = False  # the PyQt5-deprecation toast would cover the canvas
    raw = tifffile.imread(shared_data_dir() / "nuclei_2d" / "image.tif")
    viewer = napari.Viewer(show=True, title="napari-sam")
    viewer.window.resize(1500, 950)
    viewer.add_image(raw, name="nuclei", colormap="gray")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    widget.run()
    pump(lambda: not widget.running)
    settle(1.0)
    path = OUT / "napari_nuclei_auto.png"
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print("wrote", path)
    viewer.close()


if __name__ == "__main__":
    main()
    nuclei_everything()
