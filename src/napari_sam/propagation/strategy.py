"""How a pass answers the next slice: the step strategies.

A :class:`StepStrategy` turns the neighbour's mask into the answer on the
next slice's embedding, through a :class:`BoxDecoder` (box prompts decoded
in one batch, each answer measured against the neighbour). Two strategies:

- :class:`TrackStrategy` (the default): the box of the neighbour's mask plus
  a margin; while the answer reaches the prompt box's edge (the object goes
  on beyond it) the box is re-fitted around the answer, up to
  ``grow_rounds`` times, unless that would grow the area past the rules'
  ``max_growth``;
- :class:`HypothesesStrategy`: several boxes around the neighbour's mask
  (margins, and one grown by a fraction), the one whose answer the model
  rates best and that best agrees with the neighbour, refined once.

Every answer is the model's single output, unless that output has lost the
neighbour's object and one of the model's other outputs for the same box
has kept it (:data:`SWITCH_RATIO`): a box-only model asked about a lobe or a
vessel beside a larger bright neighbour often answers the neighbour, or
both, with its single output while one of its candidates is the object.

Coordinates are (row, col) pixels of the grid decoded on (the whole slice or
a zoom frame); boxes (r0, c0, r1, c1) inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..geometry import box_of_mask, mask_iou
from ..models.base import Backend, Embedding
from .rules import StepAnswer, StopRules

__all__ = ["BoxDecoder", "HypothesesStrategy", "RescueStrategy", "StepStrategy", "TrackStrategy", "SWITCH_RATIO"]

#: a propagated slice takes another of the model's outputs than its single one only when that
#: output agrees with the neighbour's mask (IoU) more than 1 / SWITCH_RATIO = twice as well: the
#: single output has then lost the object. Not tuned: 1/3, 1/2 and 2/3 give the same CT mean
#: (0.654, 0.656, 0.656; docs/propagation.md). The candidates are decoded only when the single
#: output's IoU is under SWITCH_RATIO (no IoU can exceed 1), so most steps cost one decode as before.
SWITCH_RATIO = 0.5


def clip_box(r0: float, c0: float, r1: float, c1: float, shape: tuple[int, int]) -> np.ndarray:
    """A (4,) float32 box (r0, c0, r1, c1) clipped to a (rows, cols) grid."""
    h, w = shape
    return np.array(
        [np.clip(r0, 0, h - 1), np.clip(c0, 0, w - 1), np.clip(r1, 0, h - 1), np.clip(c1, 0, w - 1)], np.float32
    )


@dataclass(frozen=True)
class BoxDecoder:
    """Decodes box prompts on one slice's embedding for a pass.

    margin, margin_fraction: a mask's box is grown by max(margin,
    margin_fraction * its longer side) pixels on every side (:meth:`pad`).
    """

    backend: Backend
    margin: float = 3.0
    margin_fraction: float = 0.05

    def pad(self, box, shape: tuple[int, int], factor: float = 1.0) -> np.ndarray:
        """Box (r0, c0, r1, c1) plus ``factor`` times the margin, inside the (rows, cols) grid."""
        h, w = box[2] - box[0] + 1, box[3] - box[1] + 1
        m = factor * max(self.margin, self.margin_fraction * max(h, w))
        return clip_box(box[0] - m, box[1] - m, box[2] + m, box[3] + m, shape)

    def decode(self, emb: Embedding, boxes: list[np.ndarray], prev: np.ndarray) -> list[StepAnswer]:
        """One answer per box, measured against the neighbour's mask ``prev``: the
        single-mask output, or the candidate that kept the object (:meth:`kept`)."""
        low, scores = self.backend.decode_low_res(emb, boxes_rc=np.stack(boxes))
        logits = self.backend.upsample(low[:, :1], emb)[:, 0].float().cpu().numpy()
        prev_area = max(1, int(prev.sum()))
        out = []
        for i in range(len(boxes)):
            lg, score, iou = self.kept(emb, boxes[i], prev, logits[i], float(scores[i, 0]))
            m = lg > 0
            out.append(
                StepAnswer(
                    mask=m, score=score, logits=lg, iou_prev=iou, area_ratio=float(m.sum()) / prev_area, box=boxes[i]
                )
            )
        return out

    def kept(
        self, emb: Embedding, box: np.ndarray, prev: np.ndarray, logits: np.ndarray, score: float
    ) -> tuple[np.ndarray, float, float]:
        """(logits, predicted IoU, IoU with ``prev``) of the answer to ``box``: the
        single output's (``logits``, ``score``), unless another of the model's
        outputs agrees with ``prev`` more than 1 / :data:`SWITCH_RATIO` times as well."""
        iou = mask_iou(logits > 0, prev)
        if iou >= SWITCH_RATIO:
            return logits, score, iou
        low, scores = self.backend.decode_all_outputs(emb, box[None])
        others = self.backend.upsample(low[:, 1:], emb)[0].float().cpu().numpy()
        ious = [mask_iou(o > 0, prev) for o in others]
        k = int(np.argmax(ious))
        if iou >= SWITCH_RATIO * ious[k]:
            return logits, score, iou
        return others[k], float(scores[0, 1 + k]), ious[k]


class StepStrategy(Protocol):
    """Answers the next slice of a pass from the neighbour's mask."""

    def answer(self, decoder: BoxDecoder, emb: Embedding, prev: np.ndarray, rules: StopRules) -> StepAnswer:
        """The answer on ``emb``'s slice, prompted from ``prev``, the neighbour's
        non-empty (rows, cols) bool mask on the same grid."""
        ...


