"""Measuring segmentations: Dice, and the standard interactive protocol of
simulated clicks (NoC: number of clicks to reach a Dice target).

The protocol (as in the interactive-segmentation literature and micro-sam's
evaluation): the first click goes to the object's deepest interior point;
each later click to the centre of the largest error region, positive where
the object was missed, negative where the mask overshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


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
