"""SAM's two-way transformer: prompt tokens attend to the image and the image attends back.

Our own implementation of the architecture described in Kirillov et al.,
"Segment Anything" (2023); :mod:`napari_sam.models.sam_decoder` builds the
mask decoder on it. Module and parameter names follow Meta's
``segment_anything.modeling`` so that official checkpoints load without
conversion. Attention runs through ``torch.nn.functional.scaled_dot_product_attention``.

Speed (CPU, one prompt): the cross attentions pair a few prompt tokens (T ~ 7)
with thousands of image tokens (N = 4096). Projecting every image token, as the
reference does, costs ~2.7 GFLOP per prompt; the same attentions are computed
here by moving the projections onto the side of the few tokens
(:meth:`Attention.few_queries`, :meth:`Attention.few_keys`), which is exact in
real arithmetic and ~2.3x cheaper. The first layer's image side does not depend
on the prompt: :meth:`TwoWayTransformer.prepare_image` projects it once per
image, and the last token-to-image attention runs only on the tokens whose
output is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import onednn


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the inner dim."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``forward`` for a few queries (B, T, C) against many keys/values (B or 1, N, C).

        Per head h, with W_k,h and W_v,h the head's rows of the projections:
        (q W_q,h^T) (k W_k,h^T + b_k,h)^T = ((q W_q,h^T) W_k,h) k^T + a per-query
        constant that softmax ignores, and softmax(.) (v W_v,h^T + b_v,h) =
        (softmax(.) v) W_v,h^T + b_v,h since softmax rows sum to one. The N keys
        and values are thus never projected.
        """
        b, t, _ = q.shape
        h = self.num_heads
        d = self.internal_dim // h
        qh = self.q_proj(q).view(b, t, h, d)
        qk = torch.einsum("bthd,hdc->bhtc", qh, self.k_proj.weight.view(h, d, -1)) * (d**-0.5)
        attn = torch.softmax(qk.reshape(b, h * t, -1) @ k.transpose(1, 2), dim=-1)  # (B, h*T, N)
        av = (attn @ v).view(b, h, t, -1)  # (B, h, T, C)
        out = torch.einsum("bhtc,hdc->bthd", av, self.v_proj.weight.view(h, d, -1)) + self.v_proj.bias.view(h, d)
        return self.out_proj(out.reshape(b, t, h * d))

    def project_image(self, x: Tensor, proj: nn.Linear, keys_layout: bool) -> Tensor:
        """One image's tokens x (1, N, C) through ``proj`` (bias included), split into heads.

        Returns (h, d, N) when ``keys_layout`` (the right factor of q k^T), else (h, N, d).
        """
        h = self.num_heads
        n = x.shape[1]
        y = onednn.linear(x[0], proj.weight, proj.bias).view(n, h, -1)
        return (y.permute(1, 2, 0) if keys_layout else y.transpose(0, 1)).contiguous()

    def with_image_keys(self, q: Tensor, k_heads: Tensor, v_heads: Tensor) -> Tensor:
        """``forward`` for a few queries (B, T, C) against one image's keys and values
        already projected (``project_image``: k_heads (h, d, N), v_heads (h, N, d)).

        The B prompts share the image: their B*T queries attend in one product per head.
        """
        b, t, _ = q.shape
        h = self.num_heads
        d = self.internal_dim // h
        qh = (self.q_proj(q) * (d**-0.5)).view(b * t, h, d).transpose(0, 1)  # (h, B*T, d)
        attn = torch.softmax(torch.bmm(qh, k_heads), dim=-1)  # (h, B*T, N)
        out = torch.bmm(attn, v_heads)  # (h, B*T, d)
        return self.out_proj(out.transpose(0, 1).reshape(b, t, h * d))

    def with_image_queries(self, q_heads: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`few_keys_factors` with one image's queries already projected
        (``project_image``: q_heads (h, d, N), the q_proj bias included)."""
        b, t, _ = k.shape
        h, d, n = q_heads.shape
        kh = (self.k_proj(k) * (d**-0.5)).view(b * t, h, d).transpose(0, 1)  # (h, B*T, d)
        scores = torch.bmm(kh, q_heads).view(h, b, t, n)
        attn = torch.softmax(scores, dim=2)  # over the T keys, along N-long rows
        attn = (attn[:, 0] if b == 1 else attn.transpose(0, 1)).reshape(b, h * t, n)
        vh = self.v_proj(v).view(b, t, h, d)
        u = torch.einsum("bthd,ohd->bhto", vh, self.out_proj.weight.view(-1, h, d)).reshape(b, h * t, -1)
        return attn, u + self.out_proj.bias / h

    def few_keys(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None = None) -> Tensor:
        """``forward`` (plus ``residual``) for many queries (B, N, C) against a few keys/values (B, T, C).

        Per head h: (q W_q,h^T + b_q,h) K_h^T = q (W_q,h^T K_h^T) + b_q,h K_h^T, and
        the output projection distributes over heads: out = sum_h P_h (V_h W_o,h^T) + b_o.
        The N queries are multiplied once by a (C, h*T) matrix and once by an
        (h*T, C) one instead of being projected in and out.
        """
        attn, u = self.few_keys_factors(q, k, v)
        if residual is None:
            return attn.transpose(1, 2) @ u
        if residual.shape[0] != attn.shape[0]:
            residual = residual.expand(attn.shape[0], -1, -1)
        return torch.baddbmm(residual, attn.transpose(1, 2), u)

    def few_keys_factors(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`few_keys` without the residual as a product ``attn^T @ u``: the heads'
        attention weights attn (B, h*T, N) and their values through the output
        projection u (B, h*T, C), the output bias included."""
        b, t, _ = k.shape  # q (and residual) may be one image shared by the B prompts
        n, c = q.shape[1:]
        h = self.num_heads
        d = self.internal_dim // h
        kh = self.k_proj(k).view(b, t, h, d) * (d**-0.5)
        m = torch.einsum("hdc,bthd->bhtc", self.q_proj.weight.view(h, d, c), kh).reshape(b, h * t, c)
        bias = torch.einsum("hd,bthd->bht", self.q_proj.bias.view(h, d), kh).reshape(b, h * t, 1)
        # scores laid out (B, h, T, N): the softmax over T then runs along N-long rows
        scores = (
            torch.baddbmm(bias, m, q.transpose(1, 2)) if q.shape[0] == b else torch.add(m @ q.transpose(1, 2), bias)
        )
        attn = torch.softmax(scores.view(b, h, t, n), dim=2).view(b, h * t, n)
        # out_proj's bias enters U: the h heads' attention weights sum to h for every query
        vh = self.v_proj(v).view(b, t, h, d)
        u = torch.einsum("bthd,ohd->bhto", vh, self.out_proj.weight.view(-1, h, d)).reshape(b, h * t, -1)
        return attn, u + self.out_proj.bias / h


class TwoWayAttentionBlock(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, T, C), keys (1 or B, N, C) -> updated (queries, keys (B, N, C))."""
        queries = self._self_attention(queries, query_pe)

        k = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.few_queries(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        attn, u = self.cross_attn_image_to_token.few_keys_factors(k, q, queries)
        del k  # (B, N, C): freed before the update makes two more of that size
        return queries, self._update_keys(keys, attn, u)

    def _update_keys(self, keys: Tensor, attn: Tensor, u: Tensor) -> Tensor:
        """norm4(keys + attn^T @ u): the image-to-token attention's residual update."""
        if keys.shape[0] != attn.shape[0]:
            keys = keys.expand(attn.shape[0], -1, -1)
        return self.norm4(torch.baddbmm(keys, attn.transpose(1, 2), u))

    def _self_attention(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        return self.norm1(queries)

    def prepare_image(self, keys: Tensor, key_pe: Tensor) -> dict[str, Tensor]:
        """The prompt-independent tensors of this block for one image: keys (1, N, C), key_pe (1, N, C)."""
        k = keys + key_pe
        return {
            "keys": keys,
            "t2i_k": self.cross_attn_token_to_image.project_image(k, self.cross_attn_token_to_image.k_proj, True),
            "t2i_v": self.cross_attn_token_to_image.project_image(keys, self.cross_attn_token_to_image.v_proj, False),
            "i2t_q": self.cross_attn_image_to_token.project_image(k, self.cross_attn_image_to_token.q_proj, True),
        }

    def forward_prepared(self, queries: Tensor, image: dict[str, Tensor], query_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` on keys prepared by :meth:`prepare_image` (the image's projections made once)."""
        queries = self._self_attention(queries, query_pe)
        q = queries + query_pe
        queries = self.norm2(
            queries + self.cross_attn_token_to_image.with_image_keys(q, image["t2i_k"], image["t2i_v"])
        )
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        attn, u = self.cross_attn_image_to_token.with_image_queries(image["i2t_q"], q, queries)
        return queries, self._update_keys(image["keys"], attn, u)


def to_tokens(x: Tensor, add: Tensor | None = None) -> Tensor:
    """(B, C, h, w) [+ add, same shape or broadcast] -> contiguous (B, h*w, C) tokens, in one pass."""
    a = x.flatten(2).transpose(1, 2)
    if add is None:
        return a.contiguous()
    b = add.flatten(2).transpose(1, 2)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return torch.add(a, b, out=torch.empty(shape, dtype=torch.result_type(a, b), device=x.device))


class TwoWayTransformer(nn.Module):
    """Tokens attend to the image and the image attends back, ``depth`` times."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate, skip_first_layer_pe=(i == 0)
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)
        self._pe_cache: tuple[Tensor, Tensor] | None = None

    def _pe_tokens(self, image_pe: Tensor) -> Tensor:
        """image_pe as tokens; the prompt encoder hands the same cached tensor each time in eval mode."""
        if self.training or torch.is_grad_enabled():
            return to_tokens(image_pe)
        if self._pe_cache is None or self._pe_cache[0] is not image_pe:
            self._pe_cache = (image_pe, to_tokens(image_pe))  # holds image_pe: its id stays unique
        return self._pe_cache[1]

    def prepare_image(self, image_tokens: Tensor, image_pe: Tensor) -> dict[str, Tensor]:
        """What the first layer computes from the image alone, for :meth:`forward`'s ``prepared``.

        image_tokens: (1, h*w, C) one image (with its dense prompt) as tokens; image_pe: (1, C, h, w).
        """
        return self.layers[0].prepare_image(image_tokens, self._pe_tokens(image_pe))

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor,
        point_embedding: Tensor,
        prepared: dict[str, Tensor] | None = None,
        final_tokens: slice | list[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """image_embedding: (1 or B, C, h, w), or already tokens (1 or B, h*w, C), or None with
        ``prepared`` (:meth:`prepare_image` of the image); image_pe: (1, C, h, w);
        point_embedding: (B, T, C). final_tokens: the tokens whose output is needed (all by
        default): the last token-to-image attention, whose queries are independent, runs on
        those only.

        Returns queries (B, T', C) (the ``final_tokens``) and keys (B, h*w, C), the image tokens
        in row-major (NHWC) order.
        """
        key_pe = self._pe_tokens(image_pe)
        queries = point_embedding
        layers = list(self.layers)
        if prepared is not None:
            queries, keys = layers.pop(0).forward_prepared(queries, prepared, point_embedding)
        else:
            keys = image_embedding if image_embedding.ndim == 3 else to_tokens(image_embedding)
        for layer in layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        query_pe = point_embedding
        if final_tokens is not None:
            queries, query_pe = queries[:, final_tokens], query_pe[:, final_tokens]
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.few_queries(q, k, keys))
        return queries, keys