def _touches(mask: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether the mask reaches an edge of its prompt box that is not the grid's edge."""
    mb = box_of_mask(mask)
    r0, c0, r1, c1 = (int(round(v)) for v in box)
    H, W = shape
    return bool(
        (r0 > 0 and mb[0] <= r0)
        or (c0 > 0 and mb[1] <= c0)
        or (r1 < H - 1 and mb[2] >= r1)
        or (c1 < W - 1 and mb[3] >= c1)
    )


@dataclass(frozen=True)
class TrackStrategy:
    """The neighbour's box plus a margin, re-fitted while the answer fills it
    (at most ``grow_rounds`` times)."""

    grow_rounds: int = 2

    def answer(self, decoder: BoxDecoder, emb: Embedding, prev: np.ndarray, rules: StopRules) -> StepAnswer:
        shape = emb.original_size
        best = decoder.decode(emb, [decoder.pad(box_of_mask(prev), shape)], prev)[0]
        for _ in range(self.grow_rounds):
            if not best.mask.any() or not _touches(best.mask, best.box, shape):
                break
            grown = decoder.decode(emb, [decoder.pad(box_of_mask(best.mask), shape)], prev)[0]
            if grown.area_ratio > rules.max_growth * max(best.area_ratio, 1e-6) or not grown.mask.any():
                break
            best = grown
        return best


@dataclass(frozen=True)
class HypothesesStrategy:
    """Box hypotheses around the neighbour's mask: one per margin in
    ``box_margins`` (pixels) and one grown by ``grow_fraction`` of its size on
    each side; the best by predicted IoU + IoU with the neighbour, refined once
    with the box of its own mask (the middle margin)."""

    box_margins: tuple[float, ...] = (0.0, 3.0, 6.0)
    grow_fraction: float = 0.15

    def answer(self, decoder: BoxDecoder, emb: Embedding, prev: np.ndarray, rules: StopRules) -> StepAnswer:
        shape = emb.original_size
        r0, c0, r1, c1 = box_of_mask(prev)
        h, w = r1 - r0 + 1, c1 - c0 + 1
        boxes = [clip_box(r0 - m, c0 - m, r1 + m, c1 + m, shape) for m in self.box_margins]
        if self.grow_fraction > 0:
            g = self.grow_fraction
            boxes.append(clip_box(r0 - g * h, c0 - g * w, r1 + g * h, c1 + g * w, shape))
        best = max(decoder.decode(emb, boxes, prev), key=lambda c: c.score + c.iou_prev)
        if best.mask.any() and len(self.box_margins) > 1:
            b = box_of_mask(best.mask)
            m = self.box_margins[len(self.box_margins) // 2]
            refined = decoder.decode(emb, [clip_box(b[0] - m, b[1] - m, b[2] + m, b[3] + m, shape)], prev)[0]
            if refined.score + refined.iou_prev > best.score + best.iou_prev:
                best = refined
        return best


@dataclass(frozen=True)
class RescueStrategy:
    """A second look at a slice whose answer a stop rule refused (and that the
    rules' ``patience`` could not bridge): the box of the neighbour's mask grown
    by each of ``margin_factors`` times the decoder's margin (0: the tight box),
    every one of the model's four outputs for each box, and the answer that
    agrees best with the neighbour's mask (IoU). The stop rules then judge it
    as any other answer (:meth:`Propagator._rescued`).

    A box-only model's answer jumps with the prompt box's margin: on the shared
    CT a rib's answer to its neighbour's tight box keeps it (Dice 0.82) while the
    same box plus 6 px loses it (0.42), and a back muscle's answer goes the
    other way (0.08 tight, 0.85 at 6 px). A pass that stops there has lost the
    object's track, not reached its end. Margins up to twice the pass's own:
    four times (chosen on the shared CT, docs/propagation.md) let the pancreas's
    pass jump onto a neighbour past its end.
    """

    margin_factors: tuple[float, ...] = (0.0, 1.0, 2.0)

    def answer(self, decoder: BoxDecoder, emb: Embedding, prev: np.ndarray, rules: StopRules) -> StepAnswer:
        box = box_of_mask(prev)
        boxes = np.stack([decoder.pad(box, emb.original_size, f) for f in self.margin_factors])
        low, scores = decoder.backend.decode_all_outputs(emb, boxes)
        logits = decoder.backend.upsample(low, emb).float().cpu().numpy()
        ious = np.array([[mask_iou(lg > 0, prev) for lg in per_box] for per_box in logits])
        b, k = np.unravel_index(int(np.argmax(ious)), ious.shape)
        lg = logits[b, k]
        m = lg > 0
        return StepAnswer(
            mask=m,
            score=float(scores[b, k]),
            logits=lg,
            iou_prev=float(ious[b, k]),
            area_ratio=float(m.sum()) / max(1, int(prev.sum())),
            box=boxes[b],
        )
