"""napari side of the clinical formats: DICOM SEG and Slicer ``.seg.nrrd``.

Reader: either file opens as a Labels layer placed at its physical position
(so it lies on its image), with the segments' names and colours. Writer and
the widget's export: a labels layer -> ``.seg.nrrd`` in its geometry, or ->
DICOM SEG referencing the DICOM series the labels were segmented on (found
through the layer's ``metadata["napari_sam"]["source"]``, else refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import Geometry, Volume

LayerData = tuple[Any, dict[str, Any], str]


def is_dicom_seg_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file whose Modality is SEG."""
    if not path.is_file():
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # not DICOM
        return False
    return str(ds.get("Modality", "")).upper() == "SEG"


def segmentation_layer_data(path: Path) -> LayerData | None:
    """A ``.seg.nrrd`` or DICOM SEG file -> ``(labels, kwargs, "labels")``; None for other files."""
    from ..dicom_seg import read_dicom_seg
    from ..slicer_seg import is_slicer_seg, read_slicer_seg
    from ._reader import labels_to_layer_data

    if is_slicer_seg(path):
        ls = read_slicer_seg(path)
    elif is_dicom_seg_file(path):
        ls = read_dicom_seg(path)
    else:
        return None
    table = {"labels": {str(i): {"name": ls.name(i), "color": list(ls.color(i))} for i in ls.ids()}}
    name = path.name[: -len(".seg.nrrd")] if path.name.lower().endswith(".seg.nrrd") else path.stem
    data, kwargs, kind = labels_to_layer_data(Volume(ls.labels, ls.geometry, {"path": str(path)}), table)
    kwargs["name"] = name
    return data, kwargs, kind


def source_volume(source: str | None, shape: tuple[int, int, int]) -> Volume:
    """The DICOM series at ``source`` (folder or one of its files) read again, for a SEG export."""
    from ..io import read_image

    if not source:
        raise InputError(
            "DICOM SEG export needs the labels' source DICOM series, and this layer does not name "
            "one (segment an image opened from a DICOM folder)"
        )
    p = Path(source)
    volume = read_image(p.parent if p.is_file() and p.suffix.lower() == ".dcm" else p)
    if tuple(volume.shape) != tuple(shape):
        raise InputError(f"labels of shape {shape} do not match the DICOM series {source} {volume.shape}")
    return volume


def write_segmentation(
    path: Path,
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str],
    colors: Mapping[int, tuple[int, int, int]],
    source: str | None,
    model: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """Write ``labels`` (z, y, x) as ``.seg.nrrd`` or DICOM SEG (``.dcm``), replacing ``path``."""
    from ..export import output_kind, write_result

    labels = labels if labels.ndim == 3 else labels[None]
    if output_kind(path) == "dicom_seg":
        volume = source_volume(source, labels.shape)
    else:
        volume = Volume(labels, geometry, {})
    return str(write_result(path, labels, volume, names, colors, model=model, overwrite=True, notes=notes))


def write_segmentation_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: a Labels layer -> ``.seg.nrrd`` or DICOM SEG ``.dcm``."""
    from ._geometry import METADATA_KEY
    from ._writer import labels_geometry, object_table

    arr = np.asarray(data)
    if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"labels layer of shape {arr.shape} and dtype {arr.dtype}: expected 2D/3D integers")
    names, colors = object_table(meta.get("metadata"))
    source = ((meta.get("metadata") or {}).get(METADATA_KEY) or {}).get("source")
    return [write_segmentation(Path(path), arr, labels_geometry(arr.shape, meta), names, colors, source)]
