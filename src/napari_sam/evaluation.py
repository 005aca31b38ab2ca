"""Measuring segmentations: Dice, the standard interactive protocol of
simulated clicks (NoC: number of clicks to reach a Dice target), and the
matching of instance label maps (F1, precision, recall and mean matched IoU
at an IoU threshold, as StarDist's and micro-sam's papers report them).

The protocol (as in the interactive-segmentation literature and micro-sam's
evaluation): the first click goes to the object's deepest interior point;
each later click to the centre of the largest error region, positive where
the object was missed, negative where the mask overshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .errors import InputError
from .geometry import box_of_mask, iou_matrix  # iou_matrix re-exported: benchmarks and tests use it
from .prompts import ObjectPrompts, PromptsFile, SlicePrompt


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape (1.0 when both are empty)."""
    s = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * float(np.count_nonzero(np.logical_and(a, b))) / s if s else 1.0


def deepest_point(region: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel of ``region`` farthest from its border."""
    dt = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int], int]:
    """The next simulated click: ((row, col), label) at the centre of the
    largest error region; label 1 for a missed part, 0 for an overshoot."""
    best = None
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        lab, n = ndimage.label(err)
        if n == 0:
            continue
        sizes = ndimage.sum(err, lab, range(1, n + 1))
        i = int(np.argmax(sizes))
        if best is None or sizes[i] > best[0]:
            best = (sizes[i], lab == i + 1, label)
    if best is None:
        return deepest_point(gt), 1
    return deepest_point(best[1]), best[2]


@dataclass
class ClickRun:
    """Dice after each click, and the clicks given."""

    dices: list[float]
    points: list[tuple[int, int]]
    labels: list[int]

    def clicks_to(self, target: float, cap: int) -> int:
        """Clicks needed to reach ``target`` Dice (``cap`` if never)."""
        for i, d in enumerate(self.dices):
            if d >= target:
                return i + 1
        return cap


def simulate_clicks(predictor, gt: np.ndarray, max_clicks: int = 10, stop_at: float | None = 0.85) -> ClickRun:
    """Run the click protocol on a predictor whose slice is already set.

    predictor: a :class:`napari_sam.predictor.SlicePredictor`; gt: (H, W) bool.
    Each click refines the previous mask (``previous=``), as a user would.
    """
    points = [deepest_point(gt)]
    labels = [1]
    dices: list[float] = []
    prev = None
    for k in range(max_clicks):
        mask = predictor.predict(points=points, labels=labels, previous=prev, multimask=False).mask
        dices.append(dice(mask, gt))
        if (stop_at is not None and dices[-1] >= stop_at) or k == max_clicks - 1:
            break
        pt, lab = next_click(gt, mask)
        points.append(pt)
        labels.append(lab)
        prev = mask
    return ClickRun(dices, points, labels)


# ---------------------------------------------------------------- instance label maps
@dataclass(frozen=True)
class InstanceScores:
    """Matching of predicted to reference instances at one IoU threshold.

    Label maps are integer arrays of any dimension with 0 as background;
    ids need not be contiguous.

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
        return (
            f"F1@{self.threshold:g} {self.f1:.3f}  precision {self.precision:.3f}  recall {self.recall:.3f}  "
            f"mean matched IoU {self.mean_matched_iou:.3f}  (TP {self.tp}, FP {self.fp}, FN {self.fn})"
        )


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
    return InstanceScores(
        threshold, tp, len(p_ids) - tp, len(r_ids) - tp, float(iou[rows, cols].mean()) if tp else 0.0, pairs
    )


def prompts_from_labels(
    labels: np.ndarray, kind: str = "box", ids: list[int] | None = None, propagate: bool = True
) -> PromptsFile:
    """A simulated user's prompts for a (z, y, x) instance label map: one
    prompt per object on the slice of its largest cross-section, its box
    there (``kind="box"``) or a click at the cross-section's deepest point
    (``"click"``); ``propagate`` through the volume. ids: the objects to
    prompt (default: every id present)."""
    if kind not in ("box", "click"):
        raise InputError(f"prompt kind {kind!r}: expected box or click")
    objs = ndimage.find_objects(labels)
    want = ids if ids is not None else [i for i, sl in enumerate(objs, start=1) if sl is not None]
    out = []
    for i in want:
        sl = objs[i - 1]
        sub = labels[sl] == i
        kz = int(np.argmax(sub.sum(axis=(1, 2))))
        plane = np.zeros(labels.shape[1:], bool)
        plane[sl[1:]] = sub[kz]
        z = sl[0].start + kz
        if kind == "box":
            prompt = SlicePrompt(box=box_of_mask(plane), slice=z)
        else:
            prompt = SlicePrompt(points=np.asarray([deepest_point(plane)], np.float32), labels=np.ones(1), slice=z)
        out.append(ObjectPrompts(id=int(i), name=f"object {i}", prompts=[prompt], propagate=propagate))
    return PromptsFile(objects=out)


def per_object_dice(pred: np.ndarray, ref: np.ndarray, ids: list[int] | None = None) -> list[float]:
    """Dice of ``pred == i`` against ``ref == i`` for each id of ``ref`` (or ``ids``):
    the score of prompted objects, whose ids the prediction keeps."""
    want = ids if ids is not None else [int(i) for i in np.unique(ref) if i != 0]
    return [dice(pred == i, ref == i) for i in want]
