"""Which parts of the LiteMedSAM encoder lose accuracy in bf16?

    python benchmarks/precision_layers.py [--slices 4,10,16] [--dtype bfloat16]

For CT slices in both windows (soft-tissue and bone), the embedding of the
fp32 encoder is compared with encoders where every part but some runs in bf16
(patch embedding and neck, ~1% of the time, kept fp32 in every candidate; then
one stage more), and where only one stage runs in bf16. Parts: patch_embed, layers.0
(MBConv stage, 256 x 256), layers.1..3 (transformer stages), neck. Printed:
the relative L2 error of the embedding against fp32 (median over slices), and
the largest |activation| at each part's output in fp32 (bf16 has fp32's
exponent range: values never overflow; what bf16 loses is mantissa, 8 bits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_ct  # noqa: E402
from napari_sam.intensity import parse_window  # noqa: E402
from napari_sam.models.base import to_model_input  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402

PARTS = ("patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "neck")


def set_parts(encoder: torch.nn.Module, half: set[str], dtype: torch.dtype) -> None:
    for name in PARTS:
        encoder.get_submodule(name).to(dtype if name in half else torch.float32)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", default="4,10,16")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)  # one thread: no OpenMP barrier stalls under other programs' load
    vol, _, _ = load_ct()
    model = load_model("lite_medsam", precision="fp32")
    enc = model.image_encoder
    inputs = [
        to_model_input(parse_window(w).apply(vol.array[int(z)]), 256)[0]
        for w in ("soft-tissue", "bone")
        for z in args.slices.split(",")
    ]
    print(f"load average {os.getloadavg()[0]:.1f}; {len(inputs)} inputs", flush=True)
    peaks: dict[str, float] = {}
    hooks = [
        enc.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: peaks.__setitem__(n, max(peaks.get(n, 0.0), float(o.abs().max())))
        )
        for n in PARTS[:-1]
    ]
    set_parts(enc, set(), dtype)
    ref = [enc(x).float() for x in inputs]
    for h in hooks:
        h.remove()
    print(
        "largest |activation| at each part's output (fp32): " + ", ".join(f"{n} {v:.3g}" for n, v in peaks.items()),
        flush=True,
    )

    def err(half: set[str]) -> float:
        set_parts(enc, half, dtype)
        e = [float((enc(x).float() - r).norm() / r.norm()) for x, r in zip(inputs, ref)]
        return statistics.median(e)

    print(f"all parts {args.dtype}: relative error {err(set(PARTS)):.4f}", flush=True)
    cheap = {"patch_embed", "neck"}  # ~1% of the encoder's time: kept fp32 in every candidate
    print(f"all but patch_embed, neck: {err(set(PARTS) - cheap):.4f}", flush=True)
    for p in PARTS[1:-1]:
        print(
            f"all but patch_embed, neck, {p}: {err(set(PARTS) - cheap - {p}):.4f}   only {p}: {err({p}):.4f}",
            flush=True,
        )
    set_parts(enc, set(), torch.float32)


if __name__ == "__main__":
    main()
