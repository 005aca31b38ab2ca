"""Lazily read volumes (zarr, OME-Zarr, TIFF), their content hash and sample, and
painting a label map into zarr one bounding box at a time. No model: fast."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from napari_sam.cache import content_hash as memory_hash
from napari_sam.errors import InputError, OutputError
from napari_sam.io import Geometry
from napari_sam.large_segment import LazySegmentation, write_zarr_labels
from napari_sam.lazy_volume import content_hash, open_volume, sample_of
from napari_sam.overlaps import ObjectMasks, resolve_overlaps


def _ome(path, arr, scale, unit="micrometer", translation=None, version="0.5"):
    g = zarr.open_group(str(path), mode="w")
    g.create_array("0", shape=arr.shape, chunks=(1,) * (arr.ndim - 2) + arr.shape[-2:], dtype=arr.dtype)[:] = arr
    names = "tczyx"[-arr.ndim :]
    ts = [{"type": "scale", "scale": list(scale)}]
    if translation is not None:
        ts.append({"type": "translation", "translation": list(translation)})
    ms = [
        {
            "axes": [{"name": n, "type": "space", "unit": unit} for n in names],
            "datasets": [{"path": "0", "coordinateTransformations": ts}],
        }
    ]
    if version == "0.5":
        g.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    else:
        g.attrs["multiscales"] = ms
    return path


def test_zarr_and_tiff_read_lazily_as_volumes(tmp_path) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 4000, (6, 40, 50)).astype(np.uint16)
    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=vol.shape, chunks=(1, 40, 50), dtype="uint16")[:] = vol
    v = open_volume(tmp_path / "v.zarr")
    assert v.shape == (6, 40, 50) and not v.is_2d and v.metadata["lazy"] and v.geometry == Geometry()
    assert np.array_equal(v.array[3], vol[3]) and np.array_equal(v.array[:, 5, :], vol[:, 5, :])
    tifffile.imwrite(tmp_path / "s.tif", vol)
    t = open_volume(tmp_path / "s.tif")
    assert t.shape == vol.shape and np.array_equal(t.array[4], vol[4])
    tifffile.imwrite(tmp_path / "one.tif", vol[0])
    one = open_volume(tmp_path / "one.tif")
    assert one.shape == (1, 40, 50) and one.is_2d and np.array_equal(one.array[0], vol[0])
    assert np.array_equal(one.array[:, 3, :], vol[:1, 3, :])


def test_ome_zarr_level0_geometry_in_mm_and_leading_axes_dropped(tmp_path) -> None:
    arr = np.arange(1 * 1 * 4 * 8 * 9, dtype=np.float32).reshape(1, 1, 4, 8, 9)
    v = open_volume(_ome(tmp_path / "a.ome.zarr", arr, [1, 1, 2.0, 0.5, 0.25], translation=[0, 0, 10, 20, 30]))
    assert v.shape == (4, 8, 9) and np.array_equal(v.array[2], arr[0, 0, 2])
    assert v.geometry.spacing == pytest.approx((0.00025, 0.0005, 0.002))  # (x, y, z) in mm from micrometres
    assert v.geometry.origin == pytest.approx((0.03, 0.02, 0.01))
    v4 = open_volume(_ome(tmp_path / "b.ome.zarr", arr[0, 0], [3.0, 1.5, 1.5], unit="millimeter", version="0.4"))
    assert v4.geometry.scale_zyx == pytest.approx((3.0, 1.5, 1.5))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: zarr.open_array(str(p), mode="w", shape=(2, 3, 8, 8), dtype="f4"), "expected a 2D or 3D"),
        (lambda p: zarr.open_array(str(p), mode="w", shape=(16, 16, 3), dtype="u1"), "RGB"),
        (lambda p: zarr.open_group(str(p), mode="w"), "multiscales"),
        (lambda p: p.mkdir(), "cannot open lazily"),
    ],
)
def test_bad_lazy_inputs_are_one_line(tmp_path, make, message) -> None:
    p = tmp_path / "x.zarr"
    make(p)
    with pytest.raises(InputError, match=message) as err:
        open_volume(p)
    assert "\n" not in str(err.value)


def test_content_hash_read_slab_by_slab_equals_the_in_memory_one(tmp_path) -> None:
    vol = np.random.default_rng(1).normal(size=(37, 20, 30)).astype(np.float32)
    z = zarr.open_array(str(tmp_path / "h.zarr"), mode="w", shape=vol.shape, chunks=(4, 20, 30), dtype="f4")
    z[:] = vol
    lazy = open_volume(tmp_path / "h.zarr")
    assert content_hash(lazy.array, slab_bytes=5 * 20 * 30 * 4) == memory_hash(vol)
    assert content_hash(lazy.array) == memory_hash(vol)
    assert content_hash(lazy.array[:36]) != memory_hash(vol)


def test_sample_is_the_whole_volume_when_small_and_bounded_otherwise() -> None:
    vol = np.arange(10 * 30 * 40, dtype=np.int32).reshape(10, 30, 40)
    assert np.array_equal(sample_of(vol), vol)
    s = sample_of(vol, max_voxels=2000)
    assert s.size <= 2000 * 1.5 and s.shape[0] == 10 and s[0, 0, 0] == vol[0, 0, 0]


def _objects(shape, seed) -> list[ObjectMasks]:
    """Overlapping discs along axes 0 and 1, with key slices."""
    rng = np.random.default_rng(seed)
    objs = []
    for oid, axis in ((3, 0), (7, 0), (9, 1), (2, 0)):
        n = shape[axis]
        plane = tuple(s for i, s in enumerate(shape) if i != axis)
        rr, cc = np.mgrid[: plane[0], : plane[1]]
        masks = {}
        r, c, rad = (rng.integers(5, plane[0] - 5), rng.integers(5, plane[1] - 5), rng.integers(4, 10))
        for i in range(rng.integers(0, n // 2), rng.integers(n // 2, n)):
            masks[i] = (rr - r) ** 2 + (cc - c) ** 2 <= rad * rad
        objs.append(ObjectMasks(oid, axis, masks, {min(masks)}))
    return objs


@pytest.mark.parametrize("seed", [0, 1])
def test_zarr_painting_equals_the_in_memory_overlap_rule(tmp_path, seed) -> None:
    shape, spacing = (12, 40, 50), (2.0, 0.7, 0.7)
    seg = LazySegmentation(shape, spacing, _objects(shape, seed), {3: "a", 7: "b", 9: "c", 2: "d"})
    want = resolve_overlaps(shape, seg.objects, spacing)
    assert len(np.unique(want)) >= 4
    out = write_zarr_labels(tmp_path / "l.zarr", seg, Geometry((0.7, 0.7, 2.0)), {"source": "s"})
    z = zarr.open_array(str(out), mode="r")
    assert z.dtype == np.uint16 and z.chunks == (1, 40, 50) and np.array_equal(z[:], want)
    assert z.attrs["labels"]["9"]["name"] == "c" and z.attrs["source"] == "s"
    assert z.attrs["geometry"]["spacing"] == [0.7, 0.7, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.zarr"]
    with pytest.raises(InputError, match="exists"):
        write_zarr_labels(out, seg, Geometry())


def test_zarr_region_not_reading_back_leaves_nothing_and_keeps_the_old_output(tmp_path, monkeypatch) -> None:
    shape = (12, 30, 30)
    seg = LazySegmentation(shape, (1.0, 1.0, 1.0), _objects(shape, 2)[:1], {3: "a"})
    out = write_zarr_labels(tmp_path / "l.zarr", seg, Geometry())
    before = zarr.open_array(str(out), mode="r")[:]

    real = zarr.Array.__getitem__

    def lying(self, key):
        got = real(self, key)
        return np.zeros_like(got) if ".partial" in str(self.store) else got

    monkeypatch.setattr(zarr.Array, "__getitem__", lying)
    with pytest.raises(OutputError, match="does not read back"):
        write_zarr_labels(out, seg, Geometry(), overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.zarr"]
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], before)
