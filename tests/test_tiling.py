"""Tiling: overlapping tiles, ownership, stitching without seams or duplicates,
and automatic mode on a mosaic (fake model: fast; the real-model mosaic
figure is in benchmarks/automatic.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fake_blob_backend import FakeBlobBackend, blob_image
from napari_sam.automatic import AutomaticSegmenter, AutoSettings
from napari_sam.errors import InputError
from napari_sam.evaluation import match_instances
from napari_sam.tiling import TileGrid, stitch_tile_labels


def test_tiles_cover_the_image_and_cores_partition_it():
    grid = TileGrid((1000, 700), tile_shape=(256, 300), halo=32)
    cover = np.zeros((1000, 700), int)
    owned = np.zeros((1000, 700), int)
    for t, c in zip(grid.tiles, grid.cores):
        cover[t.slices] += 1
        owned[c.slices] += 1
        # a core lies inside its tile, at least `halo` from every inner tile edge
        assert t.top <= c.top and c.top + c.height <= t.top + t.height
        if t.top > 0:
            assert c.top - t.top >= grid.halo
        if t.top + t.height < 1000:
            assert t.top + t.height - (c.top + c.height) >= grid.halo
    assert cover.min() >= 1
    assert np.all(owned == 1)
    assert all(t.shape == (256, 300) for t in grid.tiles)


def test_small_image_is_one_tile():
    grid = TileGrid((300, 200), tile_shape=(512, 512), halo=64)
    assert len(grid) == 1 and grid.tiles[0].shape == (300, 200)


def test_bad_halo_is_an_input_error():
    with pytest.raises(InputError, match="halo"):
        TileGrid((1000, 1000), tile_shape=(100, 100), halo=50)


def test_owner_and_tile_for_box():
    grid = TileGrid((1024, 1024), tile_shape=(512, 512), halo=64)
    for k, core in enumerate(grid.cores):
        assert grid.owner(core.top, core.left) == k
        assert grid.owner(core.top + core.height - 1, core.left + core.width - 1) == k
    # an object across a core border is decoded whole in one tile
    box = (370, 370, 400, 400)
    t = grid.tiles[grid.tile_for_box(box)]
    assert t.contains_box(box)


def test_stitching_keeps_objects_whole_and_unique():
    """Objects straddling tile borders: each tile sees some of them whole and
    others cut; the stitched map has every object exactly once, unsplit."""
    H, W = 300, 300
    rr, cc = np.mgrid[:H, :W]
    truth = np.zeros((H, W), np.int32)
    centres = [(r, c) for r in range(20, H, 37) for c in range(15, W, 41)]
    for k, (r, c) in enumerate(centres, start=1):
        truth[((rr - r) ** 2 + (cc - c) ** 2 <= 12**2) & (truth == 0)] = k
    grid = TileGrid((H, W), tile_shape=(128, 128), halo=28)
    tile_labels = []
    for t in grid.tiles:  # each tile labels what it sees, with its own ids
        from scipy import ndimage

        lab, _ = ndimage.label(truth[t.slices] > 0)
        tile_labels.append(lab)
    stitched = stitch_tile_labels(grid, tile_labels)
    s = match_instances(stitched, truth)
    assert s.fp == 0 and s.fn == 0 and s.mean_matched_iou == 1.0
    # no object split: every true object is covered by exactly one stitched id
    for k in range(1, len(centres) + 1):
        ids = np.unique(stitched[truth == k])
        assert len(ids[ids > 0]) == 1


def test_automatic_on_a_mosaic_matches_the_single_image():
    """A 2x2 mosaic of one image, tiles smaller than the mosaic (not aligned
    with the mosaic's seams): the same objects, none split or duplicated.
    The objects are the model's masks decoded on the tiles (model_role
    "masks", no unanswered blobs kept): with a decoder that answers nothing
    F1 would be 0."""
    img, lab = blob_image((160, 160), seed=3, touching_pair=False)
    masks = {"model_role": "masks", "keep_unanswered": False}
    single = AutomaticSegmenter(FakeBlobBackend(), AutoSettings.for_microscopy(**masks)).segment(img)
    f1_single = match_instances(single.labels, lab).f1
    mosaic = np.block([[img, img], [img, img]])
    off = lab.max()
    mlab = np.block(
        [
            [lab, np.where(lab > 0, lab + off, 0)],
            [np.where(lab > 0, lab + 2 * off, 0), np.where(lab > 0, lab + 3 * off, 0)],
        ]
    )
    backend = FakeBlobBackend()
    seg = AutomaticSegmenter(backend, AutoSettings.for_microscopy(tile_shape=(112, 112), halo=24, **masks))
    res = seg.segment(mosaic)
    grid = TileGrid(mosaic.shape, (112, 112), 24)
    assert len(grid) > 4 and res.encoder_calls == len(grid)
    s = match_instances(res.labels, mlab)
    assert abs(s.f1 - f1_single) <= 0.02 and s.f1 >= 0.95
    for k in np.unique(mlab)[1:]:  # split: two predicted ids, each holding a quarter of the object
        ids, counts = np.unique(res.labels[mlab == k], return_counts=True)
        big = ids[(ids > 0) & (counts >= 0.25 * (mlab == k).sum())]
        assert len(big) <= 1, f"object {k} split into {big}"
    # tile embeddings are cached: a re-run with other thresholds runs no encoder
    seg.settings = seg.settings.with_(quality_threshold=0.2)
    again = seg.segment(mosaic)
    assert again.encoder_calls == 0
