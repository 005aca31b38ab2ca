"""Choosing among a box prompt's candidate masks without the predicted-IoU head.

The model's IoU head is not calibrated on images unlike its training data
(on MR it scores every candidate about 0.2), and its single-mask output may
take a sub-part of the object while another candidate is right. A box drawn
tightly around an object says more: the object touches all four of its
sides and lies inside it. :func:`box_fit` scores a candidate by that, and
:func:`choose_candidate` picks the candidate that explains the box best, and
:func:`box_fit_prediction` is the "box_fit" key-slice rule built on it, the one
that the annotation's key slices and the propagation's both apply.
:func:`box_outputs` gives the model's own candidates for a box (its single
output and its three multimask ones): a box-only model's predictor ranks
box hypotheses of the single output only, which never includes them.
:func:`box_fit_key` is the whole key-slice rule for a box under "box_fit":
those candidates, the model's four answers on a magnified crop around a small
box (:func:`napari_sam.zoom.zoomed_box_outputs`; at 256 px an 8 x 4 px box is
answered empty on every candidate), the one that explains the box best, and never an empty
mask for a box the user drew (:func:`box_ellipse` as the last resort).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .geometry import box_of_mask
from .models.base import Backend, Embedding
from .prediction import Prediction

__all__ = [
    "KEY_CHOICES",
    "box_ellipse",
    "box_fit",
    "box_fit_key",
    "box_fit_prediction",
    "box_outputs",
    "needs_zoom",
    "uses_box_fit",
    "ZOOM_BELOW_FIT",
    "choose_candidate",
    "rank_by_box_fit",
]


#: a key mask whose box fit is under this is retried on a magnified crop (:func:`box_fit_key`)
ZOOM_BELOW_FIT = 0.5

#: how a box key slice picks its mask: the model's single answer; that answer unless it explains
#: less than half of the box (:func:`uses_box_fit`); or :func:`box_fit_prediction`
KEY_CHOICES = ("single", "single_fit", "box_fit")


def box_fit(mask: np.ndarray, box: Sequence[float]) -> float:
    """How well a (rows, cols) bool ``mask`` explains a tight ``box`` (r0, c0,
    r1, c1), inclusive pixels, in [0, 1]: the fraction of the mask inside the
    box times how close the mask's extent comes to each of the box's four
    sides (1 when it touches all four; each side's gap counted relative to
    the box's size along that axis). 0 for an empty mask."""
    mb = box_of_mask(mask)
    if mb is None:
        return 0.0
    r0, c0, r1, c1 = (float(v) for v in box)
    h, w = max(r1 - r0 + 1.0, 1.0), max(c1 - c0 + 1.0, 1.0)
    gaps = (abs(mb[0] - r0) / h, abs(mb[2] - r1) / h, abs(mb[1] - c0) / w, abs(mb[3] - c1) / w)
    tight = float(np.prod([max(0.0, 1.0 - g) for g in gaps]))
    ri0, ci0 = int(np.floor(max(r0, 0))), int(np.floor(max(c0, 0)))
    inside = mask[ri0 : int(np.ceil(r1)) + 1, ci0 : int(np.ceil(c1)) + 1].sum() / mask.sum()
    return tight * float(inside)


def choose_candidate(masks: Sequence[np.ndarray], box: Sequence[float]) -> int:
    """Index of the candidate (each a (rows, cols) bool mask) that explains the
    tight ``box`` (r0, c0, r1, c1) best by :func:`box_fit`; the first wins ties."""
    fits = [box_fit(m, box) for m in masks]
    return int(np.argmax(fits))


def box_fit_prediction(
    single: Prediction, many: Prediction, box: Sequence[float], raw: Prediction | None = None
) -> Prediction:
    """A box key slice's candidates, the one that explains ``box`` (r0, c0, r1, c1) best first.

    single: the predictor's single-mask answer to the box; many: its multimask
    answer; raw: the model's own outputs (:func:`box_outputs`), when given.
    The candidates are the single answer, then many's, then raw's, in that
    order (ties go to the earlier); after the best come the next distinct
    ones, three at most. The crop is ``many``'s.
    """
    items = [(single, 0)] + [(many, j) for j in range(len(many.masks))]
    if raw is not None:
        items += [(raw, j) for j in range(len(raw.masks))]
    best = choose_candidate([p.masks[j] for p, j in items], box)
    order = [items[best]]
    for p, j in items:
        if len(order) < 3 and not any(np.array_equal(p.masks[j], q.masks[k]) for q, k in order):
            order.append((p, j))
    return Prediction(
        masks=np.stack([p.masks[j] for p, j in order]),
        scores=np.array([p.scores[j] for p, j in order], np.float32),
        low_res_logits=np.stack([p.low_res_logits[j] for p, j in order]),
        boxes=np.stack([p.boxes[j] for p, j in order]),
        crop=many.crop,
    )


@torch.inference_mode()
def box_outputs(backend: Backend, emb: Embedding, box: Sequence[float]) -> Prediction:
    """The model's four answers to ``box`` (r0, c0, r1, c1) on ``emb``'s slice: its
    single-mask output, then its three multimask outputs (in the model's order)."""
    b = np.asarray(box, np.float32)[None]
    low, scores = backend.decode_all_outputs(emb, b)
    masks = (backend.upsample(low, emb)[0] > 0).cpu().numpy()
    low, scores = low[0], scores[0].float().cpu().numpy()
    return Prediction(
        masks=masks, scores=scores, low_res_logits=low.float().cpu().numpy(), boxes=np.repeat(b, len(masks), 0)
    )


def box_ellipse(box: Sequence[float], slice_shape: tuple[int, int]) -> np.ndarray:
    """The ellipse inscribed in ``box`` (r0, c0, r1, c1, inclusive) as an (H, W) bool mask."""
    r0, c0, r1, c1 = (float(v) for v in box)
    rr, cc = np.ogrid[: slice_shape[0], : slice_shape[1]]
    a, b = max((r1 - r0 + 1) / 2.0, 0.5), max((c1 - c0 + 1) / 2.0, 0.5)
    m = ((rr - (r0 + r1) / 2.0) / a) ** 2 + ((cc - (c0 + c1) / 2.0) / b) ** 2 <= 1.0
    if not m.any():  # a box under a pixel: its nearest pixel
        m[
            int(np.clip(round((r0 + r1) / 2), 0, slice_shape[0] - 1)),
            int(np.clip(round((c0 + c1) / 2), 0, slice_shape[1] - 1)),
        ] = True
    return m


def rank_by_box_fit(pred: Prediction, box: Sequence[float]) -> tuple[Prediction, float]:
    """``pred``'s candidates by :func:`box_fit` (best first, ties keep order) and the best fit."""
    fits = [box_fit(m, box) for m in pred.masks]
    order = np.argsort([-f for f in fits], kind="stable")[:3]
    ranked = Prediction(
        masks=pred.masks[order],
        scores=pred.scores[order],
        low_res_logits=pred.low_res_logits[order],
        boxes=pred.boxes[order],
        crop=pred.crop,
    )
    return ranked, fits[int(order[0])]


def box_fit_key(
    backend: Backend,
    single: Prediction,
    many: Prediction,
    emb: Embedding,
    box: Sequence[float],
    zoomed: Callable[[], Prediction | None] | None = None,
) -> Prediction:
    """The "box_fit" key-slice rule for a box alone, best candidate first.

    single, many: the predictor's single and multimask answers on the slice's
    embedding ``emb``; with the model's own four outputs (:func:`box_outputs`)
    they are ranked by :func:`box_fit_prediction`. zoomed: called only when
    the best of them explains the box poorly (:func:`needs_zoom`), it gives
    the model's answers on a magnified crop around a small box
    (:func:`napari_sam.zoom.zoomed_box_outputs`) or None; the one that
    explains the box better wins (the result then has ``crop`` set). When
    every candidate is empty, the ellipse inscribed in the box is the mask: a
    key slice the user drew a box on is never empty.
    """
    best = box_fit_prediction(single, many, box, box_outputs(backend, emb, box))
    fit = box_fit(best.masks[0], box)
    z = zoomed() if zoomed is not None and needs_zoom(fit) else None
    if z is not None:
        ranked, zfit = rank_by_box_fit(z, box)
        if zfit > fit:
            best, fit = ranked, zfit
    if not best.masks[0].any():
        masks = best.masks.copy()
        masks[0] = box_ellipse(box, emb.original_size)
        best = Prediction(masks, best.scores, best.low_res_logits, best.boxes, best.crop)
    return best


def needs_zoom(fit: float) -> bool:
    """Whether a key mask with box fit ``fit`` is retried on a magnified crop: when it
    explains less than half of its box (:data:`ZOOM_BELOW_FIT`; an empty mask: 0).
    Answers that explain their box well cost no crop embedding, so many small
    objects (box batches) stay cheap."""
    return fit < ZOOM_BELOW_FIT


def uses_box_fit(key_choice: str, single: np.ndarray, box: Sequence[float]) -> bool:
    """Whether a key slice answered by the (rows, cols) bool mask ``single`` (the
    model's single output for a box alone) takes the "box_fit" rule's mask
    (:func:`box_fit_key`): always under "box_fit", never under "single"; under
    "single_fit" (CT volumes, :func:`napari_sam.segmentation.key_choice_for`) when that output
    explains less than half of the box the user drew (:func:`needs_zoom`'s
    bound, fixed a priori): it has then answered a sub-part of the object or a
    neighbour, not the boxed object (on the shared CT the left back muscle's
    single output, box fit 0.07, covers 3% of it)."""
    return key_choice == "box_fit" or (key_choice == "single_fit" and box_fit(single, box) < ZOOM_BELOW_FIT)
