"""Small objects: embed a crop around them at the model's full input size.

A model with a 256 px input sees a 512 px slice at half resolution, so a
15 px nucleus shrinks to about 7 px and its outline is lost. The zoom path
embeds a *crop* around the object instead, resized up to the model's input
size, decodes the prompt there and maps the mask back onto the slice.

Crops are quantised so that their embeddings can be shared and cached: the
crop side comes from a ladder (``min_crop``, 2x, 4x, ...) chosen so that the
object's box fills about ``object_fraction`` of it, and crops of one side sit
on a grid of stride side / 2. Neighbouring small objects therefore fall into
the same crop and cost one encoder run between them; their embeddings come from
:class:`napari_sam.embeddings.CropEmbeddings` (the one embedding provider,
keyed by the slice's identity and the crop).

Coordinates are (row, col) pixels of the slice; boxes (r0, c0, r1, c1)
inclusive; a :class:`napari_sam.geometry.Crop` is (top, left, height, width)
in slice pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .candidates import box_outputs
from .embeddings import CropEmbeddings
from .errors import InputError
from .geometry import Crop, box_of_mask
from .models.base import Backend, Embedding
from .prediction import Prediction
from .prompts import SlicePrompt


@dataclass(frozen=True)
class ZoomSettings:
    """When and how far to zoom.

    object_fraction: the longer side of the object's box fills at most this
        fraction of the crop side (the rest is context the model needs).
    min_crop: smallest crop side in slice pixels; the crop is resized up to the
        model's input, so this bounds the magnification (256 / 64 = 4x for the
        embedded model).
    min_gain: zoom only when the crop is at least this many times smaller than
        the slice's longer side (smaller gains are not worth an encoder run).
    quantize: snap crops to the shared grid (cacheable; neighbours share a
        crop); False centres the crop on the object.
    """

    object_fraction: float = 0.4
    min_crop: int = 64
    min_gain: float = 1.5
    quantize: bool = True

    def __post_init__(self) -> None:
        if not 0.05 <= self.object_fraction <= 0.9:
            raise InputError(f"zoom object_fraction {self.object_fraction}: expected 0.05..0.9")
        if self.min_crop < 8:
            raise InputError(f"zoom min_crop {self.min_crop}: expected at least 8 pixels")
        if self.min_gain < 1.0:
            raise InputError(f"zoom min_gain {self.min_gain}: expected >= 1")


def crop_side(box_side: float, settings: ZoomSettings) -> int:
    """The ladder side (min_crop * 2^k) whose ``object_fraction`` holds ``box_side`` pixels."""
    need = max(float(box_side), 1.0) / settings.object_fraction
    side = settings.min_crop
    while side < need:
        side *= 2
    return int(side)


def _axis_start(lo: float, hi: float, side: int, extent: int, quantize: bool) -> int:
    """Start of a crop of ``side`` along an axis of ``extent`` holding [lo, hi]."""
    if side >= extent:
        return 0
    centre = (lo + hi) / 2.0
    if not quantize:
        return int(np.clip(round(centre - side / 2.0), 0, extent - side))
    stride = side // 2
    best, best_dist = None, np.inf
    k_max = int(np.ceil((extent - side) / stride))
    for k in range(max(0, int(lo // stride) - 2), min(k_max, int(hi // stride) + 1) + 1):
        start = min(k * stride, extent - side)
        if start <= lo and hi <= start + side - 1:
            d = abs(start + (side - 1) / 2.0 - centre)
            if d < best_dist:
                best, best_dist = start, d
    if best is None:  # the box is wider than the grid allows: centre it
        best = int(np.clip(round(centre - side / 2.0), 0, extent - side))
    return int(best)


def zoom_crop(
    box: tuple[float, float, float, float] | np.ndarray,
    slice_shape: tuple[int, int],
    settings: ZoomSettings = ZoomSettings(),
) -> Crop | None:
    """The crop to embed for a prompt box, or None when zooming would not help.

    box: (r0, c0, r1, c1) inclusive, slice pixels; slice_shape: (H, W).
    Returns a crop that holds the box, or None when the box is too large for
    a crop at least ``min_gain`` times smaller than the slice.
    """
    H, W = (int(v) for v in slice_shape)
    r0, c0, r1, c1 = (float(v) for v in box)
    side = crop_side(max(r1 - r0 + 1, c1 - c0 + 1), settings)
    if side * settings.min_gain > max(H, W):
        return None
    top = _axis_start(r0, r1, side, H, settings.quantize)
    left = _axis_start(c0, c1, side, W, settings.quantize)
    return Crop(top, left, min(side, H), min(side, W))


def extent_boxes(boxes_rc: np.ndarray, embedding: Embedding) -> np.ndarray:
    """Inclusive pixel boxes -> the boxes to give the backend so that the box
    covers the object's whole extent in the model's frame.

    A box (r0, c0, r1, c1) of inclusive pixel indices spans rows r0 .. r1 + 1
    (pixel edges). :func:`napari_sam.models.base.rc_to_model_xy` scales
    coordinates by s = model pixels per slice pixel, so the far corner would
    land on model pixel s * r1 although the object reaches s * (r1 + 1) - 1.
    Moving the far corner to r1 + 1 - 1 / s makes it land exactly there: a
    tight box in the slice stays a tight box for the model at any zoom
    (it matters when a crop is magnified: s = 2 adds a model pixel).
    boxes_rc: (B, 4) float; returns (B, 4) float32.
    """
    b = np.array(boxes_rc, dtype=np.float32).reshape(-1, 4)
    sy = embedding.input_size[0] / embedding.original_size[0]
    sx = embedding.input_size[1] / embedding.original_size[1]
    b[:, 2] = np.maximum(b[:, 0], b[:, 2] + 1.0 - 1.0 / sy)
    b[:, 3] = np.maximum(b[:, 1], b[:, 3] + 1.0 - 1.0 / sx)
    return b


@dataclass(frozen=True)
class ZoomedMasks:
    """Masks decoded in a crop and mapped back onto the slice.

    masks: (B, K, H, W) bool on the slice; scores: (B, K) predicted IoU;
    crop_logits: (B, K, height, width) float32 logits on the crop's pixels;
    low_res_logits: (B, K, s, s) float32 logits in the crop's model frame.
    """

    masks: np.ndarray
    scores: np.ndarray
    crop_logits: np.ndarray
    low_res_logits: np.ndarray
    crop: Crop


@torch.inference_mode()
def decode_boxes_in_crop(
    backend: Backend,
    embedding: Embedding,
    crop: Crop,
    boxes_rc: np.ndarray,
    slice_shape: tuple[int, int],
    multimask: bool = False,
) -> ZoomedMasks:
    """Decode box prompts on a crop's embedding and map the masks onto the slice.

    boxes_rc: (B, 4) (r0, c0, r1, c1) inclusive in *slice* pixels (clipped to
    the crop). Returns masks on the slice, zero outside the crop.
    """
    boxes = crop.box_to_crop(np.asarray(boxes_rc, np.float32).reshape(-1, 4))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, crop.height - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, crop.width - 1)
    low, scores = backend.decode_low_res(embedding, boxes_rc=extent_boxes(boxes, embedding), multimask=multimask)
    logits = backend.upsample(low, embedding).float().cpu().numpy()
    return ZoomedMasks(
        masks=crop.paste(logits > 0, slice_shape, False),
        scores=scores.float().cpu().numpy(),
        crop_logits=logits,
        low_res_logits=low.float().cpu().numpy(),
        crop=crop,
    )


def predict_zoomed(
    backend: Backend,
    clicks,
    crops: CropEmbeddings,
    image01: np.ndarray,
    image_key: str | None,
    whole: Embedding,
    prompt,
    previous: np.ndarray | None,
    multimask: bool,
    settings: ZoomSettings,
):
    """The zoom path of :meth:`napari_sam.predictor.SlicePredictor.predict`.

    The object's extent comes from the prompt's box (grown to take in its
    positive clicks) or, for clicks alone, from the whole-slice answer. When
    that extent is small enough for :func:`zoom_crop`, the prompt is decoded
    on the crop's embedding (a box alone directly, with the box's extent kept
    exact; clicks through the predictor's click strategy, seeded with the
    whole-slice mask) and the masks are mapped back. When zooming does not
    apply or the zoomed mask runs into the crop's edge (the object is larger
    than it looked), the whole-slice answer is the right one: returned for
    clicks alone (already computed, never twice), None for a box.
    """
    shape = tuple(whole.original_size)
    box, first = _object_extent(clicks, whole, prompt, previous, multimask)
    crop = None if box is None else zoom_crop(box, shape, settings)
    if crop is None:
        return first
    emb = crops.get(image01, crop, image_key)
    seed = previous if previous is not None else (None if first is None else first.mask)
    masks, scores, low, boxes = _decode_in_crop(backend, clicks, emb, crop, prompt, box, seed, multimask, shape)
    if not masks[0].any() or crop.touches_inner_border(masks[0][crop.slices], shape):
        return first
    return Prediction(
        masks=masks,
        scores=np.asarray(scores, np.float32),
        low_res_logits=low,
        boxes=np.asarray(boxes, np.float32),
        crop=crop,
    )


def _object_extent(clicks, whole: Embedding, prompt: SlicePrompt, previous: np.ndarray | None, multimask: bool):
    """(box, first): the object's extent (r0, c0, r1, c1) float32 to zoom on, or None
    when there is none, and the whole-slice answer for clicks alone (else None).

    The extent is the prompt's box, or for clicks alone the whole-slice answer's
    box, grown to take in the positive clicks.
    """
    first = None
    if prompt.box is not None:
        box = np.asarray(prompt.box, np.float32)
    else:
        if not len(prompt.positive):
            return None, None
        first = clicks.predict(whole, prompt, previous=previous, multimask=multimask)
        mb = box_of_mask(first.mask)
        if mb is None:
            return None, first
        box = np.asarray(mb, np.float32)
    if len(prompt.positive):
        pos = prompt.positive
        box = np.array(
            [
                min(box[0], pos[:, 0].min()),
                min(box[1], pos[:, 1].min()),
                max(box[2], pos[:, 0].max()),
                max(box[3], pos[:, 1].max()),
            ],
            np.float32,
        )
    return box, first


def _decode_in_crop(
    backend: Backend,
    clicks,
    emb: Embedding,
    crop: Crop,
    prompt: SlicePrompt,
    box: np.ndarray,
    seed: np.ndarray | None,
    multimask: bool,
    shape: tuple[int, int],
):
    """The prompt decoded on the crop's embedding ``emb``, mapped back to the slice
    (``shape``): (masks (K, H, W), scores, low-res logits, boxes). A box alone is
    decoded directly (its extent ``box`` kept exact); clicks go through the click
    strategy, refining ``seed`` (a (rows, cols) mask of the slice, or None)."""
    if prompt.box is not None and not len(prompt.points):
        z = decode_boxes_in_crop(backend, emb, crop, box[None], shape)
        return z.masks[0], z.scores[0], z.low_res_logits[0], box[None].astype(np.float32)
    local = SlicePrompt(
        points=crop.points_to_crop(prompt.points),
        labels=prompt.labels,
        box=None if prompt.box is None else tuple(crop.box_to_crop(box)),
    )
    pred = clicks.predict(emb, local, previous=None if seed is None else seed[crop.slices], multimask=multimask)
    masks = crop.paste(pred.masks, shape, False)
    return masks, pred.scores, pred.low_res_logits, crop.box_from_crop(pred.boxes)


#: the crop a small key-slice box is also answered on
#: (:func:`napari_sam.candidates.box_fit_key`): centred on the box, which fills
#: at most 0.4 of it, at least 64 px, and only where that magnifies the slice
#: at least 1.5 times (the prompt zoom's settings)
KEY_ZOOM = ZoomSettings(quantize=False)


@torch.inference_mode()
def zoomed_box_outputs(
    backend: Backend,
    crop_embedding: Callable[[Crop], Embedding],
    box: Sequence[float],
    slice_shape: tuple[int, int],
    settings: ZoomSettings | None = None,
) -> Prediction | None:
    """The model's four answers to ``box`` (r0, c0, r1, c1, slice pixels) decoded on
    a magnified crop around it (:func:`napari_sam.zoom.zoom_crop`), masks pasted
    back onto the (H, W) slice; None when the box is too large to gain from a crop.
    crop_embedding: a :class:`~napari_sam.geometry.Crop` of the slice -> its
    embedding; settings: default :data:`KEY_ZOOM`."""
    crop = zoom_crop(box, slice_shape, settings or KEY_ZOOM)
    if crop is None:
        return None
    local = crop.box_to_crop(np.asarray(box, np.float32))
    local[[0, 2]] = np.clip(local[[0, 2]], 0, crop.height - 1)
    local[[1, 3]] = np.clip(local[[1, 3]], 0, crop.width - 1)
    out = box_outputs(backend, crop_embedding(crop), local)
    return Prediction(
        masks=crop.paste(out.masks, slice_shape, False),
        scores=out.scores,
        low_res_logits=out.low_res_logits,
        boxes=np.repeat(np.asarray(box, np.float32)[None], len(out.masks), 0),
        crop=crop,
    )
