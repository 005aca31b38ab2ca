"""The stop rules: when a propagation pass ends.

Each next slice's answer (a :class:`StepAnswer`) is checked by
:func:`check_step` against :class:`StopRules`: vanished (EMPTY), predicted IoU
too low (LOW_SCORE), a sudden growth (GROWTH), too little overlap with the
neighbour and a failed backward check (DISCONTINUITY), intensities unlike the
key slices' object (INTENSITY), and image features unlike it (APPEARANCE).
:class:`ObjectAppearance` holds what the object looks like on its key slices,
which the last two rules compare against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Crop
from ..models.base import Embedding
from .state import StopReason

__all__ = ["ObjectAppearance", "StepAnswer", "StopRules", "check_step", "pooled_features"]


@dataclass(frozen=True)
class StopRules:
    """Thresholds of the stop rules, checked on the answer for each next slice.

    min_area: a mask smaller than this many pixels has vanished (EMPTY).
    min_score: the model's predicted IoU under this stops (LOW_SCORE). Off
        (0) by default: on the shared CT, continuing slices of small
        structures often score under 0.3 while the slices past an object's
        end scored 0.42-0.81, so the score does not tell them apart.
    max_growth: area / neighbour's area above this stops (GROWTH, a leak into
        a neighbouring structure), for neighbours of at least
        ``growth_min_area`` pixels.
    min_iou, min_backward_iou: the answer is refused (DISCONTINUITY) when
        its IoU with the neighbour's mask is under ``min_iou`` *and* the
        backward check fails: the answer's box, prompted on the neighbour's
        slice, gives back less than ``min_backward_iou`` (IoU) of the
        neighbour's mask. A real continuation maps back onto where it came
        from; a jump to another structure does not.
    max_intensity_shift: |median intensity of the answer - the key slices'
        object median| / its robust spread (half the 10-90 percentile
        range); above this stops (INTENSITY). None disables the rule.
    min_feature_similarity: cosine similarity between the image encoder's
        features averaged over the answer and over the key slices' masks;
        under this stops (APPEARANCE: the pass has moved onto another kind
        of tissue). 0 disables the rule.
    patience: slices a pass may look past a refused slice: when the slice
        after it (prompted from the last kept mask) passes every rule, the
        refused slice is bridged (re-prompted with the union of its two
        neighbours' boxes) and the pass goes on. 0 stops at the first refusal.
    """

    min_area: int = 4
    min_score: float = 0.0
    max_growth: float = 2.5
    growth_min_area: int = 64
    min_iou: float = 0.4
    min_backward_iou: float = 0.5
    max_intensity_shift: float | None = 2.0
    min_feature_similarity: float = 0.6
    patience: int = 1


@dataclass
class StepAnswer:
    """The chosen answer for one slice, with what the stop rules look at.

    mask: (rows, cols) bool; logits: (rows, cols) float32 (both on the grid
    the answer was decoded on: a frame's crop, then pasted onto the slice);
    score: the model's predicted IoU; iou_prev: IoU with the neighbour's
    mask; area_ratio: area / the neighbour's area; intensity_shift,
    backward_iou, feature_similarity: see :class:`StopRules`; box: the prompt
    box (r0, c0, r1, c1) that produced it; bridged: re-prompted past a
    refused slice (``patience``).
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    iou_prev: float
    area_ratio: float
    intensity_shift: float = 0.0
    box: np.ndarray | None = None
    backward_iou: float = 1.0
    bridged: bool = False
    feature_similarity: float = 1.0


def check_step(rules: StopRules, step: StepAnswer, prev: np.ndarray) -> tuple[StopReason, str] | None:
    """The first stop rule that refuses ``step`` (reason, detail), or None to keep it.

    prev: the neighbour's (rows, cols) bool mask the answer was prompted from.
    """
    r = rules
    area = int(step.mask.sum())
    if area < r.min_area:
        return StopReason.EMPTY, f"mask of {area} px < {r.min_area} px"
    if step.score < r.min_score:
        return StopReason.LOW_SCORE, f"predicted IoU {step.score:.2f} < {r.min_score:.2f}"
    prev_area = int(prev.sum())
    if prev_area >= r.growth_min_area and step.area_ratio > r.max_growth:
        return (StopReason.GROWTH, f"area x{step.area_ratio:.2f} of the neighbour's (> x{r.max_growth:.2f})")
    if step.iou_prev < r.min_iou and step.backward_iou < r.min_backward_iou:
        return StopReason.DISCONTINUITY, (
            f"IoU {step.iou_prev:.2f} with the neighbour (< {r.min_iou:.2f}) "
            f"and backward check {step.backward_iou:.2f} "
            f"(< {r.min_backward_iou:.2f})"
        )
    if r.max_intensity_shift is not None and step.intensity_shift > r.max_intensity_shift:
        return StopReason.INTENSITY, (
            f"median intensity {step.intensity_shift:.1f} spreads from the object's (> {r.max_intensity_shift:.1f})"
        )
    if step.feature_similarity < r.min_feature_similarity:
        return StopReason.APPEARANCE, (
            f"image features {step.feature_similarity:.2f} similar to the key "
            f"slices' object (< {r.min_feature_similarity:.2f})"
        )
    return None


def pooled_features(emb: Embedding, mask: np.ndarray, image_size: int) -> torch.Tensor | None:
    """Mean of the image encoder's features (C,) over a (rows, cols) mask of
    its slice, or None when the mask is empty. image_size: the model's input side."""
    if not mask.any():
        return None
    f = emb.features[0].float()
    _c, h, w = f.shape
    ih, iw = emb.input_size
    m = torch.from_numpy(mask.astype(np.float32))[None, None].to(f.device)
    m = F.interpolate(m, size=(ih, iw), mode="area")
    m = F.pad(m, (0, image_size - iw, 0, image_size - ih))
    m = F.interpolate(m, size=(h, w), mode="area")[0, 0]
    total = float(m.sum())
    if total < 1e-6:
        return None
    return (f * m).sum((1, 2)) / total


@dataclass
class ObjectAppearance:
    """What the object looks like on its key slices: robust intensity
    statistics (median, spread; None when unknown or the INTENSITY rule is
    off), its key-slice masks, and (per frame, computed when first needed)
    the mean image features over those masks (the APPEARANCE rule)."""

    median: float | None
    spread: float | None
    key_masks: dict[int, np.ndarray] = field(default_factory=dict)
    prototypes: dict[Crop, torch.Tensor | None] = field(default_factory=dict)

    def prototype(self, frame: Crop, embedding: Callable[[int], Embedding], image_size: int) -> torch.Tensor | None:
        """Mean features of the key slices' masks seen in ``frame``;
        embedding: slice index -> that slice's embedding of the frame."""
        if frame not in self.prototypes:
            feats = [
                f
                for k, m in sorted(self.key_masks.items())
                if (f := pooled_features(embedding(k), m[frame.slices], image_size)) is not None
            ]
            self.prototypes[frame] = torch.stack(feats).mean(0) if feats else None
        return self.prototypes[frame]

    def shift(self, image: np.ndarray, mask: np.ndarray) -> float:
        """|median of ``image`` under ``mask`` - the object's median| / its spread (0 when unknown)."""
        if self.median is None or self.spread is None:
            return 0.0
        return abs(float(np.median(image[mask])) - self.median) / self.spread
