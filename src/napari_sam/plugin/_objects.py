"""The objects being segmented: id, name, colour and propagation state.

Each object is one label id in the Labels layer (semantic labels: "liver" is
id 1 everywhere). The table is kept in the Labels layer's
``metadata["napari_sam"]["objects"]`` so that the writer puts the names and
colours in the sidecar.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..io import default_color
from ._geometry import METADATA_KEY


@dataclass
class SegmentedObject:
    """One object: label ``id`` (1..65535), ``name``, ``color`` (r, g, b 0..255) and
    its :class:`napari_sam.propagation.PropagationState` (None until the first
    key slice is committed on a 3D image)."""

    id: int
    name: str
    color: tuple[int, int, int]
    state: Any = None


def snapshot_state(state: Any) -> Any:
    """A copy of a PropagationState whose containers can change independently
    (masks are shared: the core replaces them, never edits them in place)."""
    if state is None:
        return None
    snap = copy.copy(state)
    for name in ("prompts", "user_masks", "results", "info"):
        setattr(snap, name, dict(getattr(state, name)))
    snap.stops = list(state.stops)
    snap.dirty = set(state.dirty)
    snap.dirty_keys = set(state.dirty_keys)
    return snap


@dataclass
class ObjectTable:
    """The objects of one segmentation, and which one is current."""

    objects: list[SegmentedObject] = field(default_factory=list)
    current_id: int | None = None

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self):
        return iter(self.objects)

    def get(self, object_id: int) -> SegmentedObject:
        for o in self.objects:
            if o.id == object_id:
                return o
        raise KeyError(f"no object with id {object_id}")

    @property
    def current(self) -> SegmentedObject | None:
        if self.current_id is None:
            return None
        try:
            return self.get(self.current_id)
        except KeyError:
            return None

    def next_id(self) -> int:
        return max((o.id for o in self.objects), default=0) + 1

    def add(self, name: str | None = None, object_id: int | None = None,
            color: tuple[int, int, int] | None = None) -> SegmentedObject:
        oid = self.next_id() if object_id is None else int(object_id)
        if any(o.id == oid for o in self.objects):
            raise ValueError(f"object id {oid} exists")
        if not 1 <= oid <= 65535:
            raise ValueError(f"object id {oid}: must be in 1..65535")
        obj = SegmentedObject(oid, (name or "").strip() or f"object {oid}", color or default_color(oid))
        self.objects.append(obj)
        self.current_id = oid
        return obj

    def rename(self, object_id: int, name: str) -> None:
        name = name.strip()
        if name:
            self.get(object_id).name = name

    def remove(self, object_id: int) -> SegmentedObject:
        obj = self.get(object_id)
        self.objects.remove(obj)
        if self.current_id == object_id:
            self.current_id = self.objects[-1].id if self.objects else None
        return obj

    def snapshot(self) -> ObjectTable:
        return ObjectTable([SegmentedObject(o.id, o.name, o.color, snapshot_state(o.state)) for o in self.objects],
                           self.current_id)

    def metadata(self) -> dict[str, dict[str, Any]]:
        """``{"1": {"name": ..., "color": [r, g, b]}}`` for the layer metadata / sidecar."""
        return {str(o.id): {"name": o.name, "color": list(o.color)} for o in self.objects}

    def colormap(self) -> Any:
        """A napari DirectLabelColormap with each object's colour (others: default colours)."""
        from napari.utils.colormaps import DirectLabelColormap

        colors: dict[Any, tuple[float, ...]] = {None: (0.6, 0.6, 0.6, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
        for o in self.objects:
            colors[o.id] = tuple(c / 255.0 for c in o.color) + (1.0,)
        return DirectLabelColormap(color_dict=colors)

    def store_in(self, labels_layer: Any) -> None:
        """Write the table into the Labels layer's metadata and colormap."""
        meta = dict(labels_layer.metadata)
        entry = dict(meta.get(METADATA_KEY) or {})
        entry["objects"] = self.metadata()
        meta[METADATA_KEY] = entry
        labels_layer.metadata = meta
        labels_layer.colormap = self.colormap()
        from ._layer_setup import object_features

        labels_layer.features = object_features({o.id: o.name for o in self.objects})  # hover shows names
        if self.current_id is not None:
            labels_layer.selected_label = self.current_id
