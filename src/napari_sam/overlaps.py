"""Several objects in one label map: the one rule that resolves overlaps.

When several objects claim a voxel, :func:`resolve_overlaps` gives it to the
object most likely to own it, judged per voxel:

1. a voxel on one of an object's *key slices* (slices the user prompted,
   painted or corrected) goes to that object before any propagated claim:
   the user's own slices are never painted over by another object;
2. otherwise, the object whose mask holds the voxel deepest wins: depth is
   the distance (mm, physical spacing) from the voxel to the boundary of that
   object's 3D mask, the monotone stand-in for the object's probability there
   (the model's logits rise with the distance from its mask's edge; a sliver
   where two masks touch is each object's least certain part);
3. ties go to the object listed first.

The CLI and the API (:func:`napari_sam.segmentation.segment_volume`) paint
through this function, so the result does not depend on the order the
objects were computed in (only exact ties do). The napari widget does not
use it yet: it still writes a propagated slice into free voxels only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["ObjectMasks", "resolve_overlaps", "KEY_SLICE_PRIORITY"]

#: depth bonus (mm) that makes a key-slice claim beat any propagated one
KEY_SLICE_PRIORITY = 1.0e6


@dataclass
class ObjectMasks:
    """One object's masks before painting: ``masks`` slice -> (rows, cols) bool
    along ``axis``; ``key_slices``: the slices the user prompted."""

    id: int
    axis: int
    masks: dict[int, np.ndarray]
    key_slices: set[int]

    def volume(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The object as a (z, y, x) bool volume of ``shape``."""
        out = np.zeros(shape, bool)
        for z, m in self.masks.items():
            out[_plane(self.axis, z)] = m
        return out


def _plane(axis: int, index: int) -> tuple:
    sl: list = [slice(None)] * 3
    sl[axis] = index
    return tuple(sl)


def _depth(mask: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[tuple, np.ndarray]:
    """(bounding-box slices, depth in mm inside the box) of a non-empty (z, y, x) mask."""
    idx = np.nonzero(mask)
    sl = tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx)
    sub = np.pad(mask[sl], 1)
    d = ndimage.distance_transform_edt(sub, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return sl, d.astype(np.float32)


def resolve_overlaps(shape: tuple[int, int, int], objects: Sequence[ObjectMasks],
                     spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Paint ``objects`` into one (z, y, x) uint16 label map of ``shape``,
    resolving overlaps per voxel by the rule of this module (key slices first,
    then the deepest claim, in mm with ``spacing_zyx`` = (z, y, x); ties to the
    object listed first)."""
    labels = np.zeros(shape, np.uint16)
    best = np.full(shape, -1.0, np.float32)
    for obj in objects:
        vol = obj.volume(shape)
        if not vol.any():
            continue
        sl, depth = _depth(vol, spacing_zyx)
        for k in obj.key_slices:
            if k in obj.masks:
                plane = [slice(None)] * 3
                lo = sl[obj.axis]
                if lo.start <= k < lo.stop:
                    plane[obj.axis] = k - lo.start
                    depth[tuple(plane)] += KEY_SLICE_PRIORITY
        inside = vol[sl]
        win = inside & (depth > best[sl])
        labels[sl][win] = obj.id
        best[sl][win] = depth[win]
    return labels
