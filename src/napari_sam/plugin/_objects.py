"""The annotation's objects as the widget shows them, and their table in the Labels layer.

Each object is one label id in the Labels layer (semantic labels: "liver" is
id 1 everywhere). The objects live in the core's
:class:`napari_sam.annotation.Annotation`; :class:`ObjectsView` reads them
and keeps the table in the Labels layer's ``metadata["napari_sam"]["objects"]``
(so that the writer puts the names and colours in the sidecar), its colormap
and its features (hovering a label shows its name).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..annotation import AnnotatedObject, Annotation
from ._geometry import METADATA_KEY

__all__ = ["ObjectsView"]


class ObjectsView:
    """Read-only view of an annotation's objects, in order, and which one is current."""

    def __init__(self, model: Annotation) -> None:
        self.model = model

    def __len__(self) -> int:
        return len(self.model)

    def __iter__(self) -> Iterator[AnnotatedObject]:
        return iter(self.model.objects)

    def get(self, object_id: int) -> AnnotatedObject:
        """Object ``object_id``; KeyError when there is none."""
        return self.model.object(object_id)

    @property
    def current(self) -> AnnotatedObject | None:
        return self.model.current

    @property
    def current_id(self) -> int | None:
        return self.model.current_id

    def metadata(self) -> dict[str, dict[str, Any]]:
        """``{"1": {"name": ..., "color": [r, g, b]}}`` for the layer metadata / sidecar."""
        return {str(o.id): {"name": o.name, "color": list(o.color)} for o in self}

    def colormap(self) -> Any:
        """A napari DirectLabelColormap with each object's colour (others: grey)."""
        from napari.utils.colormaps import DirectLabelColormap

        colors: dict[Any, tuple[float, ...]] = {None: (0.6, 0.6, 0.6, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
        for o in self:
            colors[o.id] = tuple(c / 255.0 for c in o.color) + (1.0,)
        return DirectLabelColormap(color_dict=colors)

    def store_in(self, labels_layer: Any) -> None:
        """Write the table into the Labels layer's metadata, colormap and features."""
        from ._layer_setup import object_features

        meta = dict(labels_layer.metadata)
        entry = dict(meta.get(METADATA_KEY) or {})
        entry["objects"] = self.metadata()
        meta[METADATA_KEY] = entry
        labels_layer.metadata = meta
        labels_layer.colormap = self.colormap()
        labels_layer.features = object_features({o.id: o.name for o in self})  # hover shows names
        if self.current_id is not None:
            labels_layer.selected_label = self.current_id
