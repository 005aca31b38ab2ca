"""TinyViT image encoder (LiteMedSAM, MobileSAM).

Our own implementation of TinyViT (Wu et al., ECCV 2022) as MobileSAM and
LiteMedSAM use it as SAM's image encoder. Parameter names follow the official
code so that their checkpoints load as they are. For inference speed on CPU:

- every Conv2d + BatchNorm pair can be folded into one convolution
  (:func:`fold_batchnorm`, applied by the backends after loading weights);
- window attention runs through ``scaled_dot_product_attention`` with the
  learned relative-position bias as an additive 4D mask, gathered once (a 4D
  mask lets PyTorch pick its fused CPU kernel instead of the unfused one);
- activations stay channels-last from the first convolution to the neck: the
  transformer stages' (B, H*W, C) tokens *are* NHWC memory, so the switches
  between convolutions and token layers are views, not copies;
- convolutions and linear layers run through oneDNN with the following GELU
  or residual addition fused (:mod:`napari_sam.models.onednn`; plain PyTorch
  elsewhere, e.g. on CUDA).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import onednn
from .sam_decoder import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    # LiteMedSAM embeds 256 px with two 1x1 convolutions (stride 1);
    # MobileSAM embeds 1024 px with two 3x3 stride-2 convolutions.
    patch_kernel: int = 1
    out_chans: int = 256


class Conv2d_BN(nn.Sequential):  # noqa: N801  (name kept: checkpoint keys are ".c." and ".bn.")
    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


def _fold(module: Conv2d_BN) -> nn.Conv2d:
    conv, bn = module.c, module.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=conv.groups, bias=True
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every Conv2d_BN by one equivalent Conv2d, in place (inference only)."""
    for name, child in list(model.named_children()):
        if isinstance(child, Conv2d_BN):
            setattr(model, name, _fold(child))
        else:
            fold_batchnorm(child)
    return model


def _conv(m: nn.Module, x: Tensor, gelu: bool = False, residual: Tensor | None = None) -> Tensor:
    """Run a (folded) convolution, then ``+ residual``, then GELU, fused where oneDNN allows."""
    if isinstance(m, nn.Conv2d):
        pad, stride = m.padding[0], m.stride[0]
        if residual is None:
            return onednn.conv2d(x, m.weight, m.bias, pad, stride, m.groups, gelu)
        y = onednn.conv2d_add(x, residual, m.weight, m.bias, pad, stride, m.groups)
    else:  # an unfolded Conv2d_BN (training, or before fold_batchnorm)
        y = m(x) if residual is None else m(x) + residual
    return F.gelu(y) if gelu else y


def _linear(m: nn.Linear, x: Tensor, gelu: bool = False) -> Tensor:
    return onednn.linear(x, m.weight, m.bias, gelu)


#: bytes of the widest intermediate of a banded pointwise-depthwise-pointwise run
BAND_BYTES = 4 << 20


