"""A zarr image larger than a worker may hold, segmented tile by tile on 2 single-threaded workers.

The image (float64, > the workers' memory limit) is background except two
crops of the shared nuclei image, each in the middle of a tile. Its chunks
outside the crops are never written (zarr's fill value), so the file is small
and the test cheap, but every tile is still read, checked and stitched.
The nuclei found must be exactly those the automatic segmenter finds in each
tile on its own, and nothing elsewhere; no worker may die.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

LIMIT = 1.5 * 2**30  # bytes a worker may use
TILE, HALO = 1024, 128


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps hold the same objects (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_zarr_larger_than_worker_memory_segmented_tile_by_tile(data_dir, tmp_path) -> None:
    import tifffile
    from distributed import Client, LocalCluster

    from napari_sam.automatic import AutomaticSegmenter, AutoSettings
    from napari_sam.batch import register_model
    from napari_sam.intensity import parse_window
    from napari_sam.large import segment_large
    from napari_sam.models.registry import load_model
    from napari_sam.tiling import TileGrid

    nuclei = tifffile.imread(data_dir / "nuclei_2d" / "image.tif").astype(np.float64)
    side = int(np.ceil(np.sqrt(1.1 * LIMIT / 8)))
    src = zarr.open_array(
        str(tmp_path / "big.zarr"), mode="w", shape=(side, side), chunks=(1024, 1024), dtype="float64", fill_value=0.0
    )
    assert src.nbytes > LIMIT
    grid = TileGrid((side, side), (TILE, TILE), HALO)
    picks = [5, len(grid) - 7]  # two tiles far apart
    crops = [nuclei[:200, :200], nuclei[250:450, 300:500]]
    for k, crop in zip(picks, crops):
        t = grid.tiles[k]
        r, c = t.top + (TILE - 200) // 2, t.left + (TILE - 200) // 2
        src[r : r + 200, c : c + 200] = crop
    window = parse_window([float(np.percentile(nuclei, 0.5)), float(np.percentile(nuclei, 99.5))])
    settings = AutoSettings.for_microscopy(tile_shape=(TILE, TILE), halo=HALO)

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=LIMIT, dashboard_address=None
    )
    client = Client(cluster)
    try:
        register_model(client, torch_threads=1)
        before = set(client.scheduler_info()["workers"])
        info = segment_large(client, tmp_path / "big.zarr", tmp_path / "labels.zarr", settings, window)
        after = set(client.scheduler_info()["workers"])
    finally:
        client.close()
        cluster.close()
    assert before == after, "a worker died"
    assert info["tiles"] == len(grid) and info["empty_tiles"] == len(grid) - 2
    out = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert out.shape == (side, side) and not list(tmp_path.glob(".*partial"))
    import torch

    backend = load_model()
    seen = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the workers
    try:
        wants = [
            AutomaticSegmenter(backend, settings).segment(window.apply(np.asarray(src[grid.tiles[k].slices]))).labels
            for k in picks
        ]
    finally:
        torch.set_num_threads(threads)
    for k, want in zip(picks, wants):
        t = grid.tiles[k]
        got = np.asarray(out[t.slices])
        assert want.max() > 3 and _same_partition(got, want), k
        seen += len(np.unique(got)) - 1
    assert seen == info["objects"]  # nothing anywhere else
