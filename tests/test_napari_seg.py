"""napari: DICOM SEG and .seg.nrrd open as named Labels layers on their image,
save through the plugin's writer, and load into the widget as objects."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_sam.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from napari_sam.slicer_seg import read_slicer_seg, write_slicer_seg  # noqa: E402

NAMES = {1: "liver", 2: "spleen"}


def _init(ct_labels, ct_label_names) -> np.ndarray:
    lab = np.zeros(ct_labels.shape, np.uint16)
    lab[8:14][ct_labels[8:14] == ct_label_names["liver"]] = 1
    lab[12][ct_labels[12] == ct_label_names["spleen"]] = 2
    return lab


@pytest.fixture(scope="module")
def files(tmp_path_factory, ct_volume, ct_labels, ct_label_names):
    d = tmp_path_factory.mktemp("napari_seg")
    lab = _init(ct_labels, ct_label_names)
    write_dicom_seg(d / "seg.dcm", lab, ct_volume, NAMES, model="test")
    write_slicer_seg(d / "seg.seg.nrrd", lab, ct_volume.geometry, NAMES, {1: (250, 0, 0)})
    return d, lab


@pytest.mark.parametrize("name", ["seg.dcm", "seg.seg.nrrd"])
def test_reader_opens_segmentations_on_their_image(make_napari_viewer, files, name, ct_dicom_dir):
    from napari.layers import Labels

    d, lab = files
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ct_dicom_dir), plugin="napari-sam")
    [layer] = viewer.open(str(d / name), plugin="napari-sam")
    assert isinstance(layer, Labels)
    objects = layer.metadata["napari_sam"]["objects"]
    assert {k: v["name"] for k, v in objects.items()} == {"1": "liver", "2": "spleen"}
    # every labelled voxel lands, in world space, on the same label of the image's grid
    idx = np.argwhere(np.asarray(layer.data) > 0)[::997]
    for v in idx:
        world = layer.data_to_world(v)
        iz, iy, ix = np.round(image.world_to_data(world)).astype(int)
        assert lab[iz, iy, ix] == layer.data[tuple(v)]


def test_writer_saves_slicer_and_dicom_seg(make_napari_viewer, tmp_path, files, ct_dicom_dir, ct_volume):
    import napari
    from napari.layers import Labels

    _, lab = files
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ct_dicom_dir), plugin="napari-sam")
    meta = {
        "napari_sam": {
            "geometry": image.metadata["napari_sam"]["geometry"],
            "source": str(ct_dicom_dir),
            "objects": {"1": {"name": "liver", "color": [250, 0, 0]}, "2": {"name": "spleen"}},
        }
    }
    layer = viewer.add_layer(Labels(lab, name="seg", scale=image.scale, translate=image.translate, metadata=meta))
    napari.save_layers(str(tmp_path / "a.seg.nrrd"), [layer], plugin="napari-sam")
    back = read_slicer_seg(tmp_path / "a.seg.nrrd")
    assert np.array_equal(back.labels, lab) and back.names == NAMES and back.colors[1] == (250, 0, 0)
    napari.save_layers(str(tmp_path / "a.dcm"), [layer], plugin="napari-sam")
    seg = read_dicom_seg(tmp_path / "a.dcm", ct_volume)
    assert np.array_equal(seg.labels, lab) and seg.names == NAMES


def test_widget_loads_labels_as_objects_and_exports_dicom_seg(
    make_napari_viewer, qtbot, files, ct_dicom_dir, ct_volume, lite_medsam, tmp_path, monkeypatch
):
    from napari_sam.plugin.segment_widget import SegmentWidget

    d, lab = files
    monkeypatch.setenv("NAPARI_SAM_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    viewer.open(str(ct_dicom_dir), plugin="napari-sam")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    assert widget.start(backend=lite_medsam)
    try:
        s = widget.session
        ids = widget.load_labels(d / "seg.seg.nrrd")
        assert ids == [1, 2]
        assert {o.id: o.name for o in s.objects} == NAMES
        assert np.array_equal(np.asarray(s.labels.data), lab)
        assert s.objects.get(1).state.key_slices == list(range(8, 14))  # its slices are key slices
        # loading again: the ids are taken, so the labels come in as new objects 3 and 4
        assert widget.load_labels(d / "seg.dcm") == [3, 4]
        s.undo()
        assert np.array_equal(np.asarray(s.labels.data), lab)
        [out] = widget.export(tmp_path / "w.dcm")
        seg = read_dicom_seg(out, ct_volume)
        assert np.array_equal(seg.labels, lab) and seg.names[1] == "liver"
    finally:
        widget.close_session()
