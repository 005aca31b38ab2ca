"""From a slice prompt (clicks and/or a box) to ranked candidate masks.

Point-capable models (SAM, MobileSAM, micro-sam) take the clicks as they are.

Box-only models (the embedded LiteMedSAM) ignore clicks, so the clicks are
turned into *box hypotheses*:

1. seed boxes: boxes around the positive clicks at a ladder of scales, the
   box of the mask being corrected (grown to take in new positive clicks),
   and the user's box when there is one;
2. every hypothesis is decoded (low resolution, no resize) and scored:
   first by *click agreement* (positive clicks inside the mask, negative
   clicks outside), then by *self-consistency* (a box model answers a tight
   box best, so a good hypothesis is one whose mask's bounding box matches
   the box it came from) plus the model's predicted IoU;
3. the best hypotheses are refined: the next box is the bounding box of
   their mask, grown to include every positive click and cut back to leave
   out negative clicks (a fixed-point iteration);
4. the distinct best masks become the candidates (ambiguity: part / whole).

Hypotheses are scored on the model's low-resolution grid; only the final
candidates are resized to the slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .geometry import box_iou, box_of_mask, mask_iou
from .models.base import Backend, Embedding, rc_to_model_xy
from .prediction import Prediction
from .prompts import SlicePrompt

#: box side of the seed hypotheses, as fractions of the slice's longer side
SEED_SCALES = (0.04, 0.08, 0.14, 0.24, 0.40, 0.65)
#: refinement rounds on the best hypotheses
REFINE_ROUNDS = 2
#: hypotheses refined per round
REFINE_TOP = 2
#: weight of self-consistency against predicted IoU
CONSISTENCY_WEIGHT = 1.0
#: weight of the truncation penalty (mask running along its box's edge).
#: Measured on the shared CT (NoC@85 liver/spleen/stomach/aorta): 0.5 gives
#: 1.30/1.75/2.65/1.05; 1.0 gives 1.35/1.40/2.95/1.75 (small round objects
#: legitimately run along their tight box's edges); see docs/clicks.md.
TRUNCATION_WEIGHT = 0.5
#: an edge occupied over more than this fraction means the object goes on past it
TRUNCATED_EDGE = 0.3
#: hypotheses refined in the first round (distinct masks only)
FIRST_ROUND_TOP = 5
#: two candidates with IoU above this are the same answer
DISTINCT_IOU = 0.85
#: ranking of the candidates shown (see :func:`candidate_order`), weights of
#: stability, truncation and area (fraction of the slice) against predicted IoU
#: (shared CT, one click at the deepest point of every structure on every slice,
#: 268 clicks on 16 structures; benchmarks/candidate_ranking.py): candidate 1 is
#: the best shown in 61.9 % of clicks, was 47.4 %; these weights were fitted on
#: those clicks. Structure-level cross-validation of that fit (weights chosen on
#: some structures, scored on the others) gives 55.5 %; fitting truncation and
#: area alone gives 60.2 %, but its rule (IoU - truncation - 2 area) drops the
#: liver's one-click Dice from 0.851 to 0.686, so it is not used (docs/napari.md).
ORDER_STABILITY = 1.0
ORDER_TRUNCATION = 1.5
ORDER_AREA = 2.0


@dataclass
class _Hyp:
    box: np.ndarray  # (4,) r0, c0, r1, c1 in slice pixels
    low: torch.Tensor  # (s, s) logits
    score: float  # predicted IoU
    mask: np.ndarray  # (h, w) bool on the low-res grid cropped to the image
    violations: float = 0.0
    consistency: float = 0.0
    #: fraction of each box edge (top, left, bottom, right) the mask runs along
    edges: np.ndarray = field(default_factory=lambda: np.zeros(4))
    #: stability: pixels with logit > 1 over pixels with logit > -1 (1: a crisp mask)
    stability: float = 0.0

    @property
    def truncation(self) -> float:
        """Longest run of the mask along one edge of its box, as a fraction of
        that edge: small when the box only touches the object at its extreme
        points, near 1 when the box cut through the object."""
        return float(self.edges.max())

    @property
    def quality(self) -> float:
        return self.score + CONSISTENCY_WEIGHT * self.consistency - TRUNCATION_WEIGHT * self.truncation

    @property
    def rank_key(self) -> tuple[float, float]:
        """Order of refinement: click agreement, then quality."""
        return (self.violations, -self.quality)

    @property
    def area(self) -> float:
        """Fraction of the slice the mask covers."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def order_key(self) -> tuple[float, float]:
        """Order of the candidates shown: click agreement, then predicted IoU +
        stability - truncation - area (a leak is large, blurred and cut by its box)."""
        return (
            self.violations,
            -(
                self.score
                + ORDER_STABILITY * self.stability
                - ORDER_TRUNCATION * self.truncation
                - ORDER_AREA * self.area
            ),
        )


