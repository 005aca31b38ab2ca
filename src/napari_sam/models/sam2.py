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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backend, Embedding, rc_to_model_xy
from .checkpoints import load_state_dict
from .layout import check_architecture, load_parts, normalise_keys
from .sam_vit import _window_partition, _window_unpartition
from .sam_decoder import Attention, LayerNorm2d, PromptEncoder
from .sam_vit import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 1024
#: keys of the official checkpoints that belong to the video-memory path
MEMORY_PREFIXES = ("memory_attention.", "memory_encoder.", "obj_ptr_proj.", "obj_ptr_tpos_proj.",
                   "mask_downsample.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                   "no_obj_embed_spatial")


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk hyper-parameters (``configs/sam2.1/sam2.1_hiera_*.yaml``)."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0


HIERA_CONFIGS: dict[str, HieraConfig] = {
    "t": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7)),
    "s": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7)),
    "b+": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14)),
    "l": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), window_spec=(8, 4, 16, 8)),
}


class MLP(nn.Module):
    """SAM 2's MLP: ``layers`` of Linear with ``act`` between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.sigmoid_output = sigmoid_output
        self.act = activation()

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x)) if i < self.num_layers - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


# ----------------------------------------------------------------------------- Hiera trunk


def _pool(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """2D max pooling of (B, H, W, C)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)
        if self.q_stride:
            q = _pool(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float,
                 q_stride: tuple[int, int] | None, window_size: int) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _pool(shortcut, self.q_stride)
        ws = self.window_size
        if ws > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = _window_partition(x, ws)
        x = self.attn(x)
        if self.q_stride:
            ws = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            pad_hw = (h + (ws - h % ws) % ws, w + (ws - w % ws) % ws)
        if self.window_size > 0:
            x = _window_unpartition(x, ws, pad_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class HieraPatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """Hierarchical ViT trunk: (B, 3, S, S) -> 4 feature maps, strides 4, 8, 16, 32."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[:i]) - 1 for i in range(1, len(cfg.stages) + 1)]
        q_pool_blocks = [x + 1 for x in self.stage_ends[:-1]][: cfg.q_pool]
        self.patch_embed = HieraPatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))
        embed_dim, num_heads, cur_stage = cfg.embed_dim, cfg.num_heads, 1
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            window_size = 0 if i in cfg.global_att_blocks else cfg.window_spec[cur_stage - 1]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * cfg.dim_mul)
                num_heads = int(num_heads * cfg.head_mul)
                cur_stage += 1
            self.blocks.append(MultiScaleBlock(embed_dim, dim_out, num_heads, cfg.mlp_ratio,
                                               cfg.q_stride if i in q_pool_blocks else None, window_size))
            embed_dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> Tensor:
        pe = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        win = self.pos_embed_window
        pe = pe + win.tile([a // b for a, b in zip(pe.shape, win.shape)])
        return pe.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed(tuple(x.shape[1:3]))
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class _Conv(nn.Module):
    """Holds ``conv`` so that keys read ``neck.convs.N.conv.weight``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """SAM 2's FPN: lateral 1x1 convolutions, nearest top-down fusion on levels 2 and 3."""

    def __init__(self, backbone_channel_list: list[int], d_model: int = 256,
                 fpn_top_down_levels: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_Conv(dim, d_model) for dim in backbone_channel_list)
        self.fpn_top_down_levels = fpn_top_down_levels

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        n = len(self.convs) - 1
        out: list[Tensor] = [xs[0]] * len(xs)
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest").to(lateral.dtype)
            else:
                prev = lateral
            out[i] = prev
        return out


class ImageEncoder(nn.Module):
    """Hiera + FPN; returns the three finest levels (strides 4, 8, 16), 256 channels each."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.trunk = Hiera(cfg)
        self.neck = FpnNeck(self.trunk.channel_list)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.neck(self.trunk(x))[:-1]  # scalp=1: drop the stride-32 level


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
        self.layers = nn.ModuleList(TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, i == 0)
                                    for i in range(depth))
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

    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3,
                 stability_delta: float = 0.05, stability_thresh: float = 0.98) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer = TwoWayTransformer(2, d, 8, 2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2), nn.GELU())
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                      high_res: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        bsz = sparse.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(bsz, -1, -1), sparse], dim=1)
        src = image_embeddings.expand(bsz, -1, -1, -1) if image_embeddings.shape[0] != bsz else image_embeddings
        src = src + dense
        pos_src = image_pe.expand(bsz, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2: 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                                for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
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
        return (torch.where(stable[..., None, None].expand_as(single), single, best_masks),
                torch.where(stable.expand_as(single_iou), single_iou, best_iou))

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool,
                high_res_features: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Returns mask logits (B, K, 4h, 4w), IoU (B, K) and object-score logits (B, 1)."""
        masks, iou, obj = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings, high_res_features)
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
    prompt_encoder = Sam2PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                       input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16)
    return {"image_encoder": ImageEncoder(HIERA_CONFIGS[size]), "sam_prompt_encoder": prompt_encoder,
            "sam_mask_decoder": Sam2MaskDecoder(), "no_mem_embed": _Parameter(1, 1, 256)}


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
        mean, std = t.new_tensor(IMAGENET_MEAN)[:, None, None], t.new_tensor(IMAGENET_STD)[:, None, None]
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
        return [Embedding(features=s2[i: i + 1].clone(), original_size=tuple(im.shape[:2]),
                          input_size=(self.image_size, self.image_size), model=self.name,
                          extra={"high_res_s0": s0[i: i + 1].clone(), "high_res_s1": s1[i: i + 1].clone()})
                for i, im in enumerate(images)]

    def upsample(self, low_res: Tensor, embedding: Embedding) -> Tensor:
        """Low-resolution logits (B, K, 256, 256) -> slice logits (B, K, H, W), as SAM 2 does."""
        return F.interpolate(low_res, size=embedding.original_size, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def decode_low_res(self, embedding: Embedding, points_rc: np.ndarray | None = None,
                       point_labels: np.ndarray | None = None, boxes_rc: np.ndarray | None = None,
                       mask_input: np.ndarray | None = None,
                       multimask: bool = False) -> tuple[Tensor, Tensor]:
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
                    coords, labels = coords.expand(box_xy.shape[0], -1, -1), labels.expand(box_xy.shape[0], -1)
                coords, labels = torch.cat([box_xy, coords], dim=1), torch.cat([box_labels, labels], dim=1)
            else:
                coords, labels = box_xy, box_labels
        masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        points = None if coords is None else (coords, labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=masks)
        high_res = (embedding.extra["high_res_s0"], embedding.extra["high_res_s1"])
        low, scores, _ = self.mask_decoder(embedding.features, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                           multimask, high_res)
        return low, scores


def load_sam2(path: str | Path, size: str, name: str, device: torch.device,
              models_for: dict[str, str] | None = None) -> Sam2Backend:
    """Load an official SAM 2 / 2.1 checkpoint ({"model": state_dict}) for 2D segmentation.

    size: "t", "s", "b+" or "l". The video-memory keys are accepted and dropped.
    """
    state = normalise_keys(load_state_dict(path))
    check_architecture(path, state, f"sam2_hiera_{size}", name, models_for)
    parts = build_sam2_modules(size)
    load_parts(path, state, parts, name, ignore_prefixes=MEMORY_PREFIXES)
    return Sam2Backend(name, parts, device)
