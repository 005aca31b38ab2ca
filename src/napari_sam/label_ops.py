"""Renumbering instance label maps: the one implementation the automatic
modes and the synthetic data generator share (a leaf: numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["relabel_sequential", "drop_small"]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Number the ids present in ``labels`` (any shape, integer, 0 =
    background) 1..N in increasing order of the old id; returns int32."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def drop_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Remove objects of fewer than ``min_voxels`` voxels from a non-negative
    integer label map and number the rest 1..N (in order of the old id);
    returns int32."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    lut = np.zeros(len(sizes), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
