"""SAM's prompt encoder and mask decoder, shared by every SAM-family model.

Our own implementation of the architecture described in Kirillov et al.,
"Segment Anything" (2023). Module and parameter names follow Meta's
``segment_anything.modeling`` so that official checkpoints (SAM, MedSAM,
MobileSAM, micro-sam, LiteMedSAM) load without conversion. Attention runs
through ``torch.nn.functional.scaled_dot_product_attention``.

Speed (CPU, one prompt): the two-way transformer
(:mod:`napari_sam.models.sam_transformer`) computes its cross attentions on the
side of the few prompt tokens; :meth:`MaskDecoder.prepare_image` projects the
prompt-independent image side once per image (the backend keeps it for the next
prompts on that image). A repeated prompt then costs ~1.45 GFLOP. The output upscaling
(two stride-2 transposed convolutions) runs as two per-pixel linear layers on
channels-last tokens with a single reordering of the final logits.

Coordinates here are the *model's*: (x, y) pixels of the padded square model
input. Conversion from napari's (row, col) happens in exactly one place,
:func:`napari_sam.models.base.rc_to_model_xy`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import onednn
from .sam_transformer import Attention, MLPBlock, TwoWayTransformer, to_tokens
from .windows import gather_windows

# Attention and MLPBlock live in sam_transformer; importable from here as before
__all__ = [
    "MLP",
    "Attention",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "TwoWayTransformer",
    "build_sam_prompt_decoder",
]


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) * torch.rsqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """A plain MLP with ReLU between layers (the hypernetworks and IoU head)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) with a fixed random Gaussian matrix."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        h, w = size
        device, dtype = (
            self.positional_encoding_gaussian_matrix.device,
            self.positional_encoding_gaussian_matrix.dtype,
        )
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        return self._pe_encoding(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: tuple[int, int]) -> Tensor:
        """coords_input: (B, N, 2) as (x, y) model pixels; image_size: (H, W)."""
        scale = coords_input.new_tensor([1.0 / image_size[1], 1.0 / image_size[0]])
        return self._pe_encoding((coords_input * scale).to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Embeds points, boxes and mask logits into sparse and dense tokens."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box corner 1, box corner 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: Tensor | None = None

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the embedding grid, (1, C, h, w); cached in eval mode."""
        if self._dense_pe is None or self.training or self._dense_pe.device != self.no_mask_embed.weight.device:
            pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            if self.training:
                return pe
            self._dense_pe = pe
        return self._dense_pe

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        points = points + 0.5
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight, emb)
        emb = emb + torch.where(lab == 0, self.point_embeddings[0].weight, 0.0)
        emb = emb + torch.where(lab == 1, self.point_embeddings[1].weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corner

    def forward(
        self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """points: ((B, N, 2) xy, (B, N) labels 1/0/-1); boxes: (B, 4) xyxy; masks: (B, 1, 4h, 4w).

        Returns sparse (B, N', C) and dense (B, C, h, w) embeddings.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((bs, 0, self.embed_dim))
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense


class MaskDecoder(nn.Module):
    """Predicts 1 + ``num_multimask_outputs`` masks and their IoU from tokens."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor | None,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        multimask_output: bool,
        prepared: dict[str, Tensor] | None = None,
        windows: tuple[Tensor, tuple[int, int]] | None = None,
        all_outputs: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """image_embeddings: (1 or B, C, h, w). Returns masks (B, K, 4h, 4w) logits and IoU (B, K).

        K is 3 with ``multimask_output`` (SAM's three candidates), else 1; only
        the K requested masks are computed. ``prepared``: :meth:`prepare_image`
        of the image and dense prompt, made once for many prompts (then
        image_embeddings and dense_prompt_embeddings are not used).
        ``windows``: (origins (B, 2) int64 (row, col) tokens, (wh, ww)): each
        prompt's masks only inside its window of tokens, (B, K, 4wh, 4ww)
        (:mod:`napari_sam.models.windows`). ``all_outputs``: all four masks (the
        single output, then the three candidates), K = 4, in one pass.
        """
        sl = slice(None) if all_outputs else slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            sl,
            prepared=prepared,
            windows=windows,
        )

    def prepare_image(
        self, image_embeddings: Tensor, image_pe: Tensor, dense_prompt_embeddings: Tensor
    ) -> dict[str, Tensor]:
        """The prompt-independent part of decoding one image, computed once and reused by
        every prompt decoded on it (pass it to :meth:`forward` as ``prepared``).

        image_embeddings: (1, C, h, w); image_pe: (1, C, h, w), the prompt encoder's dense
        positional encoding; dense_prompt_embeddings: (1 or B, C, h, w), the dense prompt
        the decodes will use, identical for all of them (the "no mask" embedding).
        Holds ~10 MB for a 64 x 64 x 256 embedding.
        """
        h, w = image_embeddings.shape[-2:]
        src = to_tokens(image_embeddings, dense_prompt_embeddings[:1])
        prepared = self.transformer.prepare_image(src, image_pe)
        prepared["size"] = torch.tensor([h, w])
        return prepared

    def predict_masks(
        self,
        image_embeddings: Tensor | None,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        tokens_slice: slice = slice(None),
        prepared: dict[str, Tensor] | None = None,
        windows: tuple[Tensor, tuple[int, int]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Masks (B, K, 4h, 4w) and IoU (B, K) of the mask tokens in ``tokens_slice`` (all 4 by default).

        With ``prepared`` (:meth:`prepare_image`), image_embeddings and
        dense_prompt_embeddings are not used (they may be None). With
        ``windows`` (see :meth:`forward`) the masks cover each prompt's window only.
        """
        bsz = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(bsz, -1, -1), sparse_prompt_embeddings], dim=1)
        idx = list(range(self.num_mask_tokens)[tokens_slice])
        # only the IoU token and the requested mask tokens leave the transformer
        wanted = [0] + [1 + i for i in idx]
        final = slice(0, len(wanted)) if wanted == list(range(len(wanted))) else wanted
        if prepared is not None:
            h, w = (int(v) for v in prepared["size"])
            hs, keys = self.transformer(None, image_pe, tokens, prepared=prepared, final_tokens=final)
        else:
            # (1, C, h, w) + a dense prompt shared by the batch stays one image until
            # the first image-to-token attention makes the image tokens per prompt
            if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
                dense_prompt_embeddings = dense_prompt_embeddings[:1]  # one dense prompt, expanded
            h, w = image_embeddings.shape[-2:]
            src = to_tokens(image_embeddings, dense_prompt_embeddings)
            hs, keys = self.transformer(src, image_pe, tokens, final_tokens=final)
        iou_token_out = hs[:, 0, :]
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + j, :]) for j, i in enumerate(idx)], dim=1)
        if windows is not None:  # the upscaling is per token: only the windows' tokens
            keys = gather_windows(keys, (h, w), *windows)
            h, w = windows[1]
        masks = self._upscale_masks(keys, hyper_in, h, w)
        return masks, self.iou_prediction_head(iou_token_out)[:, tokens_slice]

    def _per_pixel_upscaling(self) -> bool:
        """Whether ``output_upscaling`` is SAM's (exact GELUs), which :meth:`_upscale_masks` runs per pixel."""
        ct1, ln, act1, ct2, act2 = self.output_upscaling
        return (
            isinstance(act1, nn.GELU)
            and isinstance(act2, nn.GELU)
            and act1.approximate == "none"
            and act2.approximate == "none"
        )

    def _upscale_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The two transposed convolutions as per-pixel linear layers: w1 (4*c1, C) with rows
        (i, j, out), b1 (4*c1,), w2 (4*c2, c1), b2 (4*c2,)."""
        ct1, ct2 = self.output_upscaling[0], self.output_upscaling[3]
        w1 = ct1.weight.permute(2, 3, 1, 0).reshape(4 * ct1.out_channels, ct1.in_channels)
        w2 = ct2.weight.permute(2, 3, 1, 0).reshape(4 * ct2.out_channels, ct2.in_channels)
        return w1, ct1.bias.repeat(4), w2, ct2.bias.repeat(4)

    def _upscale_masks(self, keys: Tensor, hyper_in: Tensor, h: int, w: int) -> Tensor:
        """keys (B, h*w, C) NHWC image tokens, hyper_in (B, K, C/8) -> mask logits (B, K, 4h, 4w).

        ``output_upscaling`` (ConvTranspose k2 s2 -> LayerNorm2d -> GELU ->
        ConvTranspose k2 s2 -> GELU) then the dot product with ``hyper_in``,
        computed per pixel: a stride-2 2x2 transposed convolution maps each input
        pixel to its own 2x2 output block, so it is a linear layer to 4x the
        channels. Sub-pixels stay in the channel axis until the final logits.
        """
        ct1, ln, act1, ct2, act2 = self.output_upscaling
        if not self._per_pixel_upscaling():
            b, c = keys.shape[0], keys.shape[2]
            up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
            bb, cc, hh, ww = up.shape
            return (hyper_in @ up.reshape(bb, cc, hh * ww)).reshape(bb, -1, hh, ww)
        b, n = keys.shape[:2]
        c1, c2 = ct1.out_channels, ct2.out_channels
        w1, b1, w2, b2 = self._upscale_weights()
        y = onednn.linear(keys, w1, b1).view(b, n * 4, c1)  # (B, N*(i,j), c1)
        y = F.gelu(F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
        z = onednn.linear(y, w2, b2, gelu=True).view(b, n * 16, c2)
        k = hyper_in.shape[1]
        m = torch.bmm(z, hyper_in.transpose(1, 2))  # (B, N*16, K): index (y, x, i, j, i2, j2)
        m = m.view(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(b, k, 4 * h, 4 * w)


def build_sam_prompt_decoder(embedding_size: int, input_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's standard prompt encoder and mask decoder (256 channels, 8 heads)."""
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(input_size, input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder
