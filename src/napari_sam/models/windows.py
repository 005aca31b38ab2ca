"""Mask logits inside a window of tokens around each prompt, not over the whole slice.

SAM's mask decoder makes its low-resolution logits token by token: after the
two-way transformer, the output upscaling (two stride-2 2x2 transposed
convolutions) maps each image token to its own f x f block of logits (f = 4)
and a mask is a dot product per pixel. The resize of those logits onto the
slice (:func:`napari_sam.models.base.logits_to_slice`: bilinear to the model
input, the padding cropped, bilinear to the slice) is linear and separable:
``A @ L @ B.T``, with A (H, s) and B (W, s) one matrix per axis
(:func:`resize_axis`). The logits of a window of tokens, resized onto the
slice pixels whose bilinear support lies inside the window, therefore equal
the whole slice's logits there, up to float rounding (the same products are
summed in another order), for the cost of the window's tokens alone.

A box's mask lies near its box: on the shared CT's organs, the nuclei image
and synthetic blobs, at most 22 pixels beyond it (median 0).
:func:`box_windows` gives each box the tokens its pixels depend on, grown by
a margin; the caller (:mod:`napari_sam.box_batches`) decodes a mask that
reaches the edge of its window again over the whole slice. What a window
cannot see is a separate fragment of a mask lying wholly outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: low-resolution logits per token along each axis (SAM's output upscaling: two
#: stride-2 transposed convolutions)
TOKEN_PIXELS = 4
#: tokens added around a box's own tokens on every side
MARGIN_TOKENS = 3


def gather_windows(tokens: Tensor, grid: tuple[int, int], origins: Tensor, size: tuple[int, int]) -> Tensor:
    """Each prompt's window of image tokens.

    tokens: (B or 1, h*w, C) in row-major (NHWC) order on a ``grid`` (h, w);
    origins: (B, 2) int64 (row, col) of each window's first token; size: (wh, ww).
    Returns (B, wh*ww, C), row-major inside each window.
    """
    b = origins.shape[0]
    wh, ww = size
    dev = tokens.device
    origins = origins.to(dev)
    rows = origins[:, :1] + torch.arange(wh, device=dev)  # (B, wh)
    cols = origins[:, 1:] + torch.arange(ww, device=dev)  # (B, ww)
    index = (rows[:, :, None] * grid[1] + cols[:, None, :]).reshape(b, wh * ww)
    if tokens.shape[0] != b:
        tokens = tokens.expand(b, -1, -1)
    return tokens[torch.arange(b, device=dev)[:, None], index]


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """torch's bilinear resize (align_corners=False) n_in -> n_out along one axis as an
    (n_out, n_in) matrix: PyTorch's own kernel applied to the identity, so the weights
    are the ones it computes."""
    eye = torch.eye(n_in, dtype=torch.float32)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass(frozen=True)
class ResizeAxis:
    """One axis of the resize of low-resolution logits onto the slice: ``matrix``
    (out, low) float32, and per output index the first and last low-resolution
    index it depends on (nonzero weight)."""

    matrix: np.ndarray
    first: np.ndarray
    last: np.ndarray

    def inside(self, lo: int, hi: int) -> tuple[int, int]:
        """The output indices [start, stop) that depend only on low indices in [lo, hi)."""
        ok = np.flatnonzero((self.first >= lo) & (self.last < hi))
        return (int(ok[0]), int(ok[-1]) + 1) if ok.size else (0, 0)


@lru_cache(maxsize=32)
def resize_axis(low: int, model: int, inside: int, out: int) -> ResizeAxis:
    """The resize of :func:`napari_sam.models.base.logits_to_slice` along one axis:
    ``low`` logits -> ``model`` input pixels (skipped when equal), the first
    ``inside`` kept (the rest is padding), -> ``out`` slice pixels."""
    a = _bilinear(inside, out).astype(np.float64)
    if low != model:
        a = a @ _bilinear(low, model)[:inside].astype(np.float64)
    else:
        a = np.pad(a, ((0, 0), (0, low - inside)))
    nz = a != 0
    return ResizeAxis(a.astype(np.float32), nz.argmax(1), low - 1 - nz[:, ::-1].argmax(1))


@dataclass(frozen=True)
class SliceWindows:
    """Token windows of equal size for a batch of prompts on one slice.

    origins: (B, 2) int64 (row, col) of each window's first token; size: (wh, ww)
    tokens; factor: low-resolution pixels per token; rows/cols: the slice's
    :class:`ResizeAxis` pair.
    """

    origins: np.ndarray
    size: tuple[int, int]
    factor: int
    rows: ResizeAxis
    cols: ResizeAxis

    def for_decoder(self) -> tuple[Tensor, tuple[int, int]]:
        """``windows`` as the mask decoder takes them."""
        return torch.from_numpy(self.origins.astype(np.int64)), self.size

    def to_slice(self, low: Tensor, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Prompt ``i``'s window logits low (K, f*wh, f*ww) -> (its logits (K, r, c) on the
        slice pixels that depend only on the window, their (row, col) offset)."""
        f = self.factor
        (tr, tc), (wh, ww) = self.origins[i], self.size
        r0, r1 = self.rows.inside(f * tr, f * (tr + wh))
        c0, c1 = self.cols.inside(f * tc, f * (tc + ww))
        a = torch.from_numpy(self.rows.matrix[r0:r1, f * tr : f * (tr + wh)])
        b = torch.from_numpy(self.cols.matrix[c0:c1, f * tc : f * (tc + ww)])
        return (a @ low.detach().float().cpu() @ b.T).numpy(), (r0, c0)


