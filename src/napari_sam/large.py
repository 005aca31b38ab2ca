"""Images larger than memory: read lazily, segment tile by tile on a Dask cluster,
write the label map to zarr chunk by chunk.

- **Input:** a zarr array, an OME-Zarr image (its full-resolution level) or a
  TIFF, opened lazily (:func:`open_lazy`): only the tiles being processed are
  in memory, on the worker that processes them.
- **Tiles:** the :class:`napari_sam.tiling.TileGrid` of the image; each tile
  is one Dask task (:func:`segment_tile`) that reads its pixels from the
  file, windows them and runs the automatic segmenter with the worker's model
  (:class:`napari_sam.batch.ModelPlugin`). A constant tile (background of a
  slide) has no object and costs no model run.
- **Stitching:** the halo rule of :func:`napari_sam.tiling.stitch_tile_labels`
  (an object is kept by the tile owning its centre unless cut by an inner
  tile edge; an earlier tile keeps a contested pixel), applied tile by tile
  into the output zarr (:func:`paint_tile`): the client holds one tile's
  labels at a time, not the image.
- **Output:** a zarr array (int32, chunks of the tile core size) written under
  a temporary name in the output's folder and renamed when complete.

Coordinates: (row, col) pixels; 2D images only (a (1, H, W) array is taken
as 2D).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .automatic import AutomaticSegmenter, AutoSettings
from .batch import PLUGIN_NAME, connect, local_client, register_model
from .errors import InputError
from .geometry import Crop
from .intensity import Window, resolve_window
from .jobs import Cancel, Job, Progress, ProgressCallback, drive
from .tiling import TileGrid, tile_kept_objects

log = logging.getLogger(__name__)

LAZY_SUFFIXES = (".zarr", ".tif", ".tiff", ".ome.zarr")


def is_zarr_path(path: str | Path) -> bool:
    """Whether ``path`` names a zarr store (a folder ending in .zarr, or one holding zarr metadata)."""
    p = Path(path)
    return p.name.lower().endswith(".zarr") or (
        p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))
    )


def _ome_level0(group) -> Any:
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise InputError(f"{group.store}: a zarr group without OME-Zarr multiscales metadata")
    return group[ms[0]["datasets"][0]["path"]]


def open_lazy(path: str | Path):
    """A lazily read image: a zarr-like array indexable by (row, col) slices, 2 or 3 dims.

    zarr arrays as they are; OME-Zarr groups: the first (full resolution)
    level, with leading singleton axes (t, c, z) dropped; TIFF: through
    tifffile's zarr store (pages read on access).
    """
    import zarr

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    try:
        if is_zarr_path(p):
            node = zarr.open(str(p), mode="r")
            arr = node if isinstance(node, zarr.Array) else _ome_level0(node)
        elif p.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
            if not isinstance(arr, zarr.Array):
                arr = arr["0"]
        else:
            raise InputError(f"{p}: lazy reading needs a zarr, OME-Zarr or TIFF image")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input here
        raise InputError(f"{p}: cannot open lazily ({type(exc).__name__}: {exc})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = _Squeezed(arr)
    if arr.ndim != 2:
        raise InputError(f"{p}: image of shape {arr.shape}; tiled segmentation takes 2D images")
    return arr


class _Squeezed:
    """A view of a zarr-like array without its leading singleton axis."""

    def __init__(self, arr) -> None:
        self._arr = arr
        self.shape = tuple(arr.shape[1:])
        self.dtype = arr.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self._arr[(0,) + key]


def sample_window(arr, spec=None, max_pixels: int = 4_000_000) -> Window:
    """The intensity window for a lazily read image, from a strided sample of it.

    spec: as :func:`napari_sam.intensity.resolve_window` (None / "auto": the
    0.5-99.5 percentiles of the sample, 8-bit taken as is).
    """
    H, W = arr.shape
    step = max(1, int(np.ceil(np.sqrt(H * W / max_pixels))))
    rows = []
    for r0 in range(0, H, max(step, 512 // step * step)):  # strips: bounded memory
        strip = np.asarray(arr[r0 : min(H, r0 + max(step, 512 // step * step)), :])
        rows.append(strip[::step, ::step])
    sample = np.concatenate(rows)[None]
    return resolve_window(sample, spec)


def segment_tile(path: str, tile: Crop, window: Window, settings, backend) -> np.ndarray | None:
    """One tile's instance labels: (tile.height, tile.width) int32, or None for a constant tile."""
    pixels = np.asarray(open_lazy(path)[tile.slices])
    if pixels.size == 0 or pixels.min() == pixels.max():
        return None
    return AutomaticSegmenter(backend, settings).segment(window.apply(pixels)).labels.astype(np.int32)


def _tile_task(path: str, tile: Crop, window: Window, settings) -> np.ndarray | None:
    from distributed import get_worker

    return segment_tile(path, tile, window, settings, get_worker().plugins[PLUGIN_NAME].backend)


