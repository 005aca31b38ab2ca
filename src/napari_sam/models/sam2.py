"""SAM 2 / SAM 2.1 (Hiera-T/S/B+/L) for 2D slices, behind the same Backend protocol.

Our own implementation of the image path of Ravi et al., "SAM 2: Segment
Anything in Images and Videos" (2024), as Meta's ``SAM2ImagePredictor`` runs
it: the Hiera trunk, the FPN neck (lowest level dropped, ``scalp=1``), the
``no_mem_embed`` added to the 64 x 64 features, the high-resolution features
projected by ``conv_s0``/``conv_s1``, SAM 2's prompt encoder (boxes as two
corner points labelled 2 and 3, placed before the clicks, always padded) and
its mask decoder (object-score token, high-resolution skip connections,
sigmoid IoU head, and the single-mask fallback to the best multimask output
when the single mask is unstable).

Why not the ``sam2`` package: Meta does not publish it on PyPI (the ``sam2``
name there is a third-party upload), it needs hydra/iopath and initialises a
global hydra config on import, and its build tries to compile a CUDA
extension. Module and parameter names follow ``facebookresearch/sam2`` so
that the official ``sam2.1_hiera_*.pt`` files (``{"model": state_dict}``)
load without conversion; ``tests/test_models_registry.py`` checks every key
and shape against a manifest made from the reference implementation, and
``tests/test_models_parity.py`` the outputs against it when it is importable.

The video-memory modules of the checkpoint (``memory_attention``,
``memory_encoder``, object pointers, ...) are not used for 2D segmentation:
their keys are accepted and dropped. Volume propagation runs through
napari-sam's own propagation on top of this 2D backend.

Preprocessing (``SAM2Transforms``): the slice resized to 1024 x 1024 without
keeping the aspect ratio, ImageNet mean/std on the [0, 1] scale; low-res
logits resized straight back onto the slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backend, Embedding, rc_to_model_xy
from .checkpoints import load_state_dict
from .layout import check_architecture, load_parts, normalise_keys
from .sam2_hiera import HIERA_CONFIGS, MLP, ImageEncoder
from .sam_decoder import Attention, LayerNorm2d, PromptEncoder
from .sam_vit import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 1024
#: keys of the official checkpoints that belong to the video-memory path
MEMORY_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "mask_downsample.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)


# ----------------------------------------------------------------------------- prompt encoder / decoder


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder with SAM 2's point labels: 2 and 3 are box corners."""

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        points = points + 0.5
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for value in range(4):
            emb = torch.where(lab == value, emb + self.point_embeddings[value].weight, emb)
        return emb


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, i == 0) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class Sam2MaskDecoder(nn.Module):
    """SAM 2.1's mask decoder (object-score token, high-res skips, sigmoid IoU)."""

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer = TwoWayTransformer(2, d, 8, 2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4),
            nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def predict_masks(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor, high_res: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        bsz = sparse.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(bsz, -1, -1), sparse], dim=1)
        src = image_embeddings.expand(bsz, -1, -1, -1) if image_embeddings.shape[0] != bsz else image_embeddings
        src = src + dense
        pos_src = image_pe.expand(bsz, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = up.shape
        masks = (hyper_in @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out), self.pred_obj_score_head(hs[:, 0, :])

    def _dynamic_single(self, masks: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
        """Single-mask output token, or the best multimask output when it is unstable."""
        multi, multi_iou = masks[:, 1:], iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        idx = torch.arange(multi_iou.shape[0], device=iou.device)
        best_masks, best_iou = multi[idx, best].unsqueeze(1), multi_iou[idx, best].unsqueeze(1)
        single, single_iou = masks[:, :1], iou[:, :1]
        flat = single.flatten(-2)
        area_i = (flat > self.stability_delta).sum(-1).float()
        area_u = (flat > -self.stability_delta).sum(-1).float()
        stable = torch.where(area_u > 0, area_i / area_u, torch.ones_like(area_u)) >= self.stability_thresh
        return (
            torch.where(stable[..., None, None].expand_as(single), single, best_masks),
            torch.where(stable.expand_as(single_iou), single_iou, best_iou),
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        high_res_features: tuple[Tensor, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns mask logits (B, K, 4h, 4w), IoU (B, K) and object-score logits (B, 1)."""
        masks, iou, obj = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], obj
        m, s = self._dynamic_single(masks, iou)
        return m, s, obj


class _Parameter(nn.Module):
    """A bare learned tensor (``no_mem_embed``), loadable by its exact key."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(*shape))


def build_sam2_modules(size: str) -> dict[str, nn.Module]:
    """SAM 2.1 Hiera-{t,s,b+,l} image path with random weights.

    Keys: {"image_encoder", "sam_prompt_encoder", "sam_mask_decoder",
    "no_mem_embed"}; with the memory modules (:data:`MEMORY_PREFIXES`) they
    make up the official checkpoint layout.
    """
    if size not in HIERA_CONFIGS:
        raise ValueError(f"unknown SAM 2 size {size!r}; expected one of {sorted(HIERA_CONFIGS)}")
    prompt_encoder = Sam2PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16
    )
    return {
        "image_encoder": ImageEncoder(HIERA_CONFIGS[size]),
        "sam_prompt_encoder": prompt_encoder,
        "sam_mask_decoder": Sam2MaskDecoder(),
        "no_mem_embed": _Parameter(1, 1, 256),
    }


def state_dict_of(parts: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The official-layout state dict of :func:`build_sam2_modules`' modules (image path only)."""
    out: dict[str, Tensor] = {}
    for prefix, module in parts.items():
        if isinstance(module, _Parameter):
            out[prefix] = module.value.detach().clone()
        else:
            out.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return out


class Sam2Backend(Backend):
    """SAM 2's image predictor behind the embed / decode_low_res / upsample protocol.

    Embedding.features: (1, 256, 64, 64) with ``no_mem_embed`` added;
    Embedding.extra: "high_res_s0" (1, 32, 256, 256), "high_res_s1" (1, 64, 128, 128).
    """

    supports_points = True

    def __init__(self, name: str, parts: dict[str, nn.Module], device: torch.device) -> None:
        self.name = name
        self.image_size = IMAGE_SIZE
        self.device = device
        self.image_encoder = parts["image_encoder"].eval().to(device)
        self.prompt_encoder = parts["sam_prompt_encoder"].eval().to(device)
        self.mask_decoder = parts["sam_mask_decoder"].eval().to(device)
        self.no_mem_embed = parts["no_mem_embed"].value.detach().to(device)

    def _prepare(self, image: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        if t.shape[1] == 1:
            t = t.expand(1, 3, *t.shape[2:])
        s = self.image_size
        if tuple(t.shape[-2:]) != (s, s):
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=max(t.shape[-2:]) > s)
        mean, std = (t.new_tensor(IMAGENET_MEAN)[:, None, None], t.new_tensor(IMAGENET_STD)[:, None, None])
        return ((t - mean) / std).contiguous()

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        return self.embed_batch([image])[0]

    @torch.inference_mode()
    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        batch = torch.cat([self._prepare(im) for im in images]).to(self.device)
        s0, s1, s2 = self.image_encoder(batch)
        s0 = self.mask_decoder.conv_s0(s0)
        s1 = self.mask_decoder.conv_s1(s1)
        s2 = s2 + self.no_mem_embed.reshape(1, -1, 1, 1)
        return [
            Embedding(
                features=s2[i : i + 1].clone(),
                original_size=tuple(im.shape[:2]),
                input_size=(self.image_size, self.image_size),
                model=self.name,
                extra={"high_res_s0": s0[i : i + 1].clone(), "high_res_s1": s1[i : i + 1].clone()},
            )
            for i, im in enumerate(images)
        ]

    def upsample(self, low_res: Tensor, embedding: Embedding) -> Tensor:
        """Low-resolution logits (B, K, 256, 256) -> slice logits (B, K, H, W), as SAM 2 does."""
        return F.interpolate(low_res, size=embedding.original_size, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def decode_low_res(
        self,
        embedding: Embedding,
        points_rc: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes_rc: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[Tensor, Tensor]:
        if embedding.model != self.name:
            raise ValueError(f"embedding was made by {embedding.model!r}, not {self.name!r}")
        dev = self.device
        coords, labels = None, None
        if points_rc is not None and np.asarray(points_rc).size:
            xy = rc_to_model_xy(np.asarray(points_rc), embedding.original_size, embedding.input_size)
            coords = torch.from_numpy(xy).to(dev).reshape(-1, xy.shape[-2], 2)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev).reshape(coords.shape[:2])
        if boxes_rc is not None:
            b = np.asarray(boxes_rc, dtype=np.float32).reshape(-1, 2, 2)
            box_xy = torch.from_numpy(rc_to_model_xy(b, embedding.original_size, embedding.input_size)).to(dev)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int64, device=dev).expand(box_xy.shape[0], 2)
            if coords is not None:
                if coords.shape[0] != box_xy.shape[0]:
                    coords, labels = (coords.expand(box_xy.shape[0], -1, -1), labels.expand(box_xy.shape[0], -1))
                coords, labels = (torch.cat([box_xy, coords], dim=1), torch.cat([box_labels, labels], dim=1))
            else:
                coords, labels = box_xy, box_labels
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        points = None if coords is None else (coords, labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=masks)
        high_res = (embedding.extra["high_res_s0"], embedding.extra["high_res_s1"])
        low, scores, _ = self.mask_decoder(
            embedding.features, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask, high_res
        )
        return low, scores


def load_sam2(
    path: str | Path, size: str, name: str, device: torch.device, models_for: dict[str, str] | None = None
) -> Sam2Backend:
    """Load an official SAM 2 / 2.1 checkpoint ({"model": state_dict}) for 2D segmentation.

    size: "t", "s", "b+" or "l". The video-memory keys are accepted and dropped.
    """
    state = normalise_keys(load_state_dict(path))
    check_architecture(path, state, f"sam2_hiera_{size}", name, models_for)
    parts = build_sam2_modules(size)
    load_parts(path, state, parts, name, ignore_prefixes=MEMORY_PREFIXES)
    return Sam2Backend(name, parts, device)
