"""Volumes read lazily: zarr, OME-Zarr and TIFF opened without reading their voxels.

:func:`open_volume` returns a :class:`napari_sam.io.Volume` whose ``array``
is a zarr-like (z, y, x) array: indexing it reads only the chunks asked for
(a slice, a strided sample), so a volume larger than memory can be segmented
slice by slice (:mod:`napari_sam.large_segment`) or embedded on a cluster
(:mod:`napari_sam.embed_cluster`).

- **zarr array**: as it is (2D arrays become (1, y, x) and ``is_2d``);
- **OME-Zarr image** (a group with ``multiscales`` metadata, v0.4 or v0.5):
  its first (full-resolution) level, leading singleton axes (t, c) dropped;
  its voxel size and origin from the level's ``scale`` and ``translation``
  (converted to mm where the axes name their unit);
- **TIFF** (a page or a multi-page stack): through tifffile's zarr store,
  pages read on access; no geometry, as :func:`napari_sam.io.read_image`
  gives a TIFF.

What needs intensities of the whole volume (the automatic window, whether it
looks like CT) is decided on a bounded, strided sample of it
(:func:`sample_of`): the whole volume when it holds at most
``SAMPLE_VOXELS`` voxels (then the decisions are exactly those made on the
volume in memory), else evenly spaced slices, strided in plane.
:func:`content_hash` hashes a lazy volume slab by slab and gives the digest
:func:`napari_sam.cache.content_hash` gives for the same array in memory, so
the embedding cache is shared between both ways of reading.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import Geometry, Volume

__all__ = ["SAMPLE_VOXELS", "content_hash", "is_lazy_path", "open_volume", "sample_of", "sample_volume"]

#: voxels of the strided sample that stands for a lazy volume's intensities
SAMPLE_VOXELS = 8_000_000
#: OME-Zarr unit names -> millimetres
_UNIT_MM = {
    "meter": 1e3,
    "centimeter": 10.0,
    "millimeter": 1.0,
    "micrometer": 1e-3,
    "nanometer": 1e-6,
    "angstrom": 1e-7,
}


def is_zarr_path(path: str | Path) -> bool:
    """Whether ``path`` names a zarr store (a folder ending in .zarr, or one holding zarr metadata)."""
    p = Path(path)
    return p.name.lower().endswith(".zarr") or (
        p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))
    )


def is_lazy_path(path: str | Path) -> bool:
    """Whether :func:`open_volume` can read ``path`` lazily (zarr, OME-Zarr, TIFF)."""
    return is_zarr_path(path) or Path(path).name.lower().endswith((".tif", ".tiff"))


class AxisView:
    """A zarr-like view of ``arr`` with leading singleton axes dropped (``drop``)
    or one leading singleton axis added (``drop=-1``): shape, dtype, ndim and
    basic (int / slice) indexing, reading only what is indexed."""

    def __init__(self, arr: Any, drop: int) -> None:
        self._arr, self._drop = arr, drop
        self.shape = (1, *arr.shape) if drop < 0 else tuple(arr.shape[drop:])
        self.dtype = arr.dtype
        self.ndim = len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self._drop >= 0:
            return np.asarray(self._arr[(0,) * self._drop + key])
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            if first not in (0, -1):
                raise IndexError(f"index {first} outside a single slice")
            return np.asarray(self._arr[rest])
        return np.asarray(self._arr[rest])[None][first]


def _ome_axes_mm(ms: dict[str, Any], ndim: int) -> list[float]:
    axes = ms.get("axes") or []
    factors = []
    for ax in axes[-ndim:] if len(axes) >= ndim else [{}] * ndim:
        unit = ax.get("unit") if isinstance(ax, dict) else None
        factors.append(_UNIT_MM.get(unit, 1.0) if unit else 1.0)
    return factors


def _ome_geometry(ms: dict[str, Any], ndim: int) -> Geometry:
    """Spacing and origin of the first level, from its scale and translation (z, y, x order)."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for t in ms["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(v) for v in t["scale"]][-ndim:]
        elif t.get("type") == "translation" and "translation" in t:
            shift = [float(v) for v in t["translation"]][-ndim:]
    mm = _ome_axes_mm(ms, ndim)
    scale = [s * f for s, f in zip(scale, mm)]
    shift = [s * f for s, f in zip(shift, mm)]
    if ndim == 2:
        scale, shift = [1.0, *scale], [0.0, *shift]
    if not all(np.isfinite(scale)) or min(scale) <= 0:
        raise InputError(f"OME-Zarr scale {scale}: voxel sizes must be positive")
    return Geometry(tuple(scale[::-1]), tuple(shift[::-1]))  # type: ignore[arg-type]


