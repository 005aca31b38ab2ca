"""Plane geometry shared by every layer: boxes, masks and crops (a leaf module).

Coordinates are napari's: (row, col); boxes are ``(r0, c0, r1, c1)`` with both
ends inclusive, in pixels; a :class:`Crop` is a rectangle (top, left, height,
width) of a slice. One implementation of each lives here: the zoom path's
crops, propagation's region of interest and the tiles of large images are all
:class:`Crop` objects; ``iou_matrix`` compares two instance label maps of any
dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["Crop", "box_iou", "box_of_mask", "iou_matrix", "mask_iou"]


@dataclass(frozen=True)
class Crop:
    """A rectangle of a slice: rows ``top .. top + height - 1``, columns
    ``left .. left + width - 1`` (pixels)."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def whole(cls, slice_shape: tuple[int, int]) -> Crop:
        """The crop that is the whole (H, W) slice."""
        return cls(0, 0, int(slice_shape[0]), int(slice_shape[1]))

    @classmethod
    def from_box(cls, box: Sequence[int]) -> Crop:
        """The crop covering an inclusive ``(r0, c0, r1, c1)`` box of whole pixels."""
        r0, c0, r1, c1 = (int(v) for v in box)
        return cls(r0, c0, r1 - r0 + 1, c1 - c0 + 1)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The inclusive ``(r0, c0, r1, c1)`` box of the crop's pixels."""
        return self.top, self.left, self.top + self.height - 1, self.left + self.width - 1

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index a (H, W[, C]) slice with this to get the crop."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def offset(self) -> np.ndarray:
        """(row, col) of the crop's first pixel in the slice, float32."""
        return np.array([self.top, self.left], np.float32)

    def is_whole(self, slice_shape: tuple[int, int]) -> bool:
        """Whether the crop is the whole (H, W) slice."""
        return self.top == 0 and self.left == 0 and self.shape == tuple(slice_shape)

    def contains_box(self, box: tuple[float, float, float, float] | np.ndarray) -> bool:
        r0, c0, r1, c1 = box
        return (
            self.top <= r0 and r1 <= self.top + self.height - 1 and self.left <= c0 and c1 <= self.left + self.width - 1
        )

    def box_to_crop(self, box: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) in slice pixels -> crop pixels."""
        return np.asarray(box, np.float32) - np.tile(self.offset, 2)

    def box_from_crop(self, box: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) in crop pixels -> slice pixels."""
        return np.asarray(box, np.float32) + np.tile(self.offset, 2)

    def points_to_crop(self, points_rc: np.ndarray) -> np.ndarray:
        """Points (..., 2) (row, col) in slice pixels -> crop pixels."""
        return np.asarray(points_rc, np.float32) - self.offset

    def paste(self, crop_array: np.ndarray, slice_shape: tuple[int, int], fill=0) -> np.ndarray:
        """A (..., height, width) array on the crop -> (..., H, W) on the slice, ``fill`` outside."""
        crop_array = np.asarray(crop_array)
        out = np.full(crop_array.shape[:-2] + tuple(slice_shape), fill, dtype=crop_array.dtype)
        out[(..., *self.slices)] = crop_array
        return out

    def touches_inner_border(self, mask: np.ndarray, slice_shape: tuple[int, int]) -> bool:
        """Whether a (height, width) mask on the crop reaches a crop edge that is
        not also the slice's edge (the object may continue outside the crop)."""
        H, W = slice_shape
        if self.top > 0 and mask[0].any():
            return True
        if self.left > 0 and mask[:, 0].any():
            return True
        if self.top + self.height < H and mask[-1].any():
            return True
        return bool(self.left + self.width < W and mask[:, -1].any())

    def key(self) -> str:
        return f"{self.top},{self.left},{self.height},{self.width}"


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