class ClickStrategy:
    """Turns a :class:`SlicePrompt` into ranked candidate masks for one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # ------------------------------------------------------------------ public
    def predict(
        self, emb: Embedding, prompt: SlicePrompt, previous: np.ndarray | None = None, multimask: bool = True
    ) -> Prediction:
        if self.backend.supports_points:
            return self._predict_with_points(emb, prompt, multimask)
        hyps = self._box_hypotheses(emb, prompt, previous)
        chosen = distinct(candidate_order(hyps), 3 if multimask else 1)
        low = torch.stack([h.low for h in chosen])[None]
        masks = (self.backend.upsample(low, emb)[0] > 0).cpu().numpy()
        return Prediction(
            masks=masks,
            scores=np.array([h.score for h in chosen], np.float32),
            low_res_logits=low[0].float().cpu().numpy(),
            boxes=np.stack([h.box for h in chosen]).astype(np.float32),
        )

    # ------------------------------------------------------- point-capable models
    def _predict_with_points(self, emb: Embedding, prompt: SlicePrompt, multimask: bool) -> Prediction:
        pts = prompt.points[None] if len(prompt.points) else None
        labels = prompt.labels[None] if len(prompt.points) else None
        box = np.asarray(prompt.box, np.float32)[None] if prompt.box is not None else None
        # SAM's advice: several masks for one ambiguous click, one otherwise.
        multi = multimask and box is None and len(prompt.points) == 1
        low, scores = self.backend.decode_low_res(emb, pts, labels, box, None, multimask=multi)
        order = torch.argsort(scores[0], descending=True)
        low = low[0][order]
        masks = (self.backend.upsample(low[None], emb)[0] > 0).cpu().numpy()
        boxes = np.stack([np.asarray(box_of_mask(m) or (0, 0, 0, 0), np.float32) for m in masks])
        return Prediction(
            masks=masks,
            scores=scores[0][order].float().cpu().numpy(),
            low_res_logits=low.float().cpu().numpy(),
            boxes=boxes,
        )

    # ------------------------------------------------------------ box-only models
    def _grid(self, emb: Embedding) -> tuple[float, tuple[int, int]]:
        """Scale from model-input pixels to low-res grid, and the image's extent there."""
        s = self.backend.image_size
        f = self._low_size / s
        return f, (max(1, int(round(emb.input_size[0] * f))), max(1, int(round(emb.input_size[1] * f))))

    def _to_low_rc(self, emb: Embedding, pts_rc: np.ndarray) -> np.ndarray:
        f, (h, w) = self._grid(emb)
        xy = rc_to_model_xy(pts_rc, emb.original_size, emb.input_size) * f
        rc = np.stack([xy[:, 1], xy[:, 0]], axis=1)
        return np.clip(np.floor(rc).astype(int), 0, [h - 1, w - 1])

    def _decode(self, emb: Embedding, boxes: list[np.ndarray], prompt: SlicePrompt) -> list[_Hyp]:
        if not boxes:
            return []
        low, scores = self.backend.decode_low_res(emb, boxes_rc=np.stack(boxes).astype(np.float32))
        self._low_size = low.shape[-1]
        _, (h, w) = self._grid(emb)
        masks = (low[:, 0, :h, :w] > 0).cpu().numpy()
        logits = low[:, 0].float()
        loose = (logits > -1).sum(dim=(1, 2)).cpu().numpy()
        stability = np.where(loose > 0, (logits > 1).sum(dim=(1, 2)).cpu().numpy() / np.maximum(loose, 1), 0.0)
        pos = self._to_low_rc(emb, prompt.positive)
        neg = self._to_low_rc(emb, prompt.negative)
        sy, sx = h / emb.original_size[0], w / emb.original_size[1]
        out = []
        for i, box in enumerate(boxes):
            m = masks[i]
            viol = (
                float((~m[pos[:, 0], pos[:, 1]]).sum() + m[neg[:, 0], neg[:, 1]].sum()) if len(pos) + len(neg) else 0.0
            )
            if not m.any():
                viol += 0.5  # an empty mask never explains a prompt
            mb = box_of_mask(m)
            cons = 0.0
            lb = np.array([box[0] * sy, box[1] * sx, (box[2] + 1) * sy - 1, (box[3] + 1) * sx - 1])
            if mb is not None:
                cons = box_iou(lb, np.asarray(mb, float))
            out.append(
                _Hyp(
                    box=np.asarray(box, np.float32),
                    low=low[i, 0],
                    score=float(scores[i, 0]),
                    mask=m,
                    violations=viol,
                    consistency=cons,
                    edges=_edge_occupancy(m, lb),
                    stability=float(stability[i]),
                )
            )
        return out

    def _clip_box(self, box, shape) -> np.ndarray:
        h, w = shape
        r0, c0, r1, c1 = box
        r0, r1 = np.clip([r0, r1], 0, h - 1)
        c0, c1 = np.clip([c0, c1], 0, w - 1)
        return np.array([min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)], np.float32)

    def _grow_to_clicks(self, box: np.ndarray, prompt: SlicePrompt, shape, margin: float) -> np.ndarray:
        b = box.copy()
        for r, c in prompt.positive:
            b = np.array(
                [min(b[0], r - margin), min(b[1], c - margin), max(b[2], r + margin), max(b[3], c + margin)], np.float32
            )
        return self._clip_box(b, shape)

    def _cut_negatives(self, box: np.ndarray, prompt: SlicePrompt, shape) -> list[np.ndarray]:
        """Variants of ``box`` cut at a negative click inside it, keeping every positive click."""
        out = []
        pos = prompt.positive
        for r, c in prompt.negative:
            if not (box[0] <= r <= box[2] and box[1] <= c <= box[3]):
                continue
            for cut in (
                (r + 1, None, None, None),
                (None, c + 1, None, None),
                (None, None, r - 1, None),
                (None, None, None, c - 1),
            ):
                nb = np.array([v if v is not None else box[i] for i, v in enumerate(cut)], np.float32)
                if nb[0] > nb[2] or nb[1] > nb[3]:
                    continue
                if len(pos) and not np.all(
                    (pos[:, 0] >= nb[0]) & (pos[:, 0] <= nb[2]) & (pos[:, 1] >= nb[1]) & (pos[:, 1] <= nb[3])
                ):
                    continue
                out.append(self._clip_box(nb, shape))
        return out

    def _box_hypotheses(self, emb: Embedding, prompt: SlicePrompt, previous: np.ndarray | None) -> list[_Hyp]:
        shape = emb.original_size
        side = max(shape)
        seeds: list[np.ndarray] = []
        if prompt.box is not None:
            seeds.append(self._clip_box(prompt.box, shape))
            if len(prompt.positive):
                seeds.append(self._grow_to_clicks(seeds[0], prompt, shape, 2.0))
        prev_box = box_of_mask(previous) if previous is not None and previous.any() else None
        if prev_box is not None:
            pb = self._grow_to_clicks(np.asarray(prev_box, np.float32), prompt, shape, 0.02 * side)
            seeds.append(pb)
            seeds.extend(self._cut_negatives(pb, prompt, shape))
        if prompt.box is None and len(prompt.positive):
            pos = prompt.positive
            lo, hi = pos.min(axis=0), pos.max(axis=0)
            for frac in SEED_SCALES:
                half = frac * side / 2
                if prev_box is not None and frac > 0.3:
                    continue
                seeds.append(self._clip_box((lo[0] - half, lo[1] - half, hi[0] + half, hi[1] + half), shape))
        if not seeds:  # only negative clicks: nothing to segment
            seeds.append(self._clip_box((0, 0, 0, 0), shape))
        hyps = self._decode(emb, _unique(seeds), prompt)
        if prompt.box is not None and not len(prompt.points):
            return hyps  # a box alone is what the model was trained on: take its answer as it is
        tried = {tuple(np.round(h.box, 1)) for h in hyps}
        for round_ in range(REFINE_ROUNDS):
            hyps.sort(key=lambda h: h.rank_key)
            pool = self._distinct(hyps, FIRST_ROUND_TOP) if round_ == 0 else hyps[:REFINE_TOP]
            new = []
            for h in pool:
                mb = box_of_mask(np.asarray(h.mask))
                if mb is None:
                    continue
                f_r, f_c = shape[0] / h.mask.shape[0], shape[1] / h.mask.shape[1]
                b = np.array([mb[0] * f_r, mb[1] * f_c, (mb[2] + 1) * f_r - 1, (mb[3] + 1) * f_c - 1], np.float32)
                # where the mask runs along its box's edge the object goes on: grow that way
                grow = 0.25 * np.array([b[2] - b[0], b[3] - b[1]]) + 0.01 * side
                for e, (i, sign, g) in enumerate(
                    ((0, -1, grow[0]), (1, -1, grow[1]), (2, 1, grow[0]), (3, 1, grow[1]))
                ):
                    if h.edges[e] > TRUNCATED_EDGE:
                        b[i] += sign * g
                b = self._grow_to_clicks(self._clip_box(b, shape), prompt, shape, 0.01 * side)
                for cand in [b] + self._cut_negatives(b, prompt, shape):
                    key = tuple(np.round(cand, 1))
                    if key not in tried:
                        tried.add(key)
                        new.append(cand)
            if not new:
                break
            hyps += self._decode(emb, new, prompt)
        hyps.sort(key=lambda h: h.rank_key)
        return hyps

    @staticmethod
    def _distinct(hyps: list[_Hyp], k: int) -> list[_Hyp]:
        return distinct(hyps, k)


