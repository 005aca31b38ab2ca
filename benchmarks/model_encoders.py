"""Image-encoder speed of the model zoo on this machine (random weights).

Prints the median seconds per 1024 px slice of each encoder, and for SAM
ViT-B the ratio against Meta's ``segment_anything`` encoder measured in the
same run (same weights, same input), when that package is installed.

    python benchmarks/model_encoders.py [--repeats 3] [--models vit_b vit_t sam2_t]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t", "sam2_t"])
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} runs")
    for name in args.models:
        if name.startswith("vit_") and name != "vit_t":
            from napari_sam.models.sam_vit import build_sam_vit_modules

            enc = build_sam_vit_modules(name)["image_encoder"].eval()
            with torch.inference_mode():
                ours = _time(lambda: enc(x), args.repeats)
            line = f"SAM {name} encoder (napari-sam): {ours:.2f} s"
            try:
                from segment_anything import sam_model_registry
            except ImportError:
                print(line + "  (segment_anything not installed: no reference)")
                continue
            ref = sam_model_registry[name]().image_encoder.eval()
            enc_ref_state = nn.Module.state_dict(enc)
            ref.load_state_dict(enc_ref_state)
            with torch.inference_mode():
                theirs = _time(lambda: ref(x), args.repeats)
                diff = (ref(x) - enc(x)).abs().max().item()
            print(f"{line}; segment_anything: {theirs:.2f} s; ratio {theirs / ours:.2f}x; max |diff| {diff:.1e}")
        elif name == "vit_t":
            from napari_sam.models.mobile_sam import build_mobile_sam_modules
            from napari_sam.models.tiny_vit import fold_batchnorm

            enc = fold_batchnorm(build_mobile_sam_modules()["image_encoder"].eval())
            with torch.inference_mode():
                print(f"MobileSAM encoder (napari-sam): {_time(lambda: enc(x), args.repeats):.2f} s")
        elif name.startswith("sam2_"):
            from napari_sam.models.sam2 import build_sam2_modules

            enc = build_sam2_modules(name.removeprefix("sam2_"))["image_encoder"].eval()
            with torch.inference_mode():
                print(f"SAM 2.1 Hiera-{name[5:]} encoder (napari-sam): {_time(lambda: enc(x), args.repeats):.2f} s")


if __name__ == "__main__":
    main()