def _open_zarr(p: Path) -> tuple[Any, dict[str, Any] | None]:
    """The array of a zarr store, and the OME-Zarr multiscale it is level 0 of (or None)."""
    import zarr

    node = zarr.open(str(p), mode="r")
    if isinstance(node, zarr.Array):
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise InputError(f"{p}: a zarr group without OME-Zarr multiscales metadata")
    return node[multiscales[0]["datasets"][0]["path"]], multiscales[0]


def _open_raw(p: Path) -> tuple[Any, dict[str, Any] | None]:
    import zarr

    if is_zarr_path(p):
        return _open_zarr(p)
    if p.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        node = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
        return (node if isinstance(node, zarr.Array) else node["0"]), None
    raise InputError(f"{p}: lazy reading needs a zarr, OME-Zarr or TIFF image")


def open_volume(path: str | Path) -> Volume:
    """A :class:`~napari_sam.io.Volume` whose ``array`` reads ``path`` lazily (see the module).

    Raises InputError (one line) for a missing or unreadable store, an image
    that is not 2D or 3D after dropping leading singleton axes, RGB data or
    a non-numeric type.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    try:
        arr, ms = _open_raw(p)
        lead = 0
        while arr.ndim - lead > 3 and arr.shape[lead] == 1:
            lead += 1
        if arr.ndim - lead not in (2, 3):
            raise InputError(
                f"{p}: image of shape {tuple(arr.shape)}; expected a 2D or 3D image "
                "(leading axes of size 1 are dropped)"
            )
        geometry = _ome_geometry(ms, arr.ndim - lead) if ms is not None else Geometry()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input here
        raise InputError(f"{p}: cannot open lazily ({type(exc).__name__}: {exc})") from None
    view: Any = AxisView(arr, lead) if lead else arr
    if view.ndim == 2:
        view = AxisView(view, -1)
    if min(view.shape) == 0:
        raise InputError(f"{p}: empty image (shape {tuple(arr.shape)})")
    if view.shape[-1] in (3, 4) and view.shape[0] > 4:
        raise InputError(f"{p}: looks like RGB (shape {tuple(arr.shape)}); RGB images are not read lazily")
    if not np.issubdtype(np.dtype(view.dtype), np.number) and np.dtype(view.dtype) != bool:
        raise InputError(f"{p}: unsupported voxel type {view.dtype}")
    meta = {
        "path": str(p),
        "modality": None,
        "dicom_window": None,
        "is_2d": view.shape[0] == 1,
        "is_rgb": False,
        "lazy": True,
    }
    return Volume(view, geometry, meta)


def content_hash(array: Any, slab_bytes: int = 64 << 20) -> str:
    """SHA-256 of a (lazy) array's bytes, shape and dtype, read slab by slab along
    axis 0: the digest :func:`napari_sam.cache.content_hash` gives for the same
    array in memory, with at most about ``slab_bytes`` in memory."""
    h = hashlib.sha256()
    h.update(str((tuple(array.shape), str(np.dtype(array.dtype)))).encode())
    per = int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize
    step = max(1, slab_bytes // max(1, per))
    for z in range(0, array.shape[0], step):
        h.update(np.ascontiguousarray(array[z : z + step]).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def sample_of(array: Any, max_voxels: int = SAMPLE_VOXELS) -> np.ndarray:
    """A strided (z, y, x) sample of a (lazy) volume: the whole volume when it
    holds at most ``max_voxels`` voxels, else evenly spaced slices (at most 64)
    strided in plane to about ``max_voxels`` voxels in all."""
    n, rows, cols = array.shape[:3]
    if n * rows * cols <= max_voxels:
        return np.asarray(array[:])
    k = min(n, 64)
    zs = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    step = max(1, int(np.ceil(np.sqrt(len(zs) * rows * cols / max_voxels))))
    return np.stack([np.asarray(array[int(z), ::step, ::step]) for z in zs])


def sample_volume(volume: Volume, max_voxels: int = SAMPLE_VOXELS) -> Volume:
    """An in-memory stand-in for a lazy ``volume`` in decisions made from its
    intensities (window, CT or not): :func:`sample_of` its array, same geometry
    and metadata. InputError when the sample holds NaN or infinite values."""
    sample = sample_of(volume.array, max_voxels)
    if np.issubdtype(sample.dtype, np.floating) and not np.all(np.isfinite(sample)):
        raise InputError(f"{volume.metadata.get('path', 'image')}: image contains NaN or infinite values")
    if sample.dtype == bool:
        sample = sample.astype(np.uint8)
    return Volume(sample, volume.geometry, dict(volume.metadata))
