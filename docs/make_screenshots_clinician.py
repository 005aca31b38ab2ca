"""Screenshots of issue #14's widget changes on the shared CT (docs/napari.md).

    xvfb-run -a python docs/make_screenshots_clinician.py

Writes docs/napari_widget_rest.png (the widget docked, before Start),
docs/napari_candidates.png (a click on the spleen: the candidates with
outlines and scores), docs/napari_propagating.png (propagation in progress,
following the front) and docs/napari_export.png (the export dialog's default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch  # noqa: F401  # before napari: see tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from make_screenshots import pump, settle  # noqa: E402

from common import deepest_point, load_ct, shared_data_dir  # noqa: E402

OUT = ROOT / "docs"


def main() -> None:
    import napari
    import napari._qt.qt_main_window as qt_main_window
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
    from qtpy.QtWidgets import QFileDialog

    qt_main_window.SHOW_QT_WARNING = False
    from napari_sam.models.registry import load_model
    from napari_sam.plugin._settings import default_export_path
    from napari_sam.plugin.segment_widget import SegmentWidget

    vol, labels, names = load_ct()
    ids = {v: k for k, v in names.items()}
    spleen = labels == ids["spleen"]
    k = int(np.argmax(spleen.sum(axis=(1, 2))))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    [image] = viewer.open(str(shared_data_dir() / "ct_abdomen_dicom" / "dicom"), plugin="napari-sam")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
    settle(1.0)

    def shoot(name: str) -> None:
        viewer.screenshot(path=str(OUT / name), canvas_only=False, flash=False)
        print("wrote", OUT / name)

    shoot("napari_widget_rest.png")
    widget.start(backend=load_model("lite_medsam"))
    s = widget.session
    pump(lambda: s.store().peek(k) is not None)
    r, c = deepest_point(spleen[k])
    w = image.data_to_world((k, r, c))
    viewer.layers.selection.active = s.points
    s.points.mode = "add"
    ev = dict(button=1, dims_displayed=[1, 2], view_direction=[1.0, 0, 0])
    n = s.previews_shown
    mouse_press_callbacks(s.points, read_only_mouse_event(type="mouse_press", position=tuple(w), **ev))
    mouse_release_callbacks(s.points, read_only_mouse_event(type="mouse_release", position=tuple(w), **ev))
    pump(lambda: s.previews_shown > n)
    settle(0.8)
    shoot("napari_candidates.png")
    widget.commit()
    widget.rename_object("spleen")
    widget.progress_panel.follow_check.setChecked(True)
    done = []
    s.propagation_progress.connect(lambda i, d, t: done.append(d))
    widget.propagate()
    pump(lambda: len(done) >= 4 or not s.propagating)
    shoot("napari_propagating.png")
    pump(lambda: not s.propagating)
    settle(0.5)
    dlg = QFileDialog(
        widget,
        "Save labels",
        str(default_export_path(image.name).parent),
        "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)",
    )
    dlg.setOption(QFileDialog.DontUseNativeDialog, True)
    dlg.setAcceptMode(QFileDialog.AcceptSave)
    dlg.selectFile(default_export_path(image.name).name)
    dlg.resize(760, 420)
    dlg.show()
    settle(0.8)
    dlg.grab().save(str(OUT / "napari_export.png"))
    print("wrote", OUT / "napari_export.png")
    dlg.close()
    widget.close_session()
    viewer.close()


if __name__ == "__main__":
    main()
