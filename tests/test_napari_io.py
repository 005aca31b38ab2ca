"""The plugin's reader, writer and sample data (npe2 contributions), through
napari's own entry points (viewer.open / napari.save_layers / open_sample)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

import SimpleITK as sitk  # noqa: E402

from napari_sam.io import Geometry, read_image  # noqa: E402
from napari_sam.plugin._geometry import geometry_from_transform, layer_transform  # noqa: E402
from napari_sam.plugin._reader import get_reader  # noqa: E402
from napari_sam.plugin._writer import write_labels_layer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _same_geometry(a: Geometry, b: Geometry) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_manifest_ships_inside_the_package_and_validates():
    from npe2 import PluginManifest

    shipped = ROOT / "src" / "napari_sam" / "napari.yaml"
    root = ROOT / "napari.yaml"
    assert shipped.read_text() == root.read_text(), "root napari.yaml must match the packaged manifest"
    mf = PluginManifest.from_file(shipped)
    assert mf.name == "napari-sam"
    for cmd in mf.contributions.commands:  # every python_name imports
        module, attr = cmd.python_name.split(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_reader_dicom_folder_gives_geometry_scale_and_ct_window(ct_dicom_dir, ct_volume):
    reader = get_reader(str(ct_dicom_dir))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(ct_dicom_dir))
    assert kind == "image" and data.shape == (20, 512, 512)
    np.testing.assert_allclose(kwargs["scale"], (2.0, 0.9765625, 0.9765625))
    np.testing.assert_allclose(kwargs["translate"], ct_volume.geometry.origin[::-1])
    _same_geometry(Geometry.from_json(kwargs["metadata"]["napari_sam"]["geometry"]), ct_volume.geometry)
    assert kwargs["metadata"]["napari_sam"]["modality"] == "CT"
    # the DICOM header's window 40/300
    assert kwargs["contrast_limits"] == [-110.0, 190.0]


def test_reader_claims_only_its_formats(tmp_path, data_dir):
    assert get_reader(str(tmp_path / "x.png")) is None
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None
    mr = data_dir / "mr_small" / "image.nii.gz"
    img = sitk.ReadImage(str(mr))
    for suffix in (".nrrd", ".mha", ".nii"):
        out = tmp_path / f"mr{suffix}"
        sitk.WriteImage(img, str(out))
        [(data, kwargs, _)] = get_reader(str(out))(str(out))
        assert data.shape == (20, 91, 117)
        np.testing.assert_allclose(kwargs["scale"], (3.0, 3.0, 3.0))
        lo, hi = kwargs["contrast_limits"]
        assert lo < hi and hi <= float(data.max())  # robust percentiles, not min/max of a CT window


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (1, 0, 0, 0, -1, 0, 0, 0, 1),  # y-flipped (like the CT's labels file)
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-stored
    ],
)
def test_layer_transform_round_trips_geometry(direction):
    g = Geometry((0.8, 0.7, 2.5), (-120.5, 33.0, -804.5), tuple(float(v) for v in direction))
    kw = layer_transform(g)
    _same_geometry(geometry_from_transform(kw["scale"], kw["translate"], kw.get("affine")), g)


def test_flipped_labels_overlay_the_image_in_world_space(ct_volume, data_dir):
    """The y-flipped labels file and the DICOM series land on the same world points."""
    from napari.layers import Image

    [(img_data, img_kw, _)] = get_reader(str(data_dir / "ct_abdomen_dicom" / "dicom"))(
        str(data_dir / "ct_abdomen_dicom" / "dicom")
    )
    lab_path = str(data_dir / "ct_abdomen_dicom" / "labels.nii.gz")
    [(lab_data, lab_kw, _)] = get_reader(lab_path)(lab_path)
    img, lab = Image(img_data, **img_kw), Image(lab_data, **lab_kw)
    for voxel in [(0, 0, 0), (10, 100, 400), (19, 511, 7)]:
        world = img.data_to_world(voxel)
        np.testing.assert_allclose(np.round(lab.world_to_data(world)), (voxel[0], 511 - voxel[1], voxel[2]))


def test_writer_restores_source_geometry_from_metadata(tmp_path, ct_volume, ct_dicom_dir):
    [(_, kwargs, _)] = get_reader(str(ct_dicom_dir))(str(ct_dicom_dir))
    labels = np.zeros(ct_volume.shape, np.uint16)
    labels[5:9, 100:200, 150:260] = 3
    meta = {
        "metadata": {
            "napari_sam": {
                **kwargs["metadata"]["napari_sam"],
                "objects": {"3": {"name": "liver", "color": [200, 40, 40]}},
            }
        },
        "scale": np.ones(3),
        "translate": np.zeros(3),
    }  # transform deliberately wrong: metadata wins
    paths = write_labels_layer(str(tmp_path / "seg.nii.gz"), labels, meta)
    assert paths == [str(tmp_path / "seg.nii.gz"), str(tmp_path / "seg.json")]
    back = read_image(paths[0])
    _same_geometry(back.geometry, ct_volume.geometry)
    np.testing.assert_array_equal(back.array, labels)
    side = json.loads(Path(paths[1]).read_text())
    assert side["labels"]["3"] == {"name": "liver", "color": [200, 40, 40]}


def test_writer_without_metadata_uses_scale_translate_affine(tmp_path):
    g = Geometry((0.5, 0.6, 3.0), (10.0, -20.0, 30.0), (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    kw = layer_transform(g)
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1, 2, 3] = 1
    out, _ = write_labels_layer(str(tmp_path / "x.nii"), labels, {"metadata": {}, **kw})
    _same_geometry(read_image(out).geometry, g)


def test_writer_rejects_bad_layers_with_a_message(tmp_path):
    from napari_sam.errors import InputError

    with pytest.raises(InputError, match="4 dimensions"):
        write_labels_layer(str(tmp_path / "x.nii.gz"), np.zeros((2, 2, 2, 2), np.uint8), {})
    with pytest.raises(InputError, match=r"\.nii"):
        write_labels_layer(str(tmp_path / "x.png"), np.zeros((2, 2), np.uint8), {})


def test_viewer_open_and_save_layers_through_napari(make_napari_viewer, tmp_path, ct_dicom_dir, ct_volume):
    """What a user's script does: viewer.open(..., plugin=...) and napari.save_layers(..., plugin=...)."""
    import napari
    from napari.layers import Labels

    viewer = make_napari_viewer()
    [image] = viewer.open(str(ct_dicom_dir), plugin="napari-sam")
    np.testing.assert_allclose(image.scale, ct_volume.geometry.scale_zyx)
    assert tuple(image.contrast_limits) == (-110.0, 190.0)
    labels = np.zeros(ct_volume.shape, np.uint8)
    labels[10, 200:260, 100:180] = 1
    layer = viewer.add_layer(
        Labels(
            labels,
            name="seg",
            scale=image.scale,
            translate=image.translate,
            metadata={
                "napari_sam": {
                    "geometry": image.metadata["napari_sam"]["geometry"],
                    "objects": {"1": {"name": "kidney"}},
                }
            },
        )
    )
    out = tmp_path / "seg.nii.gz"
    written = napari.save_layers(str(out), [layer], plugin="napari-sam")
    assert str(out) in written
    back = read_image(out)
    _same_geometry(back.geometry, ct_volume.geometry)
    np.testing.assert_array_equal(back.array, labels)
    assert json.loads((tmp_path / "seg.json").read_text())["labels"]["1"]["name"] == "kidney"
    # our exported labels reopen as a Labels layer with their names
    [reopened] = viewer.open(str(out), plugin="napari-sam")
    assert isinstance(reopened, Labels)
    assert reopened.metadata["napari_sam"]["objects"]["1"]["name"] == "kidney"
    np.testing.assert_array_equal(reopened.data, labels)


def test_sample_data_needs_no_download(make_napari_viewer):
    from napari_sam.plugin._sample_data import PHANTOM_STRUCTURES, ct_phantom_arrays

    viewer = make_napari_viewer()
    [ct] = viewer.open_sample("napari-sam", "ct_phantom")
    assert ct.data.ndim == 3 and ct.data.dtype == np.int16
    np.testing.assert_allclose(ct.scale, (3.0, 1.2, 1.2))
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)  # soft-tissue window for CT
    hu, truth = ct_phantom_arrays()
    liver = truth == PHANTOM_STRUCTURES["liver"]
    assert 40 < np.median(hu[liver]) < 90 and np.median(hu[truth == 0]) < 0
    # the liver's cross-section changes through the slices (something to propagate)
    areas = liver.sum(axis=(1, 2))
    assert areas.max() > 2 * areas[areas > 0].min()
    [rgb] = viewer.open_sample("napari-sam", "rgb_cells")
    assert rgb.rgb and rgb.data.shape[-1] == 3 and rgb.data.dtype == np.uint8
