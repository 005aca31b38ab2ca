"""Split hypotheses for blobs that may hold several touching objects.

Two nuclei pressed together along a long side have no neck for a watershed on
the distance transform to cut, and often no dark seam either; what shows is
the outline: two bays (concavities) where the outlines meet. A straight cut
between the deepest points of two bays is the classical split (concavity
analysis, as in cell-segmentation pipelines since the 1990s). It is also cut
through kidney-shaped single nuclei, so here it is only a *hypothesis*: the
model decides which hypotheses hold (:mod:`napari_sam.automatic.split_check`).

A cut between bays of depths d0, d1 (pixels from the convex hull) whose
deepest points are L pixels apart scores (d0 + d1) / (d0 + d1 + L): deep
bays close together give a score near 1, shallow bays far apart near 0.

Coordinates are (row, col) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import line
from skimage.morphology import convex_hull_image

__all__ = ["SplitHypothesis", "best_cut", "concavities", "split_hypotheses", "split_mask"]


@dataclass(frozen=True)
class SplitHypothesis:
    """One blob and the parts it may hold.

    region: the blob's id in the blob label map; top, left: the patch's first
    pixel in the image; parts: (h, w) int32 patch, 0 outside the blob, 1..k
    the parts (k >= 2); score: the weakest cut's concavity score (0..1).
    """

    region: int
    top: int
    left: int
    parts: np.ndarray
    score: float

    @property
    def n_parts(self) -> int:
        return int(self.parts.max())

    def part_boxes(self) -> np.ndarray:
        """(k, 4) inclusive boxes (r0, c0, r1, c1) of the parts, image pixels."""
        out = []
        for sl in ndimage.find_objects(self.parts):
            out.append(
                (sl[0].start + self.top, sl[1].start + self.left, sl[0].stop - 1 + self.top, sl[1].stop - 1 + self.left)
            )
        return np.asarray(out, np.float32)

    def region_box(self) -> np.ndarray:
        """(4,) inclusive box of the whole blob, image pixels."""
        rows = np.flatnonzero((self.parts > 0).any(axis=1))
        cols = np.flatnonzero((self.parts > 0).any(axis=0))
        return np.asarray(
            (rows[0] + self.top, cols[0] + self.left, rows[-1] + self.top, cols[-1] + self.left), np.float32
        )


def concavities(mask: np.ndarray) -> list[tuple[int, int, float]]:
    """The bays of a 2D bool mask: (row, col, depth) of each bay's deepest
    point, depth in pixels from the convex hull's outline."""
    hull = convex_hull_image(mask)
    bays, n = ndimage.label(hull & ~mask)
    if n == 0:
        return []
    depth = ndimage.distance_transform_edt(np.pad(hull, 1))[1:-1, 1:-1]
    out = []
    for k, sl in enumerate(ndimage.find_objects(bays), start=1):
        d = np.where(bays[sl] == k, depth[sl], 0.0)
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        out.append((int(r + sl[0].start), int(c + sl[1].start), float(d[r, c])))
    return out


def _cut(mask: np.ndarray, a: tuple[int, int, float], b: tuple[int, int, float], min_size: int) -> np.ndarray | None:
    """The mask cut along the segment a-b: parts 1..k (each >= min_size; the
    cut line and crumbs go to the nearest part), or None if it does not split."""
    rr, cc = line(a[0], a[1], b[0], b[1])
    cut = mask.copy()
    cut[rr, cc] = False
    cut[np.minimum(rr + 1, mask.shape[0] - 1), cc] = False  # 2 px: no 8-connected leak through a diagonal
    lab, n = ndimage.label(cut)
    if n < 2:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    big = np.flatnonzero(sizes >= max(1, min_size)) + 1
    if len(big) < 2:
        return None
    parts = np.zeros(mask.shape, np.int32)
    for k, v in enumerate(big, start=1):
        parts[lab == v] = k
    nearest = ndimage.distance_transform_edt(parts == 0, return_distances=False, return_indices=True)
    return np.where(mask, parts[nearest[0], nearest[1]], 0).astype(np.int32)


def best_cut(mask: np.ndarray, min_depth: float, min_size: int, min_score: float) -> tuple[float, np.ndarray] | None:
    """The straight cut between two bays with the best concavity score, at
    least ``min_score``, both bays at least ``min_depth`` pixels deep and
    every part at least ``min_size`` pixels: (score, parts 1..k), or None."""
    bays = [b for b in concavities(mask) if b[2] >= min_depth]
    pairs = []
    for i in range(len(bays)):
        for j in range(i + 1, len(bays)):
            (r0, c0, d0), (r1, c1, d1) = bays[i], bays[j]
            score = (d0 + d1) / (d0 + d1 + float(np.hypot(r1 - r0, c1 - c0)))
            if score >= min_score:
                pairs.append((score, i, j))
    for score, i, j in sorted(pairs, reverse=True):
        parts = _cut(mask, bays[i], bays[j], min_size)
        if parts is not None:
            return score, parts
    return None


def split_mask(
    mask: np.ndarray, min_depth: float, min_size: int, min_score: float, max_levels: int = 3
) -> tuple[np.ndarray, float]:
    """Cut a mask, then its parts, up to ``max_levels`` deep: (parts 1..k,
    the weakest accepted cut's score; 1.0 when nothing was cut)."""
    found = best_cut(mask, min_depth, min_size, min_score) if max_levels > 0 else None
    if found is None:
        return mask.astype(np.int32), 1.0
    score, parts = found
    out = np.zeros(mask.shape, np.int32)
    for k in range(1, int(parts.max()) + 1):
        sub, s = split_mask(parts == k, min_depth, min_size, min_score, max_levels - 1)
        out[sub > 0] = sub[sub > 0] + out.max()
        score = min(score, s)
    return out, float(score)


def split_hypotheses(
    regions: np.ndarray, diameter: float, min_size: int, min_score: float, min_depth_fraction: float = 0.05
) -> list[SplitHypothesis]:
    """A hypothesis for every blob of a (H, W) label map that concavity
    analysis would cut (bays at least ``min_depth_fraction`` x ``diameter``
    deep, cut score at least ``min_score``, parts of at least ``min_size`` px)."""
    out = []
    H, W = regions.shape
    for i, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        r0, c0 = max(0, sl[0].start - 1), max(0, sl[1].start - 1)
        r1, c1 = min(H, sl[0].stop + 1), min(W, sl[1].stop + 1)
        mask = regions[r0:r1, c0:c1] == i
        if mask.sum() < 2 * min_size:
            continue
        parts, score = split_mask(mask, min_depth_fraction * diameter, min_size, min_score)
        if parts.max() >= 2:
            out.append(SplitHypothesis(region=i, top=r0, left=c0, parts=parts, score=score))
    return out
