"""MobileSAM (``vit_t``): the TinyViT-5M encoder distilled from SAM ViT-H,
with SAM's prompt encoder and mask decoder (Zhang et al., "Faster Segment
Anything", 2023). micro-sam's ``vit_t_lm`` / ``vit_t_em_organelles`` are
fine-tuned MobileSAMs with the same layout.

Built from :mod:`napari_sam.models.tiny_vit` (1024 px input, two 3 x 3
stride-2 patch-embedding convolutions, 64 x 64 embedding) and
:mod:`napari_sam.models.sam_decoder`. MobileSAM's preprocessing is SAM's:
longest side 1024, ImageNet mean/std, zero padding.

The official ``mobile_sam.pt`` also holds TinyViT's ImageNet classifier head
(``image_encoder.norm_head.*``, ``image_encoder.head.*``, 1000 classes),
which SAM never runs: those four keys are accepted (shape-checked) and dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoints import load_state_dict
from .layout import check_architecture, load_parts, normalise_keys
from .sam_decoder import build_sam_prompt_decoder
from .sam_family import SamFamilyBackend
from .sam_vit import IMAGENET_MEAN, IMAGENET_STD
from .tiny_vit import TinyViT, TinyViTConfig, fold_batchnorm

IMAGE_SIZE = 1024
#: keys of the official checkpoint that inference does not use, with their shapes
CLASSIFIER_HEAD_KEYS: dict[str, tuple[int, ...]] = {
    "image_encoder.norm_head.weight": (320,),
    "image_encoder.norm_head.bias": (320,),
    "image_encoder.head.weight": (1000, 320),
    "image_encoder.head.bias": (1000,),
}


def build_mobile_sam_modules() -> dict[str, nn.Module]:
    """MobileSAM with random weights: {"image_encoder", "prompt_encoder", "mask_decoder"}.

    Together with :data:`CLASSIFIER_HEAD_KEYS` these give the key layout of
    the official ``mobile_sam.pt``.
    """
    encoder = TinyViT(TinyViTConfig(img_size=IMAGE_SIZE, patch_kernel=3))
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=64, input_size=IMAGE_SIZE)
    return {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}


def load_mobile_sam(
    path: str | Path, name: str, device: torch.device, models_for: dict[str, str] | None = None
) -> SamFamilyBackend:
    """Load a MobileSAM-layout checkpoint (MobileSAM, micro-sam vit_t_*) into a backend."""
    state = normalise_keys(load_state_dict(path))
    check_architecture(path, state, "tiny_vit_1024", name, models_for)
    parts = build_mobile_sam_modules()
    load_parts(path, state, parts, name, ignore_keys=CLASSIFIER_HEAD_KEYS)
    fold_batchnorm(parts["image_encoder"])
    return SamFamilyBackend(
        name,
        parts["image_encoder"],
        parts["prompt_encoder"],
        parts["mask_decoder"],
        IMAGE_SIZE,
        device,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
