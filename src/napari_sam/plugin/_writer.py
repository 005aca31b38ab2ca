"""Writer contribution: a Labels layer -> ``.nii`` / ``.nii.gz`` in the source geometry.

The geometry comes from the layer's ``metadata["napari_sam"]["geometry"]``
when the layer was made by our reader or widget (exact: origin, spacing and
direction of the source image), otherwise from the layer's scale, translate
and affine. The object names and colours (``metadata["napari_sam"]["objects"]``,
kept by the widget) go into the JSON sidecar ``OUT.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import Geometry, write_labels
from ._geometry import METADATA_KEY, geometry_from_metadata, geometry_from_transform


def labels_geometry(data_shape: tuple[int, ...], meta: Mapping[str, Any]) -> Geometry:
    """The physical geometry of a labels layer given its napari ``meta`` dict
    (``layer._get_state()``-like: ``metadata``, ``scale``, ``translate``, ``affine``)."""
    geom = geometry_from_metadata(meta.get("metadata"))
    if geom is not None:
        return geom
    ndim = len(data_shape)
    scale = meta.get("scale") if meta.get("scale") is not None else np.ones(ndim)
    affine = meta.get("affine")
    if affine is not None and hasattr(affine, "affine_matrix"):
        affine = affine.affine_matrix
    return geometry_from_transform(scale, meta.get("translate"), affine)


def object_table(metadata: Mapping[str, Any] | None) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    """(names, colours) by label id from ``metadata["napari_sam"]["objects"]``."""
    entry = (metadata or {}).get(METADATA_KEY) or {}
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int]] = {}
    for key, obj in (entry.get("objects") or {}).items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            continue
        if isinstance(obj, Mapping):
            if obj.get("name"):
                names[i] = str(obj["name"])
            if obj.get("color") is not None:
                colors[i] = tuple(int(c) for c in list(obj["color"])[:3])  # type: ignore[assignment]
    return names, colors


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: save ``data`` (a Labels layer's array) to ``path``.

    path: ``.nii`` or ``.nii.gz``; data: (z, y, x) or (y, x) integer array.
    Returns the paths written (the image and its ``.json`` sidecar).
    """
    p = Path(path)
    if not (p.name.lower().endswith(".nii") or p.name.lower().endswith(".nii.gz")):
        raise InputError(f"{p}: napari-sam saves labels as .nii or .nii.gz")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise InputError(f"labels layer with {arr.ndim} dimensions (shape {arr.shape}): expected 2D or 3D")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"labels layer of dtype {arr.dtype}: expected integers")
    geom = labels_geometry(arr.shape, meta)
    names, colors = object_table(meta.get("metadata"))
    source = ((meta.get("metadata") or {}).get(METADATA_KEY) or {}).get("path")
    out = write_labels(
        p,
        arr if arr.ndim == 3 else arr[None],
        geom,
        names=names,
        colors=colors,
        overwrite=True,
        inputs=(source,) if source else (),
    )
    from ..io import sidecar_path

    return [str(out), str(sidecar_path(out))]