def _pw_dw_pw(
    x: Tensor, conv1: nn.Module, conv2: nn.Module, conv3: nn.Module, residual: bool, final_gelu: bool
) -> Tensor:
    """GELU(conv1) -> GELU(depthwise 3x3 conv2) -> conv3 [+ x] [-> GELU], as in MBConv and PatchMerging.

    On the CPU the expanded intermediates (256 channels at 256 x 256 in
    LiteMedSAM's first stage: 64 MB each) do not fit in any cache, and the
    three convolutions are bound by memory traffic. Running them band of rows
    by band of rows, each band's intermediates (~BAND_BYTES) stay in cache;
    the depthwise convolution's one-row halo is recomputed. The result is the
    same as the three whole-image convolutions.
    """
    b, _, h, w = x.shape
    if (
        x.device.type != "cpu"
        or not isinstance(conv2, nn.Conv2d)
        or conv2.kernel_size != (3, 3)
        or conv2.padding != (1, 1)
        or torch.is_grad_enabled()
    ):
        y = _conv(conv2, _conv(conv1, x, gelu=True), gelu=True)
        return _conv(conv3, y, gelu=final_gelu, residual=x if residual else None)
    s = conv2.stride[0]
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    band = max(4, BAND_BYTES // (s * w * conv1.out_channels * x.element_size()))
    if band >= ho:
        y = _conv(conv2, _conv(conv1, x, gelu=True), gelu=True)
        return _conv(conv3, y, gelu=final_gelu, residual=x if residual else None)
    out = torch.empty(
        (b, conv3.out_channels, ho, wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    for i in range(b):
        xi = x[i : i + 1]
        for o0 in range(0, ho, band):
            o1 = min(o0 + band, ho)
            # input rows [i0, i1): i0 a multiple of s keeps the stride aligned; output
            # rows that would read the band's artificial zero padding are cropped
            i0 = max(0, s * o0 - s)
            i1 = min(h, s * (o1 - 1) + 2)
            j0 = o0 - i0 // s
            y = _conv(conv2, _conv(conv1, xi[:, :, i0:i1], gelu=True), gelu=True)[:, :, j0 : j0 + o1 - o0]
            out[i : i + 1, :, o0:o1] = _conv(conv3, y, gelu=final_gelu, residual=xi[:, :, o0:o1] if residual else None)
    return out


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, kernel: int) -> None:
        super().__init__()
        stride, pad = (1, 0) if kernel == 1 else (2, kernel // 2)
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, kernel, stride, pad),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, kernel, stride, pad),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, S', S') channels-last."""
        x = x.contiguous(memory_format=torch.channels_last)
        return _conv(self.seq[2], _conv(self.seq[0], x, gelu=True))


class MBConv(nn.Module):
    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, 1)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) channels-last -> same."""
        return _pw_dw_pw(x, self.conv1, self.conv2, self.conv3, residual=True, final_gelu=True)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', C'). Stride 1 for the last stage."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1)
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:  # (B, H*W, C) tokens are NHWC memory: a channels-last view
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = _pw_dw_pw(x, self.conv1, self.conv2, self.conv3, residual=False, final_gelu=False)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class ConvLayer(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(_linear(self.fc1, self.norm(x), gelu=True))

    def residual(self, x: Tensor) -> Tensor:
        """``x + self(x)`` with the addition fused into the second layer."""
        h = _linear(self.fc1, self.norm(x), gelu=True)
        return onednn.linear_add(h, x, self.fc2.weight, self.fc2.bias)


class WindowAttention(nn.Module):
    """Attention inside a window with TinyViT's learned relative-position bias."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.d = key_dim  # attn_ratio = 1 in TinyViT blocks
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, (2 * key_dim + self.d) * num_heads)
        self.proj = nn.Linear(self.d * num_heads, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        n = len(points)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False)
        self._bias: Tensor | None = None

    def train(self, mode: bool = True) -> WindowAttention:
        super().train(mode)
        self._bias = None
        return self

    def _attn_bias(self, dtype: torch.dtype) -> Tensor:
        """(1, heads, N, N): 4D, so that SDPA takes its fused CPU kernel."""
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs].to(dtype)[None]
        if self._bias is None or self._bias.dtype != dtype or self._bias.device != self.attention_biases.device:
            self._bias = self.attention_biases[:, self.attention_bias_idxs].detach().to(dtype)[None].contiguous()
        return self._bias

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C)
        b, n, _ = x.shape
        return self.proj(self._attend(_linear(self.qkv, self.norm(x))))

    def _attend(self, qkv: Tensor) -> Tensor:
        """(B, N, heads * (2 key_dim + d)) projections -> (B, N, heads * d) before ``proj``."""
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attn_bias(q.dtype))
        return out.transpose(1, 2).reshape(b, n, -1)

    def residual_windows(self, x: Tensor, resolution: tuple[int, int], ws: int) -> Tensor:
        """``x + attention`` over the (ws x ws) windows of the (H, W) grid of tokens x (B, H*W, C).

        As TinyViT: the grid is zero-padded to a multiple of ws and the padded
        tokens take part as keys. The output projection runs after the padding
        is cropped away, fused with the residual addition. (Projecting only the
        real tokens' qkv and filling the padding with the constant qkv of a zero
        token saves 8-20% of the qkv FLOPs but moves 3x more memory: measured
        no faster.)
        """
        h, w = resolution
        b, n, c = x.shape
        if h == ws and w == ws:
            y = self._attend(_linear(self.qkv, self.norm(x)))
            return onednn.linear_add(y, x, self.proj.weight, self.proj.bias)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        y = x.view(b, h, w, c)
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self._attend(_linear(self.qkv, self.norm(y)))
        dv = y.shape[-1]
        y = y.view(b, nh, nw, ws, ws, dv).transpose(2, 3).reshape(b, ph, pw, dv)[:, :h, :w].reshape(b, n, dv)
        return onednn.linear_add(y, x, self.proj.weight, self.proj.bias)


class TinyViTBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.window_size = window_size
        self.attn = WindowAttention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        x = self.attn.residual_windows(x, (h, w), self.window_size)
        # (B, N, C) is NHWC memory: the convolution sees a channels-last view
        x = _conv(self.local_conv, x.view(b, h, w, c).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(b, n, c)
        return self.mlp.residual(x)


class BasicLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


def _as_params(x: Tensor, module: nn.Module) -> Tensor:
    """x in the dtype of ``module``'s parameters (memory format kept)."""
    p = next(module.parameters(), None)
    return x if p is None or p.dtype == x.dtype else x.to(p.dtype)


class TinyViT(nn.Module):
    """TinyViT as SAM's image encoder: (B, 3, S, S) -> (B, 256, S/4 or S/16, ...)."""

    def __init__(self, cfg: TinyViTConfig = TinyViTConfig(), in_chans: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        self.patch_embed = PatchEmbed(in_chans, cfg.embed_dims[0], cfg.patch_kernel)
        res0 = cfg.img_size if cfg.patch_kernel == 1 else cfg.img_size // 4
        n = len(cfg.depths)
        self.layers = nn.ModuleList()
        for i in range(n):
            r = res0 // (2 ** (i - 1 if i == 3 else i))
            out_dim = cfg.embed_dims[i + 1] if i < n - 1 else None
            if i == 0:
                self.layers.append(
                    ConvLayer(cfg.embed_dims[0], (r, r), cfg.depths[0], out_dim, cfg.mbconv_expand_ratio)
                )
            else:
                self.layers.append(
                    BasicLayer(
                        cfg.embed_dims[i],
                        (r, r),
                        cfg.depths[i],
                        cfg.num_heads[i],
                        cfg.window_sizes[i],
                        cfg.mlp_ratio,
                        cfg.local_conv_size,
                        out_dim,
                    )
                )
        self.embedding_size = res0 // 4
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, 256, s, s) contiguous.

        Each part runs in its own parameters' dtype: activations are cast at the
        boundaries, so some parts may stay float32 in a bfloat16 encoder
        (:func:`napari_sam.models.precision.apply_precision`).
        """
        x = self.patch_embed(_as_params(x, self.patch_embed))
        for layer in self.layers:
            x = layer(_as_params(x, layer))
        x = _as_params(x, self.neck)
        b, _, c = x.shape
        s = self.embedding_size
        conv1, ln1, conv2, ln2 = self.neck
        # the neck on NHWC tokens: 1x1 conv = linear, LayerNorm2d = layer_norm over the last axis
        y = onednn.linear(x, conv1.weight.flatten(1), None)
        y = F.layer_norm(y, (y.shape[-1],), ln1.weight, ln1.bias, ln1.eps)
        y = _conv(conv2, y.view(b, s, s, -1).permute(0, 3, 1, 2))
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), ln2.weight, ln2.bias, ln2.eps)
        return y.permute(0, 3, 1, 2).contiguous()