def candidate_order(hyps: list[_Hyp]) -> list[_Hyp]:
    """The hypotheses in the order their masks are offered (best first, :attr:`_Hyp.order_key`)."""
    return sorted(hyps, key=lambda h: h.order_key)


def distinct(hyps: list[_Hyp], k: int) -> list[_Hyp]:
    """The first ``k`` hypotheses whose masks differ (IoU < :data:`DISTINCT_IOU`), in order."""
    chosen: list[_Hyp] = []
    for h in hyps:
        if all(mask_iou(h.mask, c.mask) < DISTINCT_IOU for c in chosen):
            chosen.append(h)
        if len(chosen) == k:
            break
    return chosen or hyps[:1]


def _edge_occupancy(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Fraction of each edge (top, left, bottom, right) of ``box`` along which ``mask`` runs.

    mask: (h, w) bool; box: (r0, c0, r1, c1) in the mask's pixels. A tight box
    touches its object at a few extreme points; a box cut through an object
    leaves the mask running along the cut.
    """
    h, w = mask.shape
    r0, c0 = int(np.clip(np.floor(box[0]), 0, h - 1)), int(np.clip(np.floor(box[1]), 0, w - 1))
    r1, c1 = int(np.clip(np.ceil(box[2]), 0, h - 1)), int(np.clip(np.ceil(box[3]), 0, w - 1))
    if r1 <= r0 or c1 <= c0 or not mask.any():
        return np.zeros(4)
    band = 1  # low-res pixels inside the edge that count as "on" it
    occ = [
        mask[r0 : r0 + band + 1, c0 : c1 + 1].any(axis=0).mean() if r0 > 0 else 0.0,
        mask[r0 : r1 + 1, c0 : c0 + band + 1].any(axis=1).mean() if c0 > 0 else 0.0,
        mask[max(r0, r1 - band) : r1 + 1, c0 : c1 + 1].any(axis=0).mean() if r1 < h - 1 else 0.0,
        mask[r0 : r1 + 1, max(c0, c1 - band) : c1 + 1].any(axis=1).mean() if c1 < w - 1 else 0.0,
    ]
    return np.asarray(occ, float)


def _unique(boxes: list[np.ndarray]) -> list[np.ndarray]:
    seen, out = set(), []
    for b in boxes:
        key = tuple(np.round(b, 1))
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out
