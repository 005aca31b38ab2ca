"""The model decides which blobs hold several objects ("split-check").

Blob outlines drawn by a local threshold are already good (on nuclei_2d
better than the embedded model's at its 256 px view); what blobs get wrong is
touching objects merged into one. :mod:`napari_sam.automatic.splits` proposes
cuts; this module asks the model about each at zoom: the blob's crop (about
1.5 blob sizes) goes into a mosaic cell (:mod:`napari_sam.automatic.mosaic`),
and each part's box is a prompt. A cut is kept when the model answers every
part as an object of its own: its predicted IoU is at least ``quality`` and
its mask covers the part (IoU at least ``min_iou``). A box that cuts through
one nucleus gets a less confident answer than a box around a whole one.

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .mosaic import MosaicAnswer, MosaicRequest, square_crop
from .splits import SplitHypothesis

__all__ = ["SplitVerdict", "apply_splits", "judge_split", "split_requests"]


@dataclass(frozen=True)
class SplitVerdict:
    """The model's view of one hypothesis: ``accepted``; ``scores`` (k,)
    predicted IoU of each part's answer; ``ious`` (k,) IoU of each answer with
    its part; ``whole_score``: predicted IoU of the whole blob's answer."""

    accepted: bool
    scores: np.ndarray
    ious: np.ndarray
    whole_score: float


def split_requests(hyps: Sequence[SplitHypothesis], crop_scale: float = 1.5) -> list[MosaicRequest]:
    """One mosaic request per hypothesis: a square crop ``crop_scale`` times
    the blob's box, prompts: the whole blob's box, then each part's box."""
    out = []
    for h in hyps:
        whole = h.region_box()
        top, left, side = square_crop(whole, crop_scale, min_side=16)
        out.append(MosaicRequest(0, top, left, side, np.concatenate([whole[None], h.part_boxes()])))
    return out


def _parts_on_crop(h: SplitHypothesis, req: MosaicRequest) -> np.ndarray:
    """The hypothesis' parts (label patch) placed on the request's crop, (side, side) int32."""
    out = np.zeros((req.side, req.side), np.int32)
    ph, pw = h.parts.shape
    r0, c0 = h.top - req.top, h.left - req.left
    rs = slice(max(0, r0), min(req.side, r0 + ph))
    cs = slice(max(0, c0), min(req.side, c0 + pw))
    out[rs, cs] = h.parts[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
    return out


def judge_split(
    h: SplitHypothesis, req: MosaicRequest, answer: MosaicAnswer, quality: float, min_iou: float
) -> SplitVerdict:
    """Keep a cut when every part's answer is confident (predicted IoU >=
    ``quality``) and covers its part (IoU >= ``min_iou``)."""
    parts = _parts_on_crop(h, req)
    masks = answer.logits[1:] > 0
    ious = np.zeros(h.n_parts)
    for k in range(h.n_parts):
        p = parts == k + 1
        union = np.logical_or(masks[k], p).sum()
        ious[k] = np.logical_and(masks[k], p).sum() / union if union else 0.0
    scores = np.asarray(answer.scores[1:], np.float64)
    accepted = bool(scores.min() >= quality and ious.min() >= min_iou)
    return SplitVerdict(accepted, scores, ious, float(answer.scores[0]))


def apply_splits(regions: np.ndarray, hyps: Sequence[SplitHypothesis], verdicts: Sequence[SplitVerdict]) -> np.ndarray:
    """The blob label map with each accepted hypothesis' parts as objects of
    their own (new ids after the existing ones); (H, W) int32."""
    out = np.array(regions, np.int32, copy=True)
    next_id = int(out.max(initial=0)) + 1
    for h, v in zip(hyps, verdicts):
        if not v.accepted:
            continue
        patch = out[h.top : h.top + h.parts.shape[0], h.left : h.left + h.parts.shape[1]]
        for k in range(2, h.n_parts + 1):
            patch[h.parts == k] = next_id
            next_id += 1
    return out
