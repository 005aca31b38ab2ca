"""Automatic segmentation, zoom and tiling: the figures of docs/automatic.md.

    python benchmarks/automatic.py                 # everything below
    python benchmarks/automatic.py --only speed    # one part (nuclei, options,
                                                   # zoom, tiling, ct, speed)

- nuclei: nuclei_2d with no prompts: instance F1@0.5, precision, recall,
  mean matched IoU (default settings, embedded model);
- options: the proposal designs compared on the same image (structure
  proposals alone without the model, blobs + model, zoomed blobs + model,
  a multi-scale box grid + model);
- zoom: one box per nucleus (from the reference mask): mean Dice of the
  whole-slice path (the core's SlicePredictor) against the zoom path;
- tiling: a 2x2 mosaic of nuclei_2d (1024 px) with 512 px tiles: F1 on the
  mosaic against F1 on the single image, and objects split at a tile border;
- ct: one slice of the shared CT (soft-tissue window): the fraction of
  labelled structures of at least 2000 px recovered at IoU >= 0.5;
- speed: wall time of automatic mode on the 512 x 512 nuclei image, stages
  broken down, median of runs with a cold embedding cache, with the
  encoder and the per-prompt decoder timed in the same run for scale.

Prints medians; the machine's load average is printed too (this is a shared
2-core machine: timings taken under load are slower than the machine is).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice, load_ct, shared_data_dir  # noqa: E402

from napari_sam.automatic import AutomaticSegmenter, AutoSettings  # noqa: E402
from napari_sam.evaluation import iou_matrix, match_instances  # noqa: E402
from napari_sam.intensity import parse_window, resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.predictor import SlicePredictor  # noqa: E402
from napari_sam.zoom import ZoomSettings  # noqa: E402
from napari_sam.embeddings import CropEmbeddings  # noqa: E402

PARTS = ("nuclei", "options", "zoom", "tiling", "ct", "speed")


def load_nuclei():
    import tifffile

    d = shared_data_dir() / "nuclei_2d"
    raw = tifffile.imread(d / "image.tif")
    return resolve_window(raw).apply(raw), tifffile.imread(d / "labels.tif").astype(np.int32)


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPU(s)"


def part_nuclei(model, img, lab, cache):
    res = AutomaticSegmenter(model, AutoSettings.for_microscopy(), cache).segment(img)
    s = match_instances(res.labels, lab)
    print(f"nuclei_2d automatic (defaults, blobs + LiteMedSAM): {s.summary()}")
    print(f"  {res.proposals} prompts, {res.labels.max()} objects, diameter {res.diameter:.1f} px")
    return s


def part_options(model, img, lab, cache):
    from napari_sam.automatic import estimate_object_diameter, estimate_polarity, refine_diameter, \
        structure_proposals

    pol = estimate_polarity(img)
    d = refine_diameter(img, estimate_object_diameter(img, pol), pol)
    ms = max(4, int(0.2 * np.pi * (d / 2) ** 2))
    t = time.perf_counter()
    props = structure_proposals(img, "blobs", d, pol, ms, img.size // 2)
    dt = time.perf_counter() - t
    print(f"options  blob proposals alone (no model)        {match_instances(props.regions, lab).summary()}"
          f"  [{dt:.1f} s]")
    rows = [("blobs + model (default)", AutoSettings.for_microscopy()),
            ("blobs + model, no box clipping", AutoSettings.for_microscopy(box_clip_margin=None)),
            ("blobs + model, zoom crops", AutoSettings.for_microscopy(zoom=ZoomSettings())),
            ("box grid (1x, 2x diameter) + model", AutoSettings(proposals="box-grid", box_grid_sides=(1.0, 2.0))),
            ("blobs + box grid + model", AutoSettings(proposals="blobs+box-grid", box_grid_sides=(1.0, 2.0)))]
    for name, st in rows:
        t = time.perf_counter()
        res = AutomaticSegmenter(model, st, cache).segment(img)
        dt = time.perf_counter() - t
        print(f"options  {name:40s} {match_instances(res.labels, lab).summary()}  "
              f"[{res.proposals} prompts, {res.encoder_calls} new embeddings, {dt:.1f} s]", flush=True)


def part_zoom(model, img, lab, cache):
    from scipy import ndimage

    objs = ndimage.find_objects(lab)
    whole = SlicePredictor(model)
    emb = whole.set_image(img)
    variants = {"whole slice (core path)": whole,
                "zoom, crops on the shared grid": SlicePredictor(model, zoom=ZoomSettings(), crop_embeddings=cache),
                "zoom, centred crops (default)": SlicePredictor(model, zoom=True, crop_embeddings=cache)}
    for p in variants.values():
        if p is not whole:
            p.set_embedding(emb, image=img, image_key="nuclei_2d")
    print(f"zoom: one box per nucleus ({sum(s is not None for s in objs)} nuclei), mean / median Dice:")
    results = {}
    for name, pred in variants.items():
        ds = []
        calls0 = cache.encoder_calls
        t = time.perf_counter()
        for i, s in enumerate(objs, start=1):
            if s is None:
                continue
            box = (s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1)
            m = pred.predict(box=box, multimask=False).mask
            ds.append(dice(m, lab == i))
        results[name] = float(np.mean(ds))
        print(f"  {name:34s} {np.mean(ds):.3f} / {np.median(ds):.3f}   "
              f"[{cache.encoder_calls - calls0} crop embeddings, {time.perf_counter() - t:.1f} s]", flush=True)
    return results


def part_tiling(model, img, lab, cache, single_f1=None):
    if single_f1 is None:
        single_f1 = match_instances(AutomaticSegmenter(model, AutoSettings.for_microscopy(), cache)
                                    .segment(img).labels, lab).f1
    mosaic = np.block([[img, img], [img, img]])
    off = int(lab.max())
    mlab = np.block([[lab, np.where(lab > 0, lab + off, 0)],
                     [np.where(lab > 0, lab + 2 * off, 0), np.where(lab > 0, lab + 3 * off, 0)]])
    st = AutoSettings.for_microscopy(tile_shape=(512, 512), halo=64)
    res = AutomaticSegmenter(model, st, cache).segment(mosaic)
    s = match_instances(res.labels, mlab)
    from napari_sam.tiling import TileGrid

    grid = TileGrid(mosaic.shape, st.tile_shape, st.halo)
    cuts_r, cuts_c = grid.row_cuts[1:-1], grid.col_cuts[1:-1]
    crossing = split = 0
    for k in np.unique(mlab)[1:]:
        rr, cc = np.nonzero(mlab == k)
        if any(rr.min() < c <= rr.max() for c in cuts_r) or any(cc.min() < c <= cc.max() for c in cuts_c):
            crossing += 1
            ids, counts = np.unique(res.labels[mlab == k], return_counts=True)
            if np.sum((ids > 0) & (counts >= 0.25 * len(rr))) > 1:
                split += 1
    print(f"tiling: 2x2 mosaic {mosaic.shape}, {len(grid)} tiles of {st.tile_shape} (halo {st.halo}): "
          f"{s.summary()}")
    print(f"  single image F1 {single_f1:.3f}, mosaic F1 {s.f1:.3f} (difference {s.f1 - single_f1:+.3f}); "
          f"{crossing} reference objects cross a tile-core border, {split} of them split; "
          f"{res.encoder_calls} tile embeddings", flush=True)


def part_ct(model, slices):
    vol, labels, names = load_ct()
    win = parse_window("soft-tissue")
    found = total = 0
    for z in slices:
        res = AutomaticSegmenter(model, AutoSettings.for_ct()).segment(win.apply(vol.array[z]))
        gt = labels[z]
        ids, counts = np.unique(gt, return_counts=True)
        big = [int(i) for i, c in zip(ids, counts) if i and c >= 2000]
        _, ref_ids, iou = iou_matrix(res.labels, gt)
        best = {names[i]: float(iou[:, list(ref_ids).index(i)].max()) if iou.shape[0] else 0.0 for i in big}
        ok = sum(v >= 0.5 for v in best.values())
        found += ok
        total += len(big)
        print(f"ct slice {z}: {ok}/{len(big)} structures >= 2000 px recovered at IoU >= 0.5 "
              f"({', '.join(f'{k} {v:.2f}' for k, v in best.items())}); {res.labels.max()} objects, "
              f"{res.proposals} prompts, {res.timings['total']:.1f} s", flush=True)
    print(f"ct: {found}/{total} = {found / max(total, 1):.2f} over slice(s) {list(slices)}")


def part_speed(model, img, runs: int):
    import torch

    # the model's own costs in this run, for scale
    enc = []
    for _ in range(3):
        model.forget_recent()
        t = time.perf_counter()
        emb = model.embed(img)
        enc.append(time.perf_counter() - t)
    box = np.array([[200.0, 200.0, 228.0, 230.0]], np.float32)
    dec = []
    for _ in range(10):
        t = time.perf_counter()
        model.decode_low_res(emb, boxes_rc=box)
        dec.append(time.perf_counter() - t)
    print(f"speed: encoder {statistics.median(enc):.2f} s per embedding, decoder "
          f"{1000 * statistics.median(dec):.0f} ms per prompt (median; torch threads {torch.get_num_threads()})")
    stages: dict[str, list[float]] = {}
    for _ in range(runs):
        model.forget_recent()  # cold: the slice is encoded again in every run
        seg = AutomaticSegmenter(model, AutoSettings.for_microscopy(), CropEmbeddings(model))  # cold cache
        t = time.perf_counter()
        res = seg.segment(img)
        wall = time.perf_counter() - t
        for k, v in {**res.timings, "wall": wall}.items():
            stages.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in stages.items()}
    print(f"speed: automatic mode on {img.shape} nuclei, median of {runs} cold runs: wall {med['wall']:.2f} s = "
          f"proposals {med['proposals']:.2f} + encoder {med['encoder']:.2f} + decoder {med['decoder']:.2f} "
          f"({res.proposals} prompts, {1000 * med['decoder'] / max(res.proposals, 1):.0f} ms each) + "
          f"postprocess {med['postprocess']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--ct-slices", default="10", help="CT slices, e.g. 10 or 0-19")
    ap.add_argument("--runs", type=int, default=3, help="speed runs")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    print(load())
    model = load_model("lite_medsam")
    img, lab = load_nuclei()
    cache = CropEmbeddings(model, max_in_memory=256)
    f1 = None
    if "nuclei" in parts:
        f1 = part_nuclei(model, img, lab, cache).f1
    if "options" in parts:
        part_options(model, img, lab, cache)
    if "zoom" in parts:
        part_zoom(model, img, lab, cache)
    if "tiling" in parts:
        part_tiling(model, img, lab, cache, f1)
    if "ct" in parts:
        a, _, b = args.ct_slices.partition("-")
        part_ct(model, range(int(a), int(b or a) + 1))
    if "speed" in parts:
        part_speed(model, img, args.runs)
    print(load())


if __name__ == "__main__":
    main()
