"""Many box-only prompts on one slice: decoded together, kept small.

A prompts file may hold thousands of objects, each a single box on some
slice (e.g. every nucleus of a micrograph). Decoding them one at a time costs
one decoder call and one full-slice mask each; here the boxes of one slice
go through the decoder in batches, and each object's mask is kept cropped to
its bounding box (:class:`CroppedMask`), so memory grows with the objects'
areas rather than with the number of objects times the slice size.

The masks are those :meth:`napari_sam.clicks.ClickSegmenter.predict` gives for a
box alone with ``multimask=False`` (the box clipped to the slice for
box-only models, the model's answer taken as it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models.base import Backend, Embedding
from .prompts import SlicePrompt

#: boxes per decoder call (bounds the (B, H, W) upsampled logits held at once)
BATCH = 32


@dataclass(frozen=True)
class CroppedMask:
    """A (rows, cols) bool mask stored as its bounding-box crop: ``crop`` is
    ``mask[r0:r0 + h, c0:c0 + w]`` at ``offset`` (r0, c0) on a slice of ``shape``."""

    crop: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def of(cls, mask: np.ndarray) -> CroppedMask:
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return cls(np.zeros((0, 0), bool), (0, 0), tuple(mask.shape))  # type: ignore[arg-type]
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(np.ascontiguousarray(mask[r0:r1, c0:c1]), (int(r0), int(c0)), tuple(mask.shape))  # type: ignore

    def any(self) -> bool:
        return bool(self.crop.any())

    def full(self) -> np.ndarray:
        """The (rows, cols) bool mask."""
        out = np.zeros(self.shape, bool)
        self.paint_into(out, True)
        return out

    def paint_into(self, target: np.ndarray, value, only_where_zero: bool = False) -> None:
        """Write ``value`` into ``target`` (rows, cols) where the mask is set
        (and, with ``only_where_zero``, where ``target`` is still 0)."""
        h, w = self.crop.shape
        if h == 0:
            return
        r0, c0 = self.offset
        view = target[r0 : r0 + h, c0 : c0 + w]
        sel = self.crop & (view == 0) if only_where_zero else self.crop
        view[sel] = value


def is_plain_box(prompt: SlicePrompt) -> bool:
    """A box and no clicks: the prompts this module batches."""
    return prompt.box is not None and len(prompt.points) == 0


def _clip(box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    r0, c0, r1, c1 = box
    r0, r1 = np.clip([r0, r1], 0, h - 1)
    c0, c1 = np.clip([c0, c1], 0, w - 1)
    return np.array([min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)], np.float32)


@torch.inference_mode()
def decode_boxes(
    backend: Backend, emb: Embedding, boxes: list[tuple[float, float, float, float]], batch: int = BATCH
) -> list[CroppedMask]:
    """One mask per box (r0, c0, r1, c1), inclusive pixel indices on ``emb``'s slice.

    Returns :class:`CroppedMask` s in the order of ``boxes``.
    """
    out: list[CroppedMask] = []
    shape = tuple(emb.original_size)
    for s in range(0, len(boxes), batch):
        chunk = boxes[s : s + batch]
        if backend.supports_points:
            arr = np.asarray(chunk, np.float32).reshape(-1, 4)
        else:
            arr = np.stack([_clip(b, shape) for b in chunk])  # type: ignore[arg-type]
        low, _ = backend.decode_low_res(emb, boxes_rc=arr, multimask=False)
        masks = (backend.upsample(low[:, :1], emb)[:, 0] > 0).cpu().numpy()
        out.extend(CroppedMask.of(m) for m in masks)
    return out
