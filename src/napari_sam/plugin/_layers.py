"""The session's layers: created or picked up again, and kept in step with the annotation.

:class:`SessionLayers` adds (or reuses, after Stop + Start) the four layers
of a session: ``labels`` (the label map, one id per object), ``preview``
(the uncommitted mask), ``boxes`` and ``points`` (the prompts). It writes an
annotation's :class:`~napari_sam.annotation.ChangeSet` into the labels layer
and reads the label map back when the user paints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..annotation import ChangeSet
from ..errors import InputError
from . import _prompt_layers as pl
from ._geometry import layer_metadata
from ._image_source import ImageSource

__all__ = ["SessionLayers", "PREVIEW_COLOR"]

#: colour of the uncommitted preview (distinct from every object colour)
PREVIEW_COLOR = (0.0, 0.9, 1.0, 1.0)


class SessionLayers:
    """The labels, preview, boxes and points layers of one session on ``source``.

    labels_layer: an existing Labels layer to continue (same shape as the
    image), else one is added; source_path: the file the image came from
    (recorded in the labels layer's metadata).
    """

    def __init__(
        self, viewer: Any, source: ImageSource, labels_layer: Any = None, source_path: str | None = None
    ) -> None:
        from napari.layers import Labels, Points, Shapes

        self.viewer = viewer
        self.source = source
        name = source.layer.name
        if labels_layer is None:
            labels_layer = Labels(
                np.zeros(source.layer_shape, np.uint16),
                name=f"{name} labels",
                opacity=0.55,
                metadata=layer_metadata(source.geometry, source=source_path),
                **source.transform_kwargs(),
            )
            viewer.add_layer(labels_layer)
        elif tuple(labels_layer.data.shape) != source.layer_shape:
            raise InputError(
                f"labels layer {labels_layer.name!r} has shape {labels_layer.data.shape}, "
                f"the image {source.layer_shape}"
            )
        self.labels = labels_layer
        self.preview = self._preview_layer(Labels)
        boxes = self._reusable(f"{name} SAM boxes", Shapes)
        self.boxes = boxes or viewer.add_layer(pl.make_boxes_layer(source, f"{name} SAM boxes"))
        points = self._reusable(f"{name} SAM clicks", Points)
        if points is not None and "sign" not in points.features:
            points = None
        self.points = points or viewer.add_layer(pl.make_points_layer(source, f"{name} SAM clicks"))
        self._preview_plane: pl.SlicePosition | None = None

    def _preview_layer(self, labels_type: type) -> Any:
        from napari.utils.colormaps import DirectLabelColormap

        src = self.source
        name = f"{src.layer.name} SAM preview"
        preview = self._reusable(name, labels_type)
        if preview is None or tuple(preview.data.shape) != src.layer_shape:
            preview = self.viewer.add_layer(
                labels_type(np.zeros(src.layer_shape, np.uint8), name=name, opacity=0.5, **src.transform_kwargs())
            )
        preview.data[...] = 0
        preview.colormap = DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: (0, 0, 0, 0), 1: PREVIEW_COLOR})
        preview.editable = False
        preview.refresh()
        return preview

    def _reusable(self, name: str, kind: type) -> Any:
        """A layer left by an earlier session on this image (same name, type and dimensions)."""
        lay = self.viewer.layers[name] if name in self.viewer.layers else None
        return lay if isinstance(lay, kind) and lay.ndim == self.source.layer.ndim else None

    def all(self) -> tuple[Any, ...]:
        """The image layer and the session's layers."""
        return (self.source.layer, self.labels, self.preview, self.points, self.boxes)

    # ------------------------------------------------------------------ the label map
    def label_map(self) -> np.ndarray:
        """The labels layer's data as a (z, y, x) array (a 2D image is one slice)."""
        data = np.asarray(self.labels.data)
        return data[None] if self.source.is_2d else data

    def apply(self, changes: ChangeSet | None) -> None:
        """Write a change set's voxels into the labels layer."""
        if changes is None or changes.n_voxels == 0:
            return
        index = changes.index[1:] if self.source.is_2d else changes.index
        self.labels.data[index] = changes.values.astype(self.labels.data.dtype, copy=False)
        self.labels.refresh()

    def plane_index(self, pos: pl.SlicePosition) -> tuple:
        """The layer index of the plane at ``pos``."""
        if self.source.is_2d:
            return (slice(None), slice(None))
        idx: list[Any] = [slice(None)] * 3
        idx[pos.axis] = pos.index
        return tuple(idx)

    # ------------------------------------------------------------------ the preview
    def show_preview(self, pos: pl.SlicePosition, mask: np.ndarray) -> None:
        """Show ``mask`` ((rows, cols) bool) as the preview on the plane at ``pos``."""
        self.clear_preview(refresh=False)
        self.preview.data[self.plane_index(pos)] = mask.astype(np.uint8)
        self._preview_plane = pos
        self.preview.refresh()

    def clear_preview(self, refresh: bool = True) -> bool:
        """Remove the preview; True if one was shown."""
        if self._preview_plane is None:
            return False
        self.preview.data[self.plane_index(self._preview_plane)] = 0
        self._preview_plane = None
        if refresh:
            self.preview.refresh()
        return True
