"""Decoded masks of automatic mode, and how they become one instance map.

A :class:`Candidate` is one decoded mask kept as a logit patch on the slice
grid. :func:`candidates_from_logits` turns a view's logit maps into
candidates; :func:`filter_candidates` keeps the confident ones;
:func:`non_max_suppression` drops duplicates, parts and groups; and
:func:`resolve_overlaps` paints the survivors into one label map.

Not to be confused with :mod:`napari_sam.candidates`, which chooses among
the few candidate masks the model gives for one user prompt.

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..geometry import Crop, box_iou, box_of_mask
from .settings import AutoSettings


@dataclass
class Candidate:
    """One decoded mask, stored as a logit patch on the slice grid.

    top, left: the patch's first pixel in the slice; logits: (h, w) float32;
    score: predicted IoU; stability: stability score; box_iou: IoU between
    the mask's bounding box and the prompt box (1 for point prompts);
    prompt: index of the proposal that produced it.
    """

    top: int
    left: int
    logits: np.ndarray
    score: float
    stability: float
    box_iou: float
    prompt: int
    _mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = self.logits > 0
        return self._mask

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def rank(self) -> float:
        return self.score + self.stability + self.box_iou

    def slices(self) -> tuple[slice, slice]:
        h, w = self.logits.shape
        return slice(self.top, self.top + h), slice(self.left, self.left + w)


def candidates_from_logits(
    logits: np.ndarray,
    scores: np.ndarray,
    view: Crop,
    prompt_ids: list[int],
    prompt_boxes: np.ndarray | None,
    offset: float,
    clip_margin: float | None,
    slice_shape: tuple[int, int],
) -> list[Candidate]:
    """Turn a view's logit maps into candidates: clip each to its prompt box
    (plus a margin), drop masks cut by an inner edge of the view, cut the
    logits down to a patch around the mask and score its stability there.

    logits: (B, K, h, w) on the view's pixels; scores: (B, K);
    prompt_boxes: (B, 4) in slice pixels, or None for point prompts.
    """
    out = []
    h, w = logits.shape[-2:]
    for j in range(logits.shape[0]):
        clip = None
        if prompt_boxes is not None and clip_margin is not None:
            clip = _clip_window(view.box_to_crop(prompt_boxes[j]), clip_margin, (h, w))
        for k in range(logits.shape[1]):
            cut = _logit_patch(logits[j, k], clip, offset)
            if cut is None:
                continue
            r0, c0, patch, n_lo = cut
            m = patch > 0
            full_box_view = Crop(view.top + r0, view.left + c0, patch.shape[0], patch.shape[1])
            if _reaches_inner_edge(m, full_box_view, view, slice_shape):
                continue  # cut by the view's edge: another view holds the object whole
            stab = float((patch > offset).sum()) / n_lo if n_lo else 0.0
            mbox = view.box_from_crop(np.asarray(box_of_mask(m)) + np.array([r0, c0, r0, c0]))
            biou = box_iou(mbox, prompt_boxes[j]) if prompt_boxes is not None else 1.0
            out.append(
                Candidate(
                    top=view.top + r0,
                    left=view.left + c0,
                    logits=patch,
                    score=float(scores[j, k]),
                    stability=stab,
                    box_iou=biou,
                    prompt=prompt_ids[j],
                )
            )
    return out


def _clip_window(b: np.ndarray, clip_margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The view's pixels (r0, c0, r1, c1), end exclusive, that a mask answering the
    box ``b`` (r0, c0, r1, c1, view pixels, inclusive) may cover: the box grown by
    ``clip_margin`` times its size on each axis (at least 1 px), inside the view ``shape``."""
    h, w = shape
    mr = max(1.0, clip_margin * (b[2] - b[0] + 1))
    mc = max(1.0, clip_margin * (b[3] - b[1] + 1))
    return (
        max(0, int(np.floor(b[0] - mr))),
        max(0, int(np.floor(b[1] - mc))),
        min(h, int(np.ceil(b[2] + mr)) + 1),
        min(w, int(np.ceil(b[3] + mc)) + 1),
    )


