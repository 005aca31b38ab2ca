"""Fused oneDNN kernels for CPU inference, with a plain PyTorch fallback.

On x86 CPUs PyTorch's default fp32 ``F.linear`` goes through MKL, which on
AMD processors runs well below the machine's peak, and ``F.conv2d`` on NCHW
tensors reorders memory around every call. The oneDNN primitives that
PyTorch's own compiler (inductor) uses for CPU, ``torch.ops.mkldnn.
_linear_pointwise`` and ``_convolution_pointwise``, run both at close to
peak on channels-last data and fuse the GELU or the residual addition that
follows, saving one pass over memory each.

Every function here takes the same arguments as its plain counterpart and
falls back to it when oneDNN cannot serve the call: a tensor not on the CPU,
a dtype other than float32/bfloat16, autograd recording, a PyTorch built
without oneDNN, or ``NAPARI_SAM_ONEDNN=0`` in the environment (to compare).
Results equal the plain path's up to float rounding (the GELU is the exact
erf form in both).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

_AVAILABLE: bool | None = None
_BF16: bool | None = None
_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """Whether the fused oneDNN kernels can run here (checked once per process)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = _probe()
    return _AVAILABLE and os.environ.get("NAPARI_SAM_ONEDNN", "1") != "0"


def _probe() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        mk = torch.ops.mkldnn
        with torch.inference_mode():
            x = torch.ones(1, 2, 3, 3).contiguous(memory_format=torch.channels_last)
            y = mk._convolution_pointwise(
                x, torch.ones(2, 1, 1, 1), None, [0, 0], [1, 1], [1, 1], 2, "gelu", [], "none"
            )
            z = mk._linear_pointwise(torch.ones(2, 2), torch.ones(3, 2), None, "none", [], "")
        return bool(torch.allclose(y, F.gelu(x)) and torch.allclose(z, torch.full((2, 3), 2.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def bf16_available() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (checked once per process). oneDNN
    refuses bf16 below AVX512 (e.g. an AVX2-only CPU, or ``ONEDNN_MAX_CPU_ISA=AVX2``);
    bf16 tensors then take the plain PyTorch path."""
    global _BF16
    if _BF16 is None:
        try:
            with torch.inference_mode():
                x = torch.ones(1, 2, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
                torch.ops.mkldnn._convolution_pointwise(
                    x, torch.ones(2, 1, 1, 1, dtype=torch.bfloat16), None, [0, 0], [1, 1], [1, 1], 2, "none", [], ""
                )
                w = torch.ones(3, 2, dtype=torch.bfloat16)
                torch.ops.mkldnn._linear_pointwise(torch.ones(2, 2, dtype=torch.bfloat16), w, None, "none", [], "")
            _BF16 = True
        except (AttributeError, RuntimeError, NotImplementedError):
            _BF16 = False
    return _BF16


def _usable(x: Tensor, weight: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and available()
        and (x.dtype != torch.bfloat16 or bf16_available())
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """``F.linear`` (then the exact GELU when ``gelu``). x: (..., in) -> (..., out)."""
    if _usable(x, weight):
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def linear_add(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias) + other`` with the addition fused."""
    if _usable(x, weight) and other.dtype == x.dtype and other.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "add")
    return torch.add(F.linear(x, weight, bias), other)


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    padding: int = 0,
    stride: int = 1,
    groups: int = 1,
    gelu: bool = False,
) -> Tensor:
    """``F.conv2d`` (then the exact GELU when ``gelu``); x (B, C, H, W), best channels-last.

    The output is channels-last on the oneDNN path.
    """
    if _usable(x, weight):
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            weight,
            bias,
            [padding, padding],
            [stride, stride],
            [1, 1],
            groups,
            "gelu" if gelu else "none",
            [],
            "none" if gelu else "",
        )
    y = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return F.gelu(y) if gelu else y


def conv2d_add(
    x: Tensor, other: Tensor, weight: Tensor, bias: Tensor | None, padding: int = 0, stride: int = 1, groups: int = 1
) -> Tensor:
    """``F.conv2d(x, ...) + other`` with the addition fused (both channels-last on oneDNN)."""
    if _usable(x, weight) and other.dtype == x.dtype and other.is_contiguous(memory_format=torch.channels_last):
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, bias, [padding, padding], [stride, stride], [1, 1], groups, "add", None, None, [], None
        )
    return torch.add(F.conv2d(x, weight, bias, stride, padding, 1, groups), other)
