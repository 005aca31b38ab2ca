"""A label map with its geometry and per-label names and colours: what the
DICOM SEG and Slicer exports carry (they write through
:func:`napari_sam.outputs.write_outputs`).

A :class:`LabelSet` is what those formats carry in and out: a (z, y, x)
integer label map, its :class:`~napari_sam.io.Geometry` (ITK convention,
mm, LPS), and for each label id its name and (r, g, b) 0..255 colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import Geometry, default_color


@dataclass
class LabelSet:
    """labels: (z, y, x) integer array (0 = background); geometry: its grid;
    names / colors: id -> name / (r, g, b) 0..255 for every id present;
    metadata: format-specific extras (e.g. ``study_uid``, ``series_uid``,
    ``referenced_sop_uids`` of a DICOM SEG)."""

    labels: np.ndarray
    geometry: Geometry
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> list[int]:
        """Sorted ids present in the label map or named."""
        present = {int(i) for i in np.unique(self.labels) if i != 0}
        return sorted(present | set(self.names))

    def name(self, label_id: int) -> str:
        return self.names.get(label_id) or f"object_{label_id}"

    def color(self, label_id: int) -> tuple[int, int, int]:
        c = self.colors.get(label_id)
        if c is None:
            return default_color(label_id)
        return tuple(int(v) for v in c[:3])  # type: ignore[return-value]