def _logit_patch(logits: np.ndarray, clip: tuple[int, int, int, int] | None, offset: float):
    """One mask's (h, w) ``logits`` cut down to a patch around it: (r0, c0, patch
    float32, n_loose), where the patch spans the pixels above ``-offset`` plus 2 px
    and n_loose counts those; None when the mask (logits > 0) is empty. With a
    ``clip`` window (:func:`_clip_window`) the logits outside it count as background."""
    h, w = logits.shape
    lg = logits
    if clip is not None:  # a box prompt says where the object is: nothing outside the box
        lg = np.full((h, w), -2.0 * offset - 1.0, np.float32)
        sl = (slice(clip[0], clip[2]), slice(clip[1], clip[3]))
        lg[sl] = logits[sl]
    loose = lg > -offset
    rows = np.flatnonzero(loose.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(loose.any(axis=0))
    r0, r1 = max(0, rows[0] - 2), min(h, rows[-1] + 3)
    c0, c1 = max(0, cols[0] - 2), min(w, cols[-1] + 3)
    patch = np.ascontiguousarray(lg[r0:r1, c0:c1], dtype=np.float32)
    if not (patch > 0).any():
        return None
    return int(r0), int(c0), patch, int(loose[r0:r1, c0:c1].sum())


def _reaches_inner_edge(mask: np.ndarray, patch: Crop, view: Crop, slice_shape: tuple[int, int]) -> bool:
    """Whether a patch mask touches an edge of its view that lies inside the slice."""
    H, W = slice_shape
    if view.top > 0 and patch.top == view.top and mask[0].any():
        return True
    if view.left > 0 and patch.left == view.left and mask[:, 0].any():
        return True
    if view.top + view.height < H and patch.top + patch.height == view.top + view.height and mask[-1].any():
        return True
    return bool(view.left + view.width < W and patch.left + patch.width == view.left + view.width and mask[:, -1].any())


def filter_candidates(cands: list[Candidate], settings: AutoSettings, min_size: int, max_size: int) -> list[Candidate]:
    """Keep candidates passing the quality, stability, box-agreement and size thresholds."""
    return [
        c
        for c in cands
        if c.score >= settings.quality_threshold
        and c.stability >= settings.stability_threshold
        and c.box_iou >= settings.box_agreement
        and min_size <= c.area <= max_size
    ]


def unanswered_regions(regions: np.ndarray, kept: list[Candidate], covered: float = 0.5) -> list[Candidate]:
    """The structure regions (label map, region i + 1 from proposal i) that
    less than ``covered`` of is under the kept masks, as candidates ranked
    below any model mask (score, stability and box agreement 0)."""
    cover = np.zeros(regions.shape, bool)
    for c in kept:
        cover[c.slices()] |= c.mask
    out = []
    for i, sl in enumerate(ndimage.find_objects(regions)):
        if sl is None:
            continue
        region = regions[sl] == i + 1
        if cover[sl][region].mean() >= covered:
            continue
        logits = np.where(region, 1.0, -1.0).astype(np.float32)
        out.append(
            Candidate(top=sl[0].start, left=sl[1].start, logits=logits, score=0.0, stability=0.0, box_iou=0.0, prompt=i)
        )
    return out


def non_max_suppression(
    cands: list[Candidate], iou_threshold: float, part_fraction: float = 0.8, group_fraction: float = 0.6
) -> list[Candidate]:
    """Greedy mask NMS over candidates, best rank first.

    A candidate is dropped when its mask overlaps a kept one with IoU above
    ``iou_threshold`` (a duplicate), when ``part_fraction`` of it lies inside
    a kept mask (a part of a better object), or when it holds two or more
    kept masks, each with ``group_fraction`` of its area inside it (a group
    of better objects: two touching nuclei, several organs in one box).
    """
    order = sorted(cands, key=lambda c: -c.rank)
    kept: list[Candidate] = []
    for c in order:
        rs, cs = c.slices()
        drop, inside_c = False, 0
        for k in kept:
            kr, kc = k.slices()
            if rs.start >= kr.stop or kr.start >= rs.stop or cs.start >= kc.stop or kc.start >= cs.stop:
                continue
            inter = _intersection(c, k)
            union = c.area + k.area - inter
            if (union and inter / union > iou_threshold) or inter >= part_fraction * c.area:
                drop = True
                break
            if inter >= group_fraction * k.area:
                inside_c += 1
                if inside_c >= 2:
                    drop = True
                    break
        if not drop:
            kept.append(c)
    return kept


def _intersection(a: Candidate, b: Candidate) -> int:
    (ar, ac), (br, bc) = a.slices(), b.slices()
    r0, r1 = max(ar.start, br.start), min(ar.stop, br.stop)
    c0, c1 = max(ac.start, bc.start), min(ac.stop, bc.stop)
    if r0 >= r1 or c0 >= c1:
        return 0
    return int(
        np.logical_and(
            a.mask[r0 - ar.start : r1 - ar.start, c0 - ac.start : c1 - ac.start],
            b.mask[r0 - br.start : r1 - br.start, c0 - bc.start : c1 - bc.start],
        ).sum()
    )


def resolve_overlaps(cands: list[Candidate], shape: tuple[int, int], min_size: int) -> tuple[np.ndarray, list[float]]:
    """Paint candidates into one (H, W) int32 instance map.

    A pixel claimed by several masks (after NMS: only along the borders of
    touching objects) goes to the one with the highest logit there, so the
    border falls where the model is least sure. Each object then keeps its
    largest connected part, with holes filled, and is dropped when smaller
    than ``min_size``. Ids are 1..N in the order of ``cands``. Returns the
    labels and each kept id's score.
    """
    H, W = shape
    best = np.zeros((H, W), np.float32)  # logit of the current owner (> 0 where owned)
    owner = np.zeros((H, W), np.int32)
    for i, c in enumerate(cands, start=1):
        sl = c.slices()
        win = (c.logits > 0) & (c.logits > best[sl])
        owner[sl][win] = i
        best[sl][win] = c.logits[win]
    labels = np.zeros((H, W), np.int32)
    scores: list[float] = []
    objs = ndimage.find_objects(owner)
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        m = owner[sl] == i
        cc, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(cc.ravel())[1:]
            m = cc == (int(np.argmax(sizes)) + 1)
        m = ndimage.binary_fill_holes(m) & ((owner[sl] == i) | (owner[sl] == 0))
        if m.sum() < max(1, min_size):
            continue
        scores.append(cands[i - 1].score)
        labels[sl][m] = len(scores)
    return labels, scores
