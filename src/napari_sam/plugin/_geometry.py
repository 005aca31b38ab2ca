"""Physical geometry <-> napari layer transforms.

A :class:`napari_sam.io.Geometry` is ITK's convention: spacing, origin and
direction in (x, y, z) physical order (mm, LPS). napari layers index data in
(z, y, x) and place it in the world by ``affine @ (scale * index + translate)``.

The mapping chosen here makes napari's world coordinates the physical LPS
position in (z, y, x) order, for grids whose direction is diagonal (each array
axis along a physical axis, possibly flipped, which covers the axial series of
CT/MR scanners and files stored with a flipped axis). Then two volumes of the
same patient on different grids (for instance an image and labels stored
y-flipped) overlay correctly. Oblique or axis-permuted grids are shown in
index space scaled by the spacing (their physical geometry still travels in
the layer's metadata and is what the writer uses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..io import Geometry

#: key of our entry in a layer's ``metadata``
METADATA_KEY = "napari_sam"


def direction_zyx(geometry: Geometry) -> np.ndarray:
    """3x3 direction matrix with rows/columns in (z, y, x) order."""
    return geometry.direction_matrix[::-1, ::-1].copy()


def layer_transform(geometry: Geometry, ndim: int = 3) -> dict[str, Any]:
    """napari layer keyword arguments (scale, translate, affine) for ``geometry``.

    ndim: 3 for a volume, 2 for a single slice (the z entries are dropped).
    """
    scale = np.asarray(geometry.scale_zyx, dtype=float)
    origin = np.asarray(geometry.origin, dtype=float)[::-1]
    d = direction_zyx(geometry)
    kwargs: dict[str, Any] = {}
    if np.allclose(d, np.diag(np.diag(d))) and np.allclose(np.abs(np.diag(d)), 1.0):
        translate = d.T @ origin
        affine = np.eye(4)
        affine[:3, :3] = d
        kwargs["scale"] = scale
        kwargs["translate"] = translate
        if not np.allclose(d, np.eye(3)):
            kwargs["affine"] = affine
    else:
        kwargs["scale"] = scale
        kwargs["translate"] = np.zeros(3)
    if ndim == 2:
        kwargs = {k: (v[1:] if k != "affine" else _drop_z(v)) for k, v in kwargs.items()}
    return kwargs


def _drop_z(affine: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2, :2] = affine[1:3, 1:3]
    out[:2, 2] = affine[1:3, 3]
    return out


def geometry_from_transform(scale: Any, translate: Any = None, affine: Any = None) -> Geometry:
    """The physical geometry napari places a (z, y, x) or (y, x) layer in.

    Inverse of :func:`layer_transform` for diagonal directions; for a general
    affine the linear part's column norms multiply the spacing and its
    normalised columns become the direction.
    """
    scale = np.asarray(scale, dtype=float)
    ndim = scale.size
    if ndim not in (2, 3):
        raise ValueError(f"layer with {ndim} dimensions: expected 2 or 3")
    translate = np.zeros(ndim) if translate is None else np.asarray(translate, dtype=float)
    a = np.eye(ndim + 1) if affine is None else np.asarray(affine, dtype=float)
    if a.shape != (ndim + 1, ndim + 1):
        a = np.eye(ndim + 1)
    if ndim == 2:
        scale = np.r_[1.0, scale]
        translate = np.r_[0.0, translate]
        a3 = np.eye(4)
        a3[1:3, 1:3] = a[:2, :2]
        a3[1:3, 3] = a[:2, 2]
        a = a3
    lin, off = a[:3, :3], a[:3, 3]
    norms = np.linalg.norm(lin, axis=0)
    norms[norms == 0] = 1.0
    d_zyx = lin / norms[None, :]
    spacing_zyx = scale * norms
    origin_zyx = lin @ translate + off
    d_xyz = d_zyx[::-1, ::-1]
    return Geometry(
        tuple(float(v) for v in spacing_zyx[::-1]),
        tuple(float(v) for v in origin_zyx[::-1]),
        tuple(float(v) for v in d_xyz.reshape(-1)),
    )


def geometry_from_metadata(metadata: Mapping[str, Any] | None) -> Geometry | None:
    """The geometry our reader or widget stored in a layer's metadata, if any."""
    entry = (metadata or {}).get(METADATA_KEY)
    if isinstance(entry, Mapping) and isinstance(entry.get("geometry"), Mapping):
        try:
            return Geometry.from_json(entry["geometry"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def layer_metadata(geometry: Geometry, **extra: Any) -> dict[str, Any]:
    """``{"napari_sam": {"geometry": ..., **extra}}`` for a layer's metadata."""
    return {METADATA_KEY: {"geometry": geometry.to_json(), **extra}}
