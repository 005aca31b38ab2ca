"""The image encoder's floating-point precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.

``auto`` is decided at run time, once per process and device:

- CUDA: ``bf16`` where the GPU supports it natively
  (``torch.cuda.is_bf16_supported(including_emulation=False)``), else ``fp16``;
- CPU: ``bf16`` only if a timed probe shows the CPU runs bf16 matrix products
  natively, i.e. clearly faster than fp32 (AVX512-BF16 or AMX through oneDNN).
  Where bf16 would be emulated (converted to fp32 and back) it is slower than
  fp32, and ``auto`` keeps fp32;
- anything else (Apple MPS): ``fp32``.

The probe times the encoder's own kernel (:func:`napari_sam.models.onednn.linear`,
a (1024 x 320) x (320 x 1280) product, a quarter of the last stage's MLP) in both
types, interleaved, and keeps the fastest of several runs of each (robust to
other programs' load). ``NAPARI_SAM_BF16=0`` or ``1`` in the environment
overrides the probe's verdict (for tests and comparisons).

The decoder always runs in fp32; embeddings are handed out as fp32 whatever
the encoder computed in. The cache key includes the precision
(:func:`napari_sam.cache.model_identity`), so bf16 and fp32 embeddings never mix.
"""

from __future__ import annotations

import difflib
import os
import time
from dataclasses import dataclass

import torch

from ..errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: what a precision name means as a torch dtype
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: bf16 counts as native on a CPU when its probe product takes at most this fraction of fp32's time
NATIVE_RATIO = 0.8
#: the precision used when none is given (CLI, API, widget); see docs/performance.md
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class Bf16Probe:
    """The CPU probe's verdict: seconds of the probe product in fp32 and bf16 (best of runs)."""

    fp32_s: float
    bf16_s: float
    source: str = "probe"

    @property
    def ratio(self) -> float:
        """bf16 time / fp32 time (below 1: bf16 faster)."""
        return self.bf16_s / self.fp32_s if self.fp32_s > 0 else float("inf")

    @property
    def native(self) -> bool:
        """Whether bf16 is fast enough here to be worth using."""
        return self.ratio <= NATIVE_RATIO


_PROBE: Bf16Probe | None = None


def parse_precision(name: str) -> str:
    """A precision name (case-insensitive; "float32"/"bfloat16"/"float16" accepted) -> one of
    :data:`PRECISIONS`. InputError naming the closest valid one otherwise."""
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    key = str(name).strip().lower()
    key = aliases.get(key, key)
    if key not in PRECISIONS:
        close = difflib.get_close_matches(key, PRECISIONS + tuple(aliases), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}{hint}")
    return key


def _cpu_seconds(fn, runs: int) -> float:
    """Least CPU time (of the calling thread) of ``runs`` calls: robust to other programs' load."""
    best = float("inf")
    for _ in range(runs):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


@torch.inference_mode()
def probe_cpu_bf16(runs: int = 5) -> Bf16Probe:
    """Time the encoder's linear kernel in fp32 and bf16 on this CPU, on one thread, in CPU
    time (about 0.1-0.2 s, once per process; :func:`cpu_bf16_native` caches it). Runs of
    the two types alternate and the least of each is kept. A bf16 product that fails
    (oneDNN without any bf16 kernel for this CPU) counts as infinitely slow."""
    from . import onednn

    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(1024, 320, generator=g)
    w32 = torch.randn(1280, 320, generator=g) * 0.05
    b32 = torch.zeros(1280)
    x16, w16, b16 = x32.bfloat16(), w32.bfloat16(), b32.bfloat16()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t32 = t16 = float("inf")
        onednn.linear(x32, w32, b32)  # warm-up: oneDNN builds its primitives on the first call
        try:
            onednn.linear(x16, w16, b16)
        except RuntimeError:
            return Bf16Probe(_cpu_seconds(lambda: onednn.linear(x32, w32, b32), runs), float("inf"))
        for _ in range(runs):
            t32 = min(t32, _cpu_seconds(lambda: onednn.linear(x32, w32, b32), 1))
            t16 = min(t16, _cpu_seconds(lambda: onednn.linear(x16, w16, b16), 1))
    finally:
        torch.set_num_threads(threads)
    return Bf16Probe(t32, t16)


def cpu_bf16_native() -> Bf16Probe:
    """The (cached) verdict on this CPU's bf16; ``NAPARI_SAM_BF16=0/1`` overrides the probe."""
    global _PROBE
    env = os.environ.get("NAPARI_SAM_BF16")
    if env in ("0", "1"):
        return Bf16Probe(1.0, 0.5 if env == "1" else 2.0, source="NAPARI_SAM_BF16")
    if _PROBE is None:
        _PROBE = probe_cpu_bf16()
    return _PROBE


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` (or an explicit name) -> the precision to run on ``device``: fp32, bf16 or fp16.

    Explicit names are kept as they are (the user's choice, even where slow).
    """
    p = parse_precision(precision)
    if p != "auto":
        return p
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older PyTorch without the argument
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp16"
    if dev.type == "cpu":
        return "bf16" if cpu_bf16_native().native else "fp32"
    return "fp32"


#: parts of an encoder (by class name) that stay fp32 when the encoder runs bf16 or fp16:
#: measured in docs/performance.md ("Encoder precision")
KEEP_FP32: dict[str, tuple[str, ...]] = {}


def apply_precision(backend, precision: str) -> str:
    """Set ``backend``'s encoder to ``precision`` (resolved for its device); returns what was set.

    In bf16/fp16 the parts listed in :data:`KEEP_FP32` for the encoder's class stay fp32.
    Backends without a settable encoder type (``set_dtype``) run fp32: ``auto`` and
    ``fp32`` are accepted for them, other names raise InputError.
    """
    resolved = resolve_precision(precision, backend.device)
    if not hasattr(backend, "set_dtype"):
        if resolved != "fp32" and parse_precision(precision) != "auto":
            raise InputError(f"precision {precision!r}: model {backend.name!r} runs in fp32 only")
        return "fp32"
    backend.set_dtype(DTYPES[resolved])
    if resolved != "fp32":
        encoder = backend.image_encoder
        for part in KEEP_FP32.get(type(encoder).__name__, ()):
            encoder.get_submodule(part).float()
    return resolved


def precision_of(backend) -> str:
    """The encoder precision a backend runs now: fp32, bf16 or fp16."""
    dtype = getattr(backend, "dtype", torch.float32)
    return {v: k for k, v in DTYPES.items()}.get(dtype, "fp32")


def precision_tag(backend) -> str:
    """What the encoder computes in, read from its parameters: "fp32", "bf16", or e.g.
    "bf16+fp32:layers.0" when some parts (named by their first two name components)
    are float32 in a half-precision encoder. Part of the cache identity."""
    main = precision_of(backend)
    encoder = getattr(backend, "image_encoder", None)
    if main == "fp32" or encoder is None:
        return main
    kept = sorted({".".join(n.split(".")[:2]) for n, p in encoder.named_parameters() if p.dtype == torch.float32})
    return f"{main}+fp32:{','.join(kept)}" if kept else main
