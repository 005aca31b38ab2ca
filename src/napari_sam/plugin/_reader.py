"""Reader contribution: NIfTI, NRRD, MHA/MHD and DICOM series folders.

Each file becomes one image layer whose ``scale`` is the voxel spacing (and
whose translate/affine place it at its physical position, see
:mod:`._geometry`), whose ``metadata["napari_sam"]`` carries the geometry so
that the writer can restore it, and whose contrast limits start at a sensible
window (the DICOM header's window, a soft-tissue window for CT in HU, robust
percentiles otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..intensity import resolve_window
from ..io import VOLUME_SUFFIXES, Volume, read_image, sidecar_path
from ._geometry import layer_metadata, layer_transform

LayerData = tuple[Any, dict[str, Any], str]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    except RuntimeError:
        return False


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader function if ``path`` is ours, else None.

    Ours: a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``
    file, a ``.dcm`` file (its folder's series is read; a DICOM SEG opens as
    labels), a Slicer ``.seg.nrrd`` (labels) or a folder holding a DICOM series.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        if not (_suffix(p) in VOLUME_SUFFIXES or _suffix(p) == ".dcm" or _is_dicom_folder(p)):
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read each path into an image layer tuple ``(data, kwargs, "image")``.

    Raises :class:`napari_sam.errors.InputError` (one line) for unreadable
    input; napari shows it as a notification.
    """
    paths = [path] if isinstance(path, str) else list(path)
    out = []
    for p in map(Path, paths):
        from ._seg_io import segmentation_layer_data

        seg = segmentation_layer_data(p)  # a .seg.nrrd or DICOM SEG file: a Labels layer with names
        if seg is not None:
            out.append(seg)
            continue
        volume = read_image(_series_root(p), series=_series_of(p))
        side = _our_labels_sidecar(p)
        out.append(labels_to_layer_data(volume, side) if side is not None else volume_to_layer_data(volume))
    return out


def _our_labels_sidecar(path: Path) -> dict[str, Any] | None:
    """The JSON sidecar written by :func:`napari_sam.io.write_labels` beside ``path``, if any."""
    if path.is_dir():
        return None
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("labels"), dict) else None


def labels_to_layer_data(volume: Volume, sidecar: dict[str, Any]) -> LayerData:
    """A label map written by napari-sam (it has a names sidecar) -> Labels layer tuple,
    with the object names and colours in its metadata."""
    data, kwargs, _ = volume_to_layer_data(volume)
    for key in ("contrast_limits", "colormap", "rgb"):
        kwargs.pop(key, None)
    objects = {str(k): v for k, v in sidecar["labels"].items() if isinstance(v, dict)}
    kwargs["metadata"]["napari_sam"]["objects"] = objects
    from ._layer_setup import object_features

    kwargs["features"] = object_features({int(k): v.get("name", str(k)) for k, v in objects.items()})
    kwargs["name"] = f"{kwargs['name']}"
    try:
        from napari.utils.colormaps import DirectLabelColormap

        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        for k, v in objects.items():
            if v.get("color") is not None:
                colors[int(k)] = tuple(c / 255.0 for c in list(v["color"])[:3]) + (1.0,)
        kwargs["colormap"] = DirectLabelColormap(color_dict=colors)
    except ImportError:  # pragma: no cover - napari is installed wherever this runs
        pass
    return data.astype(np.int32) if data.dtype.kind not in "iu" else data, kwargs, "labels"


def _series_of(path: Path) -> str | None:
    """The series a ``.dcm`` file belongs to (so opening one file of a folder of
    several series picks that series); None for anything else. A folder of
    several series is refused by read_image with the list (a notification)."""
    if _suffix(path) != ".dcm":
        return None
    from ..dicom_series import list_series

    me = path.resolve()
    for uid, files in list_series(path.parent).items():
        if any(Path(f).resolve() == me for f in files):
            return uid
    return None


def _series_root(path: Path) -> Path:
    return path.parent if _suffix(path) == ".dcm" else path


def volume_to_layer_data(volume: Volume, name: str | None = None) -> LayerData:
    """A :class:`napari_sam.io.Volume` -> napari image layer data tuple.

    3D volumes keep their (z, y, x) array; a 2D image becomes (y, x) or
    (y, x, 3) RGB. The layer's metadata carries the geometry, modality,
    DICOM window and source path.
    """
    arr = volume.array
    if volume.is_2d:
        arr = arr[0]
    src = volume.metadata.get("path")
    if name is None:
        p = Path(src) if src else None
        name = (p.name[: -len(_suffix(p))] if p and _suffix(p) else p.name) if p else "image"
    kwargs: dict[str, Any] = {"name": name, **layer_transform(volume.geometry, ndim=2 if volume.is_2d else 3)}
    extra = {k: volume.metadata.get(k) for k in ("path", "modality", "dicom_window") if volume.metadata.get(k)}
    if extra.get("dicom_window") is not None:
        extra["dicom_window"] = list(extra["dicom_window"])
    kwargs["metadata"] = layer_metadata(volume.geometry, **extra)
    if volume.is_rgb:
        kwargs["rgb"] = True
    else:
        win = resolve_window(
            volume.array,
            None,
            modality=volume.metadata.get("modality"),
            dicom_window=volume.metadata.get("dicom_window"),
        )
        kwargs["contrast_limits"] = [win.lo, win.hi]
        kwargs["colormap"] = "gray"
    return arr, kwargs, "image"


__all__ = ["get_reader", "read_layers", "volume_to_layer_data", "labels_to_layer_data", "InputError"]
