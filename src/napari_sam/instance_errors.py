"""Merge and split counts of an instance segmentation against a reference.

Label maps are integer arrays of any dimension (2D or (z, row, col)), 0 =
background. A *merge* is a predicted object that holds at least half of
each of two or more reference objects (touching nuclei given one id); a
*split* is a reference object of which two or more predicted objects each
hold at least ``min_part`` (a nucleus fragmented, e.g. across slices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class MergeSplit:
    """merges: predicted objects covering >= 2 reference objects (each at
    least half); merged_refs: reference objects inside those; splits:
    reference objects cut into >= 2 predicted parts; split_parts: the parts."""

    merges: int
    merged_refs: int
    splits: int
    split_parts: int


def _contingency(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    r_ids, r_inv = np.unique(ref.ravel(), return_inverse=True)
    counts = np.zeros((len(p_ids), len(r_ids)), np.int64)
    np.add.at(counts, (p_inv, r_inv), 1)
    return p_ids, r_ids, counts


def merge_split_counts(pred: np.ndarray, ref: np.ndarray, min_part: float = 0.2) -> MergeSplit:
    """Count merges and splits of ``pred`` against ``ref`` (same shape)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"label maps of shapes {pred.shape} and {ref.shape}: expected the same shape")
    p_ids, r_ids, c = _contingency(pred, ref)
    c = c[np.ix_(p_ids != 0, r_ids != 0)]
    if c.size == 0:
        return MergeSplit(0, 0, 0, 0)
    r_area = np.bincount(np.unique(ref.ravel(), return_inverse=True)[1])[r_ids != 0]
    holds_half = c >= 0.5 * r_area[None, :]  # pred p holds half of ref r
    per_pred = holds_half.sum(axis=1)
    part = c >= min_part * r_area[None, :]  # pred p is a sizeable part of ref r
    per_ref = part.sum(axis=0)
    return MergeSplit(
        merges=int((per_pred >= 2).sum()),
        merged_refs=int(per_pred[per_pred >= 2].sum()),
        splits=int((per_ref >= 2).sum()),
        split_parts=int(per_ref[per_ref >= 2].sum()),
    )
