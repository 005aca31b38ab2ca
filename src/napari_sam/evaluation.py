"""Scoring instance label maps against a reference: matching by IoU, F1,
precision, recall and mean matched IoU (the figures used for automatic
segmentation of nuclei and cells, as in StarDist's and micro-sam's papers).

Label maps are integer arrays of any dimension with 0 as background; ids
need not be contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import InputError


@dataclass(frozen=True)
class InstanceScores:
    """Matching of predicted to reference instances at one IoU threshold.

    tp/fp/fn: counts; precision = tp / (tp + fp); recall = tp / (tp + fn);
    f1 = 2 tp / (2 tp + fp + fn); mean_matched_iou: mean IoU of the matched
    pairs (0 when none); pairs: (M, 3) rows (pred_id, ref_id, iou).
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float
    pairs: np.ndarray

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    def summary(self) -> str:
        return (f"F1@{self.threshold:g} {self.f1:.3f}  precision {self.precision:.3f}  recall {self.recall:.3f}  "
                f"mean matched IoU {self.mean_matched_iou:.3f}  (TP {self.tp}, FP {self.fp}, FN {self.fn})")


def iou_matrix(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted instance with every reference instance.

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


def match_instances(pred: np.ndarray, ref: np.ndarray, threshold: float = 0.5) -> InstanceScores:
    """One-to-one matching of instances maximising total IoU, pairs with IoU >= threshold.

    pred, ref: integer label maps of equal shape (0 = background).
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"IoU threshold {threshold}: expected 0 < t <= 1")
    p_ids, r_ids, iou = iou_matrix(pred, ref)
    if iou.size == 0:
        return InstanceScores(threshold, 0, len(p_ids), len(r_ids), 0.0, np.zeros((0, 3)))
    rows, cols = linear_sum_assignment(-np.where(iou >= threshold, iou, 0.0))
    keep = iou[rows, cols] >= threshold
    rows, cols = rows[keep], cols[keep]
    tp = int(keep.sum())
    pairs = np.stack([p_ids[rows], r_ids[cols], iou[rows, cols]], axis=1) if tp else np.zeros((0, 3))
    return InstanceScores(threshold, tp, len(p_ids) - tp, len(r_ids) - tp,
                          float(iou[rows, cols].mean()) if tp else 0.0, pairs)
