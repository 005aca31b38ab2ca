"""The backend protocol every model family implements, and its shared pieces.

A backend does two things:

- ``embed(image)``: one 2D slice, already mapped to what the model sees
  (float32 in [0, 1], shape (H, W) or (H, W, 3)), into an :class:`Embedding`;
- ``decode(embedding, prompts)``: an embedding plus prompts in the slice's
  pixel grid into :class:`Decoded` candidate masks, their predicted quality
  scores and low-resolution logits.

Coordinates: every point and box that enters a backend is in napari's order,
(row, col) in pixels of the slice, with boxes as (r0, c0, r1, c1) inclusive.
The one conversion to the model's (x, y) is :func:`rc_to_model_xy`.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Embedding:
    """One slice's image embedding.

    features: (1, C, h, w) float tensor on the model's device.
    original_size: (H, W) of the slice in pixels.
    input_size: (h', w') of the resized slice inside the padded model input.
    model: the backend's name (an embedding is only valid for that model).
    extra: model-specific tensors (e.g. SAM 2's high-resolution features).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    """Candidate masks for a batch of prompts.

    masks: (B, K, H, W) bool on the slice's pixel grid.
    scores: (B, K) float32, the model's predicted IoU of each mask.
    low_res_logits: (B, K, s, s) float32 logits in the model's input frame,
        usable as the next ``mask_input``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


def resized_shape(original_size: tuple[int, int], target: int) -> tuple[int, int]:
    """(H, W) scaled so that the longest side is ``target`` (SAM's rule)."""
    h, w = original_size
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def rc_to_model_xy(coords_rc: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """The one conversion from napari's (row, col) to the model's (x, y).

    coords_rc: (..., 2) array of (row, col) pixel coordinates in the slice.
    Returns (..., 2) float32 (x, y) in model-input pixels.
    """
    coords_rc = np.asarray(coords_rc, dtype=np.float32)
    sy = input_size[0] / original_size[0]
    sx = input_size[1] / original_size[1]
    return np.stack([coords_rc[..., 1] * sx, coords_rc[..., 0] * sy], axis=-1).astype(np.float32)


def to_model_input(
    image: np.ndarray,
    target: int,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A slice in [0, 1] -> (1, 3, target, target) float tensor, resized longest side and padded.

    image: (H, W) or (H, W, 3) float32 in [0, 1]. mean/std, when given, are
    applied per channel on the [0, 1] scale (SAM ViT uses ImageNet statistics).
    Returns the tensor and the (h', w') size of the image inside the padding.
    """
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    if t.shape[1] == 1:
        t = t.expand(1, 3, *t.shape[2:])
    h, w = resized_shape(tuple(image.shape[:2]), target)
    if (h, w) != tuple(image.shape[:2]):
        mode = "area" if h < image.shape[0] else "bilinear"
        t = F.interpolate(t, size=(h, w), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    if mean is not None and std is not None:
        t = (t - t.new_tensor(mean)[:, None, None]) / t.new_tensor(std)[:, None, None]
    t = F.pad(t, (0, target - w, 0, target - h))
    return t.contiguous(), (h, w)


def logits_to_slice(
    low_res: torch.Tensor, input_size: tuple[int, int], model_size: int, original_size: tuple[int, int]
) -> torch.Tensor:
    """Low-resolution logits (B, K, s, s) -> logits on the slice grid (B, K, H, W).

    The logits cover the padded model input; the padding is cropped before the
    bilinear resize, so that masks land exactly on the slice's pixels.
    """
    s = low_res.shape[-1]
    if s != model_size:
        low_res = F.interpolate(low_res, size=(model_size, model_size), mode="bilinear", align_corners=False)
    cropped = low_res[..., : input_size[0], : input_size[1]]
    return F.interpolate(cropped, size=original_size, mode="bilinear", align_corners=False)


#: identical slices are recognised among the last this many distinct ones of a sequence
_RECENT_SLICES = 8


def image_key(image: np.ndarray) -> bytes:
    """Identity of a slice's content (shape, dtype and bytes): equal keys, equal embeddings."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(f"{a.shape}|{a.dtype}".encode(), digest_size=20)
    h.update(a.data)
    return h.digest()


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class Backend(ABC):
    """One model family behind the embed/decode protocol."""

    name: str
    #: side of the square model input in pixels
    image_size: int
    #: whether the model was trained with point prompts (else the predictor
    #: turns clicks into box hypotheses)
    supports_points: bool = True
    #: whether :meth:`decode_low_res` takes ``windows``: each prompt's logits only inside
    #: a window of the embedding's tokens (:mod:`napari_sam.models.windows`)
    decodes_windows: bool = False
    device: torch.device

    @abstractmethod
    def embed(self, image: np.ndarray) -> Embedding:
        """image: (H, W) or (H, W, 3) float32 in [0, 1] -> Embedding."""

    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        """Several slices of equal shape in one forward pass where the model allows."""
        return [self.embed(im) for im in images]

    def embed_many(
        self, images: Iterable[np.ndarray], workers: int | None = None, prefetch: int = 2
    ) -> Iterator[Embedding]:
        """Embed a sequence of slices; yields their embeddings in order.

        images: an iterable of (H, W) or (H, W, 3) float32 slices in [0, 1]; it
            is read ahead (up to ``workers + prefetch`` slices) on the calling
            thread while the encoder runs, so a lazy iterable overlaps its I/O
            and windowing with encoding.
        workers: slices encoded at once, each by its own thread. On the CPU the
            default is one worker per core (at most 4), each with its share of
            PyTorch's threads: whole slices in parallel scale better than the
            operators' internal threads and do not stall when another program
            takes a core. 1 on other devices.
        A slice whose content equals an earlier one in the sequence is not
        encoded again: it gets the same Embedding.
        """
        if workers is None:
            workers = min(cpu_cores(), 4) if self.device.type == "cpu" else 1
        workers = max(1, int(workers))
        threads_before = torch.get_num_threads()
        if workers > 1 and self.device.type == "cpu":
            torch.set_num_threads(max(1, threads_before // workers))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="napari-sam-embed") if workers > 1 else None
        pending: deque[tuple[bytes, Future[Embedding] | Embedding]] = deque()
        recent: OrderedDict[bytes, Future[Embedding] | Embedding] = OrderedDict()  # bounded: memory
        it = iter(images)
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < workers + prefetch:
                    try:
                        image = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    key = image_key(image)
                    if key in recent:
                        recent.move_to_end(key)
                    else:
                        recent[key] = pool.submit(self.embed, image) if pool is not None else self.embed(image)
                        while len(recent) > _RECENT_SLICES:
                            recent.popitem(last=False)
                    pending.append((key, recent[key]))
                if not pending:
                    return
                key, item = pending.popleft()
                emb = item.result() if isinstance(item, Future) else item
                if recent.get(key) is item:
                    recent[key] = emb
                yield emb
        finally:
            if pool is not None:
                for _, item in pending:
                    if isinstance(item, Future):
                        item.cancel()
                pool.shutdown(wait=True)
            torch.set_num_threads(threads_before)

    @abstractmethod
    def decode_low_res(
        self,
        embedding: Embedding,
        points_rc: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_rc: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of B prompts on one embedding, without the final resize.

        points_rc: (B, N, 2) (row, col); point_labels: (B, N) with 1 positive,
            0 negative; boxes_rc: (B, 4) (r0, c0, r1, c1) inclusive;
            mask_input: (B, 1, s, s) logits from an earlier decode.
        multimask: 3 candidate masks per prompt instead of 1.
        Returns low-resolution logits (B, K, s, s) in the padded model frame
        and predicted IoU scores (B, K).
        """

    @torch.inference_mode()
    def decode_all_outputs(
        self, embedding: Embedding, boxes_rc: np.ndarray, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask output for a batch of B boxes: low-resolution logits (B, 4, s, s)
        and predicted IoU (B, 4), the single output then the three candidates.
        Here two decodes; a backend that has them in one pass overrides it. ``kw``
        goes to :meth:`decode_low_res` (e.g. ``windows``)."""
        low1, s1 = self.decode_low_res(embedding, boxes_rc=boxes_rc, multimask=False, **kw)
        low3, s3 = self.decode_low_res(embedding, boxes_rc=boxes_rc, multimask=True, **kw)
        return torch.cat([low1[:, :1], low3], dim=1), torch.cat([s1[:, :1], s3], dim=1)

    @abstractmethod
    def upsample(self, low_res: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-resolution logits (B, K, s, s) -> slice-grid logits (B, K, H, W)."""

    @torch.inference_mode()
    def decode(
        self,
        embedding: Embedding,
        points_rc: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_rc: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Decoded:
        """:meth:`decode_low_res` plus the resize onto the slice's pixel grid."""
        low, scores = self.decode_low_res(embedding, points_rc, point_labels, boxes_rc, mask_input, multimask)
        logits = self.upsample(low, embedding)
        return Decoded(
            masks=(logits > 0).cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            low_res_logits=low.float().cpu().numpy(),
        )