def paint_tile(out, grid: TileGrid, k: int, labels: np.ndarray | None, next_id: int) -> int:
    """Paint tile ``k``'s kept objects into the zarr-like ``out`` (free pixels only); returns the next id."""
    if labels is None:
        return next_id
    t = grid.tiles[k]
    region = np.asarray(out[t.slices])
    for lid, sl in tile_kept_objects(grid, k, labels):
        m = (labels[sl] == lid) & (region[sl] == 0)
        region[sl][m] = next_id
        next_id += 1
    out[t.slices] = region
    return next_id


def segment_large_job(
    client, image: str | Path, output: str | Path, settings: AutoSettings | None = None, window=None
) -> Job[dict[str, Any]]:
    """Segment a large 2D image tile by tile on ``client``'s cluster into a zarr
    label map: a job (:mod:`napari_sam.jobs`) yielding a Progress per tile
    painted, returning {"objects", "tiles", "empty_tiles", "shape"}.

    The workers need the :class:`napari_sam.batch.ModelPlugin` registered.
    settings: :class:`napari_sam.automatic.AutoSettings` (tile_shape, halo,
    ...; default microscopy); window: a window spec (default: from a sample).
    Closed before its end, the queued tiles are cancelled and nothing is written.
    """
    import zarr
    from distributed import as_completed

    settings = settings or AutoSettings.for_microscopy()
    out_path = Path(output)
    if out_path.exists():
        raise InputError(f"{out_path}: output exists; remove it or choose another name")
    arr = open_lazy(image)
    win = sample_window(arr, window) if not isinstance(window, Window) else window
    grid = TileGrid(tuple(arr.shape), settings.tile_shape, settings.halo)
    tmp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.partial")
    core = grid.cores[0].shape
    out = zarr.open_array(str(tmp), mode="w", shape=grid.shape, chunks=core, dtype="int32", fill_value=0)
    futures: dict = {}
    try:
        futures = {
            client.submit(_tile_task, str(image), t, win, settings, pure=False): k for k, t in enumerate(grid.tiles)
        }
        log.info("%d tile(s) of %s sent to %s", len(grid), image, client)
        waiting: dict[int, Any] = {}
        next_k, next_id, empty = 0, 1, 0
        for fut in as_completed(list(futures)):
            waiting[futures[fut]] = fut
            while next_k in waiting:  # paint in tile order: the earlier tile keeps a contested pixel
                labels = waiting.pop(next_k).result()
                empty += labels is None
                next_id = paint_tile(out, grid, next_k, labels, next_id)
                next_k += 1
                yield Progress(next_k, len(grid), "tiles")
        out.attrs.update({"source": str(image), "window": [win.lo, win.hi], "objects": next_id - 1})
        os.replace(tmp, out_path)
        futures = {}
    finally:
        if futures:  # closed early: stop what is still queued
            client.cancel(list(futures))
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"objects": next_id - 1, "tiles": len(grid), "empty_tiles": empty, "shape": grid.shape}


def segment_large(
    client,
    image: str | Path,
    output: str | Path,
    settings: AutoSettings | None = None,
    window=None,
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
) -> dict[str, Any]:
    """:func:`segment_large_job` driven to its end (:func:`napari_sam.jobs.drive`)."""
    job = segment_large_job(client, image, output, settings, window)
    return drive(job, progress, cancel, what="tiled run")


def wants_tiled(image: str | Path, output: str | Path) -> bool:
    """Whether ``napari-sam auto IMAGE --output OUTPUT`` takes the tiled cluster path (zarr in or out)."""
    return is_zarr_path(image) or Path(output).name.lower().endswith(".zarr")


def check_tiled_paths(image: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Check a tiled run's input (opens lazily) and output (``.zarr``, no clobbering) before any work."""
    out = Path(output)
    if not out.name.lower().endswith(".zarr"):
        raise InputError(f"{out}: a tiled (zarr) input writes its label map as .zarr")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists; pass --overwrite to replace it")
    if out.exists() and out.resolve() == Path(image).resolve():
        raise InputError(f"{out}: refusing to overwrite an input")
    open_lazy(image)
    return out


def auto_large(
    image: str | Path,
    output: str | Path,
    settings,
    window=None,
    scheduler: str | None = None,
    workers: int | None = None,
    model: str = "lite_medsam",
    checkpoint: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: Cancel | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """``napari-sam auto`` for a zarr / OME-Zarr / TIFF image into a ``.zarr`` label map, on Dask.

    scheduler: a running scheduler's address; None: a LocalCluster of
    ``workers`` single-threaded processes (default: one per core), closed at
    the end; precision: the workers' encoder precision (``--precision``).
    Returns :func:`segment_large`'s summary. progress, cancel: as for
    :func:`napari_sam.jobs.drive`.
    """
    out = check_tiled_paths(image, output, overwrite)
    client = connect(scheduler) if scheduler else local_client(workers, 1)
    try:
        register_model(client, model, checkpoint, precision=precision)
        tmp_old = None
        if out.exists():  # --overwrite: set the old one aside until the new one is complete
            tmp_old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
            os.replace(out, tmp_old)
        try:
            info = segment_large(client, image, out, settings, window, progress=progress, cancel=cancel)
        except BaseException:
            if tmp_old is not None:
                os.replace(tmp_old, out)
            raise
        if tmp_old is not None:
            shutil.rmtree(tmp_old, ignore_errors=True)
    finally:
        cluster = None if scheduler else getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    return info
