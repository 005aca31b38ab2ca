"""Plane geometry shared by every layer: boxes and masks (a leaf module).

Coordinates are napari's: (row, col); boxes are ``(r0, c0, r1, c1)`` with both
ends inclusive, in pixels. One implementation of each measure lives here
(``iou_matrix`` compares two instance label maps of any dimension).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

__all__ = ["box_iou", "box_of_mask", "iou_matrix", "mask_iou"]


def box_of_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(r0, c0, r1, c1)`` bounding box of a 2D mask; ``None`` if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two inclusive ``(r0, c0, r1, c1)`` boxes (pixel counts)."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, r1 - r0 + 1) * max(0.0, c1 - c0 + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return float(inter / (area_a + area_b - inter))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def iou_matrix(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every instance of the label map ``pred`` with every instance of
    ``ref`` (integer maps of one shape, any dimension; 0 is background).

    Returns (pred_ids (P,), ref_ids (R,), iou (P, R) float64).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"label maps of shapes {pred.shape} and {ref.shape}: expected the same shape")
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    r_ids, r_inv = np.unique(ref.ravel(), return_inverse=True)
    counts = np.zeros((len(p_ids), len(r_ids)), np.int64)
    np.add.at(counts, (p_inv, r_inv), 1)
    p_area = counts.sum(1, keepdims=True)
    r_area = counts.sum(0, keepdims=True)
    union = p_area + r_area - counts
    iou = np.where(union > 0, counts / np.maximum(union, 1), 0.0)
    pk, rk = p_ids != 0, r_ids != 0
    return p_ids[pk], r_ids[rk], iou[np.ix_(pk, rk)]
