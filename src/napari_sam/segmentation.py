"""Segment a volume from a prompts file: the job behind ``napari-sam segment``.

Each object's prompted slices are segmented with the :class:`SlicePredictor`
and written into one label map on the image's grid. Overlaps: objects are
painted in the order of the prompts file and a voxel already claimed by an
earlier object keeps it (first listed wins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .cache import SliceEmbeddings, slice_along
from .intensity import Window, resolve_window
from .io import Volume
from .models.base import Backend
from .predictor import SlicePredictor
from .prompts import ObjectPrompts, PromptsFile, SlicePrompt

#: progress callback: (done, total, message)
Progress = Callable[[int, int, str], None]


@dataclass
class SegmentationResult:
    """labels: (z, y, x) uint16 on the image grid; names/colors per id;
    slices: id -> list of slice indices segmented; windows: id -> Window used."""

    labels: np.ndarray
    names: dict[int, str]
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    slices: dict[int, list[int]] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)


def merge_slice_prompts(prompts: list[SlicePrompt]) -> dict[int, SlicePrompt]:
    """Group an object's prompts by slice; prompts on the same slice are merged
    (all clicks together, the last box given)."""
    by_slice: dict[int, SlicePrompt] = {}
    for p in prompts:
        z = 0 if p.slice is None else p.slice
        if z in by_slice:
            old = by_slice[z]
            by_slice[z] = SlicePrompt(points=np.concatenate([old.points, p.points]),
                                      labels=np.concatenate([old.labels, p.labels]),
                                      box=p.box if p.box is not None else old.box, slice=z)
        else:
            by_slice[z] = SlicePrompt(points=p.points, labels=p.labels, box=p.box, slice=z)
    return by_slice


def object_window(volume: Volume, obj: ObjectPrompts, file_window=None, override=None) -> Window:
    """The window for one object: --window, else the object's, else the file's, else automatic."""
    spec = override if override is not None else (obj.window if obj.window is not None else file_window)
    return resolve_window(volume.array, spec, volume.metadata.get("modality"), volume.metadata.get("dicom_window"))


def segment_volume(volume: Volume, prompts: PromptsFile, backend: Backend, window=None,
                   progress: Progress | None = None,
                   embeddings_for: Callable[[Window, int], SliceEmbeddings] | None = None) -> SegmentationResult:
    """Segment every prompted slice of every object.

    window: overrides every object's window (CLI ``--window``).
    embeddings_for: (window, axis) -> SliceEmbeddings, to share or cache
        embeddings; by default a fresh in-memory one per window and axis.
    """
    prompts.check_against(volume.array.shape, volume.is_2d)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    result = SegmentationResult(labels=labels, names={o.id: o.name for o in prompts.objects},
                                colors={o.id: o.color for o in prompts.objects if o.color})
    stores: dict[tuple[str, int], SliceEmbeddings] = {}

    def store(win: Window, axis: int) -> SliceEmbeddings:
        key = (win.key(), axis)
        if key not in stores:
            stores[key] = embeddings_for(win, axis) if embeddings_for else SliceEmbeddings(
                backend, volume.array, win, axis)
        return stores[key]

    plan = [(o, z, p) for o in prompts.objects for z, p in sorted(merge_slice_prompts(o.prompts).items())]
    predictor = SlicePredictor(backend)
    for step, (obj, z, prompt) in enumerate(plan):
        win = object_window(volume, obj, prompts.window, window)
        result.windows[obj.id] = win
        if progress:
            progress(step, len(plan), f"{obj.name}: slice {z}")
        predictor.set_embedding(store(win, obj.axis).get(z))
        mask = predictor.predict(prompt=prompt, multimask=False).mask
        target = slice_along(labels, obj.axis, z)  # a view: painting writes into labels
        target[mask & (target == 0)] = obj.id
        result.slices.setdefault(obj.id, []).append(z)
    if progress:
        progress(len(plan), len(plan), "done")
    return result
