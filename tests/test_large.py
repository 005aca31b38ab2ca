"""Large images: lazy readers, and tile-by-tile stitching into zarr equal to the in-memory stitch."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from napari_sam.errors import InputError  # noqa: E402
from napari_sam.large import open_lazy, paint_tile, sample_window  # noqa: E402
from napari_sam.tiling import TileGrid, stitch_tile_labels  # noqa: E402


def _random_tile_labels(grid: TileGrid, seed: int) -> list[np.ndarray]:
    """Per-tile label maps with discs anywhere (some cut by tile edges, some overlapping)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in grid.tiles:
        lab = np.zeros(t.shape, np.int32)
        rr, cc = np.mgrid[: t.height, : t.width]
        for i in range(1, 9):
            r, c, rad = rng.integers(0, t.height), rng.integers(0, t.width), rng.integers(3, 14)
            lab[((rr - r) ** 2 + (cc - c) ** 2 <= rad * rad) & (lab == 0)] = i
        out.append(lab)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paint_tile_into_zarr_equals_in_memory_stitch(tmp_path, seed: int) -> None:
    grid = TileGrid((300, 250), (96, 80), 16)
    tiles = _random_tile_labels(grid, seed)
    want = stitch_tile_labels(grid, tiles)
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=grid.shape, chunks=(64, 64), dtype="int32")
    next_id = 1
    for k, lab in enumerate(tiles):
        next_id = paint_tile(out, grid, k, lab, next_id)
    assert want.max() > 5 and next_id - 1 == want.max()
    np.testing.assert_array_equal(np.asarray(out[:]), want)


def test_open_lazy_zarr_ome_zarr_and_tiff(tmp_path) -> None:
    import tifffile

    img = (np.arange(200 * 300) % 251).astype(np.uint16).reshape(200, 300)
    zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=img.shape, chunks=(64, 64), dtype="uint16")[:] = img
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.create_array("0", shape=(1, 1, *img.shape), chunks=(1, 1, 64, 64), dtype="uint16")[:] = img[None, None]
    g.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]
    tifffile.imwrite(tmp_path / "t.tif", img, tile=(64, 64))
    for name in ("a.zarr", "ome.zarr", "t.tif"):
        arr = open_lazy(tmp_path / name)
        assert arr.shape == img.shape, name
        np.testing.assert_array_equal(np.asarray(arr[10:70, 100:180]), img[10:70, 100:180])
    w = sample_window(open_lazy(tmp_path / "a.zarr"), max_pixels=5000)
    assert 0 <= w.lo < w.hi <= 250
    with pytest.raises(InputError, match="no such file"):
        open_lazy(tmp_path / "nope.zarr")
    with pytest.raises(InputError, match="2D"):
        zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(3, 20, 20), dtype="uint8")
        open_lazy(tmp_path / "v.zarr")