def box_windows(
    boxes: np.ndarray, grid: tuple[int, int], factor: int, rows: ResizeAxis, cols: ResizeAxis, margin: int | None = None
) -> np.ndarray:
    """Each box's tokens grown by ``margin`` (default :data:`MARGIN_TOKENS`): (n, 4) int
    (t_r0, t_c0, t_r1, t_c1), inclusive.

    boxes: (n, 4) (r0, c0, r1, c1) inclusive slice pixels; grid: (h, w) tokens;
    factor: low-resolution pixels per token.
    """
    margin = MARGIN_TOKENS if margin is None else margin
    b = np.rint(np.asarray(boxes, np.float64)).astype(np.int64).reshape(-1, 4)
    r = np.clip(b[:, [0, 2]], 0, len(rows.first) - 1)
    c = np.clip(b[:, [1, 3]], 0, len(cols.first) - 1)
    r0, r1 = np.minimum(r[:, 0], r[:, 1]), np.maximum(r[:, 0], r[:, 1])
    c0, c1 = np.minimum(c[:, 0], c[:, 1]), np.maximum(c[:, 0], c[:, 1])
    out = np.stack(
        [
            rows.first[r0] // factor - margin,
            cols.first[c0] // factor - margin,
            rows.last[r1] // factor + margin,
            cols.last[c1] // factor + margin,
        ],
        axis=1,
    )
    return np.clip(out, 0, [grid[0] - 1, grid[1] - 1, grid[0] - 1, grid[1] - 1])


def batch_windows(
    windows: np.ndarray, grid: tuple[int, int], factor: int, rows: ResizeAxis, cols: ResizeAxis
) -> SliceWindows:
    """One window size for a batch (the largest of ``windows`` (n, 4), from
    :func:`box_windows`), each window placed over its own tokens inside the grid."""
    wh = int((windows[:, 2] - windows[:, 0]).max()) + 1
    ww = int((windows[:, 3] - windows[:, 1]).max()) + 1
    origins = np.stack([np.clip(windows[:, 0], 0, grid[0] - wh), np.clip(windows[:, 1], 0, grid[1] - ww)], axis=1)
    return SliceWindows(origins, (wh, ww), factor, rows, cols)
