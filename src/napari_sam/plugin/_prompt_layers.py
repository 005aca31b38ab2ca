"""Layers <-> prompts: the Points layer of +/- clicks, the Shapes layer of
boxes, and where the viewer's current slice is.

The prompt layers are created with the image layer's transforms, so their
data coordinates are the image's voxel indices; every coordinate is still
passed through world space (``data_to_world`` then the image's
``world_to_data``) so that prompts stay right if a user changes a layer's
transform. Slice coordinates come out as (row, col) of the plane that the
viewer shows, i.e. the image's axes other than the slicing axis, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..prompts import SlicePrompt
from ._image_source import ImageSource

#: point colours by sign (clear at a glance on gray CT and on stained tissue)
POSITIVE_COLOR = "#33ff66"
NEGATIVE_COLOR = "#ff3355"
BOX_COLOR = "#ffd21f"


@dataclass(frozen=True)
class SlicePosition:
    """The plane the viewer shows: ``axis`` of the (z, y, x) volume and ``index`` along it."""

    axis: int
    index: int


def current_position(viewer: Any, source: ImageSource) -> SlicePosition:
    """Which slice of ``source`` the viewer shows. Raises InputError in 3D view
    (prompts are drawn on 2D slices)."""
    if source.is_2d:
        return SlicePosition(0, 0)
    if viewer.dims.ndisplay != 2:
        raise InputError("the viewer is in 3D display; switch to 2D (Ctrl+Y) to give prompts on a slice")
    layer = source.layer
    offset = viewer.dims.ndim - layer.ndim
    displayed_world = set(viewer.dims.displayed)
    hidden = [d for d in range(layer.ndim) if d + offset not in displayed_world]
    if len(hidden) != 1:
        raise InputError(f"cannot tell which slice of {layer.name!r} is shown (hidden axes {hidden})")
    axis = hidden[0]
    point = np.asarray(viewer.dims.point, dtype=float)
    data = np.asarray(layer.world_to_data(point[-layer.ndim :]), dtype=float)
    index = int(np.clip(np.round(data[axis]), 0, source.shape[axis] - 1))
    return SlicePosition(axis, index)


def plane_shape(source: ImageSource, axis: int) -> tuple[int, int]:
    """(rows, cols) of a slice taken along ``axis``."""
    return tuple(s for i, s in enumerate(source.shape) if i != axis)  # type: ignore[return-value]


def _to_image_data(layer: Any, source: ImageSource, coords: np.ndarray) -> np.ndarray:
    """(N, ndim) data coordinates of ``layer`` -> (N, 3) (z, y, x) voxel coordinates of the image."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    img = source.layer
    if (
        layer.ndim == img.ndim
        and np.allclose(layer.scale, img.scale)
        and np.allclose(layer.translate, img.translate)
        and np.allclose(layer.affine.affine_matrix, img.affine.affine_matrix)
        and np.allclose(layer.rotate, img.rotate)
        and np.allclose(layer.shear, img.shear)
    ):
        out = coords
    else:
        out = np.array([img.world_to_data(layer.data_to_world(c)) for c in coords]).reshape(-1, img.ndim)
    if source.is_2d:
        out = np.concatenate([np.zeros((len(out), 1)), out], axis=1)
    return out


def _on_plane(zyx: np.ndarray, pos: SlicePosition) -> np.ndarray:
    return np.abs(zyx[:, pos.axis] - pos.index) < 0.5


def _plane_rc(zyx: np.ndarray, axis: int) -> np.ndarray:
    return np.delete(zyx, axis, axis=1)


def make_points_layer(source: ImageSource, name: str = "SAM clicks") -> Any:
    """An empty Points layer for +/- clicks, coloured by the ``sign`` feature."""
    from napari.layers import Points

    ndim = source.layer.ndim
    features = pd.DataFrame({"sign": pd.Categorical([], categories=["positive", "negative"])})
    layer = Points(
        np.zeros((0, ndim)),
        ndim=ndim,
        name=name,
        features=features,
        face_color="sign",
        face_color_cycle={"positive": POSITIVE_COLOR, "negative": NEGATIVE_COLOR},
        border_color="white",
        border_width=0.12,
        size=_marker_size(source),
        **source.transform_kwargs(),
    )
    layer.feature_defaults = {"sign": "positive"}
    layer.mode = "add"
    return layer


def make_boxes_layer(source: ImageSource, name: str = "SAM boxes") -> Any:
    """An empty Shapes layer for boxes (rectangle mode)."""
    from napari.layers import Shapes

    layer = Shapes(
        ndim=source.layer.ndim,
        name=name,
        edge_color=BOX_COLOR,
        face_color="transparent",
        edge_width=max(1.0, _marker_size(source) / 6),
        **source.transform_kwargs(),
    )
    layer.current_edge_color = BOX_COLOR
    layer.current_face_color = "transparent"
    layer.mode = "add_rectangle"
    return layer


