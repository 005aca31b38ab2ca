"""The backend shared by models built as SAM is: an image encoder, SAM's
prompt encoder and SAM's mask decoder (SAM, MedSAM, MobileSAM, micro-sam,
LiteMedSAM). Subclasses only build the encoder and load the weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Backend, Embedding, logits_to_slice, rc_to_model_xy, to_model_input


class SamFamilyBackend(Backend):
    """Embed with ``image_encoder``; decode with SAM's prompt encoder and mask decoder.

    image_size: side of the square model input; mean/std: per-channel
    normalisation on the [0, 1] scale, or None when the model takes [0, 1].
    """

    def __init__(self, name: str, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, image_size: int, device: torch.device,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 supports_points: bool = True) -> None:
        self.name = name
        self.image_encoder = image_encoder.eval().to(device)
        self.prompt_encoder = prompt_encoder.eval().to(device)
        self.mask_decoder = mask_decoder.eval().to(device)
        self.image_size = image_size
        self.device = device
        self.mean, self.std = mean, std
        self.supports_points = supports_points

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        return to_model_input(image, self.image_size, self.mean, self.std)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        return self.embed_batch([image])[0]

    @torch.inference_mode()
    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        prepared = [self._prepare(im) for im in images]
        batch = torch.cat([p[0] for p in prepared]).to(self.device)
        feats = self.image_encoder(batch)
        return [
            Embedding(features=feats[i: i + 1].clone(), original_size=tuple(im.shape[:2]),
                      input_size=p[1], model=self.name)
            for i, (im, p) in enumerate(zip(images, prepared))
        ]

    def upsample(self, low_res: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-resolution logits (B, K, s, s) -> logits on the slice grid (B, K, H, W)."""
        return logits_to_slice(low_res, embedding.input_size, self.image_size, embedding.original_size)

    @torch.inference_mode()
    def decode_low_res(self, embedding: Embedding, points_rc: np.ndarray | None = None,
                       point_labels: np.ndarray | None = None, boxes_rc: np.ndarray | None = None,
                       mask_input: np.ndarray | None = None,
                       multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode without the final resize: low-resolution logits (B, K, s, s)
        in the padded model frame, and predicted IoU scores (B, K)."""
        if embedding.model != self.name:
            raise ValueError(f"embedding was made by {embedding.model!r}, not {self.name!r}")
        dev = self.device
        points = None
        if points_rc is not None and np.asarray(points_rc).size:
            xy = rc_to_model_xy(np.asarray(points_rc), embedding.original_size, embedding.input_size)
            points = (torch.from_numpy(xy).to(dev),
                      torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev))
        boxes = None
        if boxes_rc is not None:
            b = np.asarray(boxes_rc, dtype=np.float32).reshape(-1, 2, 2)
            boxes = torch.from_numpy(rc_to_model_xy(b, embedding.original_size, embedding.input_size)
                                     .reshape(-1, 4)).to(dev)
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low, scores = self.mask_decoder(
            image_embeddings=embedding.features, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
        return low, scores
