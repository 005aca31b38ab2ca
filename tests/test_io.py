"""IO: every format reads into (z, y, x) with its geometry, and label maps
are written back in exactly the source geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.errors import InputError
from napari_sam.io import Geometry, read_image, read_labels_aligned, sidecar_path, write_labels


def _geometry_of(path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def test_dicom_series_geometry_and_metadata(ct_volume):
    assert ct_volume.array.shape == (20, 512, 512)
    assert ct_volume.array.dtype == np.int16
    g = ct_volume.geometry
    assert g.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert g.origin == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert ct_volume.metadata["modality"] == "CT"
    assert ct_volume.metadata["dicom_window"] == (40.0, 300.0)
    assert ct_volume.array.min() < -900  # Hounsfield units (rescale applied)


def test_labels_on_flipped_grid_are_aligned_by_geometry(ct_volume, ct_labels, data_dir):
    """labels.nii.gz stores y flipped: index-wise comparison would be wrong."""
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct_abdomen_dicom" / "labels.nii.gz")))
    assert ct_labels.shape == ct_volume.shape
    np.testing.assert_array_equal(ct_labels, raw[:, ::-1, :])  # the flip, recovered from geometry alone
    # liver (5) lies in the patient's right = image left in LPS display (low column index)
    cols = np.nonzero(ct_labels == 5)[2]
    assert cols.mean() < 256


def test_dicom_to_nifti_round_trip_keeps_geometry_exactly(ct_volume, tmp_path):
    labels = np.zeros(ct_volume.shape, np.uint8)
    labels[5, 100:200, 100:150] = 3
    out = write_labels(tmp_path / "seg.nii.gz", labels, ct_volume.geometry, {3: "liver"})
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == ct_volume.geometry.spacing
    assert back.GetOrigin() == ct_volume.geometry.origin
    assert back.GetDirection() == ct_volume.geometry.direction
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    # an independent reader agrees: nibabel's RAS affine == LPS affine with x, y negated
    aff = nib.load(str(out)).affine
    lps = ct_volume.geometry.affine_zyx()[:, [2, 1, 0, 3]]  # columns in (x, y, z) index order
    np.testing.assert_allclose(aff, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    side = json.loads(sidecar_path(out).read_text())
    assert side["labels"]["3"]["name"] == "liver"
    assert len(side["labels"]["3"]["color"]) == 3


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_formats_round_trip(tmp_path, suffix):
    """A volume with an oblique, flipped direction and odd spacing survives read -> write."""
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 60).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((-10.5, 20.25, 3.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    src = tmp_path / f"img{suffix}"
    sitk.WriteImage(img, str(src))
    vol = read_image(src)
    np.testing.assert_array_equal(vol.array, arr)
    out = write_labels(tmp_path / "lab.nii.gz", (vol.array > 0).astype(np.uint8), vol.geometry)
    size, spacing, origin, direction = _geometry_of(out)
    _, s0, o0, d0 = _geometry_of(src)
    assert size == img.GetSize()
    np.testing.assert_allclose(spacing, s0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(origin, o0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(direction, d0, rtol=0, atol=1e-6)
    # NRRD/MHA sources are written back in their own format exactly too
    if suffix in (".nrrd", ".mha"):
        out2 = write_labels(tmp_path / f"lab2{suffix}", (vol.array > 0).astype(np.uint8), vol.geometry)
        for a, b in zip(_geometry_of(out2)[1:], _geometry_of(src)[1:]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_mr_volume_reads(data_dir):
    vol = read_image(data_dir / "mr_small" / "image.nii.gz")
    assert vol.array.shape == (20, 91, 117)
    assert vol.geometry.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert not vol.is_2d


def test_2d_tiff_and_png(data_dir, tmp_path):
    vol = read_image(data_dir / "nuclei_2d" / "image.tif")
    assert vol.array.shape == (1, 512, 512) and vol.is_2d and vol.array.dtype == np.uint16
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 200
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    v = read_image(tmp_path / "rgb.png")
    assert v.array.shape == (1, 40, 50, 3) and v.is_rgb and v.is_2d


def test_writes_are_atomic_and_refuse_overwrite(tmp_path):
    g = Geometry()
    out = write_labels(tmp_path / "a.nii.gz", np.ones((2, 3, 4), np.uint8), g)
    with pytest.raises(InputError, match="exists"):
        write_labels(out, np.zeros((2, 3, 4), np.uint8), g)
    write_labels(out, np.zeros((2, 3, 4), np.uint8), g, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).sum() == 0


def test_read_labels_aligned_resamples_by_physical_space(tmp_path):
    ref_arr = np.zeros((3, 4, 5), np.int16)
    ref = sitk.GetImageFromArray(ref_arr)
    ref.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(ref, str(tmp_path / "ref.nii.gz"))
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 0, 2] = 7  # y index 0 on a y-flipped grid ...
    img = sitk.GetImageFromArray(lab)
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    img.SetOrigin((0.0, 3.0, 0.0))
    sitk.WriteImage(img, str(tmp_path / "lab.nii.gz"))
    aligned = read_labels_aligned(tmp_path / "lab.nii.gz", read_image(tmp_path / "ref.nii.gz"))
    assert aligned[1, 3, 2] == 7 and aligned.sum() == 7  # ... is y index 3 on the reference grid