def sync_mode(layer: Any) -> None:
    """Make the layer controls show the layer's real tool: a mode set before the layer
    was added to the viewer is not shown by its controls (they highlight pan/zoom)."""
    mode = str(layer.mode)
    layer.mode = "pan_zoom"
    layer.mode = mode


def _marker_size(source: ImageSource) -> float:
    return float(max(6.0, min(source.shape[1:]) / 45.0))


def set_negative(points: Any, negative: bool) -> None:
    """New clicks are negative (True) or positive (False)."""
    points.feature_defaults = {"sign": "negative" if negative else "positive"}


def is_negative(points: Any) -> bool:
    return str(points.feature_defaults["sign"].iloc[0]) == "negative"


def slice_prompt(points: Any, boxes: Any, source: ImageSource, pos: SlicePosition) -> SlicePrompt | None:
    """The prompt drawn on slice ``pos``: its clicks and the newest box there.

    Coordinates are clipped to the slice; None when the slice holds no prompt.
    """
    h, w = plane_shape(source, pos.axis)
    pts = np.zeros((0, 2), np.float32)
    labels = np.zeros((0,), np.int64)
    if points is not None and len(points.data):
        zyx = _to_image_data(points, source, points.data)
        on = _on_plane(zyx, pos)
        rc = _plane_rc(zyx[on], pos.axis)
        inside = (rc[:, 0] >= -0.5) & (rc[:, 0] <= h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] <= w - 0.5)
        signs = np.asarray(points.features["sign"].astype(str))[on][inside]
        pts = np.clip(rc[inside], 0, [h - 1, w - 1]).astype(np.float32)
        labels = (signs == "positive").astype(np.int64)
    box = None
    idx = box_indices_on_slice(boxes, source, pos)
    if idx:
        zyx = _to_image_data(boxes, source, boxes.data[idx[-1]])
        rc = _plane_rc(zyx, pos.axis)
        r0, c0 = np.clip(np.floor(rc.min(axis=0) + 0.5), 0, [h - 1, w - 1])
        r1, c1 = np.clip(np.floor(rc.max(axis=0) + 0.5), 0, [h - 1, w - 1])
        if r1 > r0 and c1 > c0:
            box = (float(r0), float(c0), float(r1), float(c1))
    if box is None and len(pts) == 0:
        return None
    return SlicePrompt(points=pts, labels=labels, box=box, slice=None if source.is_2d else pos.index)


def box_indices_on_slice(boxes: Any, source: ImageSource, pos: SlicePosition) -> list[int]:
    """Indices of the shapes lying on slice ``pos``, oldest first."""
    if boxes is None or not len(boxes.data):
        return []
    out = []
    for i, verts in enumerate(boxes.data):
        zyx = _to_image_data(boxes, source, verts)
        if np.all(_on_plane(zyx, pos)):
            out.append(i)
    return out


def point_indices_on_slice(points: Any, source: ImageSource, pos: SlicePosition) -> list[int]:
    if points is None or not len(points.data):
        return []
    zyx = _to_image_data(points, source, points.data)
    return [int(i) for i in np.flatnonzero(_on_plane(zyx, pos))]


def clear_slice(points: Any, boxes: Any, source: ImageSource, pos: SlicePosition) -> None:
    """Remove every click and box on slice ``pos``."""
    idx = point_indices_on_slice(points, source, pos)
    if idx:
        points.selected_data = set(idx)
        points.remove_selected()
    idx = box_indices_on_slice(boxes, source, pos)
    if idx:
        boxes.selected_data = set(idx)
        boxes.remove_selected()


#: a box smaller than this (voxels, both sides) is a stray click of the rectangle tool
MIN_BOX_SIDE = 3.0


def is_stray_box(boxes: Any) -> bool:
    """True when the newest shape of ``boxes`` is under :data:`MIN_BOX_SIDE` on both sides."""
    if boxes is None or not len(boxes.data):
        return False
    verts = np.asarray(boxes.data[-1], float)[:, -2:]
    extent = verts.max(axis=0) - verts.min(axis=0)
    return bool(np.all(extent < MIN_BOX_SIDE))


def drop_last(layer: Any) -> None:
    """Remove the newest point / shape of a Points or Shapes layer."""
    if layer is not None and len(layer.data):
        layer.selected_data = {len(layer.data) - 1}
        layer.remove_selected()


def keep_newest_box(boxes: Any, source: ImageSource, pos: SlicePosition) -> bool:
    """One box per slice: drop older boxes on slice ``pos``. Returns True if any was dropped."""
    idx = box_indices_on_slice(boxes, source, pos)
    if len(idx) > 1:
        boxes.selected_data = set(idx[:-1])
        boxes.remove_selected()
        return True
    return False
