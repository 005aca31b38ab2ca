"""SAM's ViT image encoder (ViT-B/L/H) and the SAM ViT family of backends:
Meta's SAM, MedSAM and micro-sam's ViT models.

Our own implementation of the encoder of Kirillov et al., "Segment Anything"
(2023): a plain ViT with 16 px patches, windowed attention (14 x 14) in most
blocks, global attention in four, decomposed relative position biases, and a
convolutional neck to 256 channels at 1/16 resolution. Module and parameter
names follow ``segment_anything.modeling.ImageEncoderViT``, so Meta's,
MedSAM's and micro-sam's checkpoints load as they are, strictly.
``tests/test_models_registry.py`` checks keys and shapes against a manifest
made from the official ``segment-anything`` package, and
``tests/test_models_parity.py`` the outputs against it when it is installed.

Speed and memory: attention runs through ``scaled_dot_product_attention`` with
the relative-position bias as an additive mask; global attention (4096 tokens)
is computed a few heads at a time, so the (heads, 4096, 4096) bias never
exists all at once.

Preprocessing, as each model was trained:

- SAM and micro-sam: longest side resized to 1024, ImageNet mean/std on the
  [0, 1] scale (Meta's ``pixel_mean``/``pixel_std`` on 0-255 divided by 255),
  zero padding bottom/right;
- MedSAM: the slice resized to 1024 x 1024 without keeping the aspect ratio,
  [0, 1] intensities, no mean/std (``MedSAM_Inference.py`` calls the image
  encoder directly on the min-max normalised image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import load_state_dict
from .layout import check_architecture, load_parts, normalise_keys
from .sam_decoder import LayerNorm2d, MLPBlock, build_sam_prompt_decoder
from .sam_family import SamFamilyBackend

#: ImageNet statistics on the [0, 1] scale (= SAM's pixel_mean/std / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 1024


@dataclass(frozen=True)
class SamViTConfig:
    """Hyper-parameters of SAM's ViT encoder (Meta's ``build_sam_vit_*``)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = IMAGE_SIZE
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256


SAM_VIT_CONFIGS: dict[str, SamViTConfig] = {
    "vit_b": SamViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def _window_partition(x: Tensor, ws: int) -> tuple[Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def _window_unpartition(windows: Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // ws // ws)
    x = windows.reshape(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if (hp > h or wp > w) else x


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position biases (MViTv2)."""

    #: (batch x heads) computed at once in global attention; bounds the bias memory
    chunk = 4

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.input_size = input_size

    @staticmethod
    def _rel_index(size: int, device: torch.device) -> Tensor:
        r = torch.arange(size, device=device)
        return r[:, None] - r[None, :] + (size - 1)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        if (h, w) != self.input_size:
            raise ValueError(f"attention window {(h, w)} != {self.input_size}")
        rh = self.rel_pos_h[self._rel_index(h, x.device)]  # (h, h, c)
        rw = self.rel_pos_w[self._rel_index(w, x.device)]  # (w, w, c)
        step = b * self.num_heads if n <= 1024 else self.chunk
        out = torch.empty_like(q)
        for s in range(0, q.shape[0], step):
            qc = q[s : s + step]
            r_q = qc.reshape(-1, h, w, qc.shape[-1])
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(-1, n, n)
            out[s : s + step] = F.scaled_dot_product_attention(qc, k[s : s + step], v[s : s + step], attn_mask=bias)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block, windowed (window_size > 0) or global."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = _window_partition(x, self.window_size)
            x = _window_unpartition(self.attn(x), self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: (B, 3, 1024, 1024) -> (B, 256, 64, 64)."""

    def __init__(self, cfg: SamViTConfig, in_chans: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                0 if i in cfg.global_attn_indexes else cfg.window_size,
                (grid, grid),
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_sam_vit_modules(variant: str) -> dict[str, nn.Module]:
    """SAM ViT-{B,L,H} with random weights: {"image_encoder", "prompt_encoder", "mask_decoder"}.

    The state dict of ``nn.ModuleDict(build_sam_vit_modules(v))`` has exactly
    the keys and shapes of Meta's ``sam_vit_*.pth``.
    """
    if variant not in SAM_VIT_CONFIGS:
        raise ValueError(f"unknown SAM ViT variant {variant!r}; expected one of {sorted(SAM_VIT_CONFIGS)}")
    encoder = ImageEncoderViT(SAM_VIT_CONFIGS[variant])
    prompt_encoder, mask_decoder = build_sam_prompt_decoder(embedding_size=IMAGE_SIZE // 16, input_size=IMAGE_SIZE)
    return {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}


class MedSamBackend(SamFamilyBackend):
    """MedSAM's preprocessing: the slice stretched to 1024 x 1024, [0, 1], no mean/std.

    ``input_size`` is then (1024, 1024), so :func:`rc_to_model_xy` scales rows
    and columns separately (as MedSAM scales its boxes by 1024/H and 1024/W)
    and the logits are resized back onto the slice without cropping.
    """

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        if t.shape[1] == 1:
            t = t.expand(1, 3, *t.shape[2:])
        s = self.image_size
        if tuple(t.shape[-2:]) != (s, s):
            down = max(t.shape[-2:]) > s
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=down)
        return t.contiguous(), (s, s)


def load_sam_vit(
    path: str | Path,
    variant: str,
    name: str,
    device: torch.device,
    preprocessing: str = "sam",
    models_for: dict[str, str] | None = None,
) -> SamFamilyBackend:
    """Load a SAM ViT checkpoint (Meta's key layout) into a backend.

    path: checkpoint file (torch pickle read with weights_only=True, or
        .safetensors); micro-sam training checkpoints ({"model_state": ...},
        keys prefixed "sam.") are accepted too.
    variant: "vit_b", "vit_l" or "vit_h".
    preprocessing: "sam" (longest side + ImageNet mean/std) or "medsam"
        (stretched to 1024 x 1024, [0, 1]).
    """
    state = normalise_keys(load_state_dict(path))
    check_architecture(path, state, f"sam_{variant}", name, models_for)
    parts = build_sam_vit_modules(variant)
    load_parts(path, state, parts, name)
    if preprocessing == "medsam":
        return MedSamBackend(
            name, parts["image_encoder"], parts["prompt_encoder"], parts["mask_decoder"], IMAGE_SIZE, device
        )
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
