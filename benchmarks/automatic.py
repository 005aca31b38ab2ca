"""Automatic segmentation, zoom and tiling: the figures of docs/automatic.md.

    python benchmarks/automatic.py                 # everything below
    python benchmarks/automatic.py --only speed    # one part (nuclei, options, cv,
                                                   # zoom, tiling, ct, speed)

- nuclei: nuclei_2d with no prompts: instance F1@0.5, precision, recall,
  mean matched IoU (default settings, embedded model), whole image and each
  half (left: columns < 256);
- options: the designs compared on the same image (blob proposals alone
  without the model; blobs with every concavity cut, no model; split-check,
  the default; split-check with the decoder answering nothing; the model's
  masks replacing the blobs (the previous default), with and without zoom;
  a multi-scale box grid + model);
- cv: split-check's two thresholds (concavity score, part quality) on a grid,
  scored on each half of nuclei_2d: chosen on one half, reported on the other
  (ties: the fewest prompts, then the higher quality threshold);
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
from napari_sam.embeddings import CropEmbeddings  # noqa: E402
from napari_sam.evaluation import iou_matrix, match_instances  # noqa: E402
from napari_sam.intensity import parse_window, resolve_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.predictor import SlicePredictor  # noqa: E402
from napari_sam.zoom import ZoomSettings  # noqa: E402

PARTS = ("nuclei", "options", "cv", "zoom", "tiling", "ct", "speed")


def load_nuclei():
    import tifffile

    d = shared_data_dir() / "nuclei_2d"
    raw = tifffile.imread(d / "image.tif")
    return resolve_window(raw).apply(raw), tifffile.imread(d / "labels.tif").astype(np.int32)


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPU(s)"


def halves(labels, lab) -> str:
    """F1 / mean matched IoU on the left (columns < 256) and right halves."""
    a = match_instances(labels[:, :256], lab[:, :256])
    b = match_instances(labels[:, 256:], lab[:, 256:])
    return f"left F1 {a.f1:.3f} IoU {a.mean_matched_iou:.3f} | right F1 {b.f1:.3f} IoU {b.mean_matched_iou:.3f}"


def part_nuclei(model, img, lab, cache):
    res = AutomaticSegmenter(model, AutoSettings.for_microscopy(), cache).segment(img)
    s = match_instances(res.labels, lab)
    print(f"nuclei_2d automatic (defaults: blobs, split-check with LiteMedSAM): {s.summary()}")
    print(f"  {halves(res.labels, lab)}")
    print(
        f"  {res.candidates} split hypotheses, {res.proposals} prompts, {res.encoder_calls} encoder runs, "
        f"{res.labels.max()} objects, diameter {res.diameter:.1f} px"
    )
    return s


class _Silent:
    """The model with its decoder answering nothing (empty masks, scores unchanged)."""

    def __init__(self, model):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)

    def decode_low_res(self, *args, **kwargs):
        import torch

        low, scores = self._m.decode_low_res(*args, **kwargs)
        return torch.full_like(low, -20.0), scores


def part_cv(model, img, lab):
    from napari_sam.automatic import estimate_object_diameter, estimate_polarity, refine_diameter
    from napari_sam.automatic.mosaic import decode_in_mosaics
    from napari_sam.automatic.split_check import apply_splits, judge_split, split_requests
    from napari_sam.automatic.splits import split_hypotheses

    pol = estimate_polarity(img)
    d = refine_diameter(img, estimate_object_diameter(img, pol), pol)
    ms = max(4, int(0.2 * np.pi * (d / 2) ** 2))
    regions = structure_proposals_regions(img, d, pol, ms)
    grid = {}
    for conc in (0.1, 0.15, 0.2, 0.3):
        hyps = split_hypotheses(regions, d, ms, conc)
        reqs = split_requests(hyps)
        answers = decode_in_mosaics(model, [img], reqs)
        for q in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
            out = apply_splits(regions, hyps, [judge_split(h, r, a, q, 0.4) for h, r, a in zip(hyps, reqs, answers)])
            grid[(conc, q)] = (
                match_instances(out[:, :256], lab[:, :256]),
                match_instances(out[:, 256:], lab[:, 256:]),
                sum(len(r.boxes) for r in reqs),
            )
    for (conc, q), (a, b, n) in grid.items():
        print(
            f"cv  concavity {conc:.2f} quality {q:.2f}: left F1 {a.f1:.3f} IoU {a.mean_matched_iou:.3f} | "
            f"right F1 {b.f1:.3f} IoU {b.mean_matched_iou:.3f}  [{n} prompts]"
        )
    for tune, test, name in ((0, 1, "left"), (1, 0, "right")):
        best = max(grid.items(), key=lambda kv: (round(kv[1][tune].f1, 6), -kv[1][2], kv[0][1]))
        (conc, q), row = best
        print(
            f"cv: chosen on the {name} half: concavity {conc}, quality {q} ({name} F1 {row[tune].f1:.3f}); "
            f"the other half: F1 {row[test].f1:.3f}, mean matched IoU {row[test].mean_matched_iou:.3f}"
        )
    b = (match_instances(regions[:, :256], lab[:, :256]), match_instances(regions[:, 256:], lab[:, 256:]))
    print(f"cv: blobs alone: left F1 {b[0].f1:.3f}, right F1 {b[1].f1:.3f}")


def structure_proposals_regions(img, d, pol, ms):
    from napari_sam.automatic import structure_proposals

    return structure_proposals(img, "blobs", d, pol, ms, img.size // 2).regions


def part_options(model, img, lab, cache, with_grids: bool = True):
    from napari_sam.automatic import estimate_object_diameter, estimate_polarity, refine_diameter, structure_proposals

    pol = estimate_polarity(img)
    d = refine_diameter(img, estimate_object_diameter(img, pol), pol)
    ms = max(4, int(0.2 * np.pi * (d / 2) ** 2))
    t = time.perf_counter()
    props = structure_proposals(img, "blobs", d, pol, ms, img.size // 2)
    dt = time.perf_counter() - t
    print(
        f"options  blob proposals alone (no model)        {match_instances(props.regions, lab).summary()}  [{dt:.1f} s]"
    )
    print(f"           {halves(props.regions, lab)}")
    from napari_sam.automatic.split_check import SplitVerdict, apply_splits
    from napari_sam.automatic.splits import split_hypotheses

    hyps = split_hypotheses(props.regions, d, ms, AutoSettings().split_concavity)
    every = apply_splits(props.regions, hyps, [SplitVerdict(True, np.ones(1), np.ones(1), 1.0)] * len(hyps))
    print(f"options  blobs + every concavity cut (no model) {match_instances(every, lab).summary()}")
    print(f"           {halves(every, lab)}")
    res = AutomaticSegmenter(_Silent(model), AutoSettings.for_microscopy(), cache).segment(img)
    print(f"options  split-check, decoder answering nothing  {match_instances(res.labels, lab).summary()}")
    masks = AutoSettings.for_microscopy(model_role="masks")
    rows = [
        ("split-check: blobs + model (default)", AutoSettings.for_microscopy()),
        ("model masks (masks, previous default)", masks),
        ("model masks, no box clipping", masks.with_(box_clip_margin=None)),
        ("model masks, zoom crops", masks.with_(zoom=ZoomSettings())),
    ]
    grids = [
        ("box grid (1x, 2x diameter) + model", AutoSettings(proposals="box-grid", box_grid_sides=(1.0, 2.0))),
        ("blobs + box grid + model", AutoSettings(proposals="blobs+box-grid", box_grid_sides=(1.0, 2.0))),
    ]
    for name, st in rows + (grids if with_grids else []):
        t = time.perf_counter()
        res = AutomaticSegmenter(model, st, cache).segment(img)
        dt = time.perf_counter() - t
        print(
            f"options  {name:40s} {match_instances(res.labels, lab).summary()}  "
            f"[{res.proposals} prompts, {res.encoder_calls} new embeddings, {dt:.1f} s]",
            flush=True,
        )
        print(f"           {halves(res.labels, lab)}")


def part_zoom(model, img, lab, cache):
    from scipy import ndimage

    objs = ndimage.find_objects(lab)
    whole = SlicePredictor(model)
    emb = whole.set_image(img)
    variants = {
        "whole slice (core path)": whole,
        "zoom, crops on the shared grid": SlicePredictor(model, zoom=ZoomSettings(), crop_embeddings=cache),
        "zoom, centred crops (default)": SlicePredictor(model, zoom=True, crop_embeddings=cache),
    }
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
        print(
            f"  {name:34s} {np.mean(ds):.3f} / {np.median(ds):.3f}   "
            f"[{cache.encoder_calls - calls0} crop embeddings, {time.perf_counter() - t:.1f} s]",
            flush=True,
        )
    return results


def part_tiling(model, img, lab, cache, single_f1=None):
    if single_f1 is None:
        single_f1 = match_instances(
            AutomaticSegmenter(model, AutoSettings.for_microscopy(model_role="masks"), cache).segment(img).labels, lab
        ).f1
    mosaic = np.block([[img, img], [img, img]])
    off = int(lab.max())
    mlab = np.block(
        [
            [lab, np.where(lab > 0, lab + off, 0)],
            [np.where(lab > 0, lab + 2 * off, 0), np.where(lab > 0, lab + 3 * off, 0)],
        ]
    )
    st = AutoSettings.for_microscopy(tile_shape=(512, 512), halo=64, model_role="masks")  # decoded on tiles
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
    print(f"tiling: 2x2 mosaic {mosaic.shape}, {len(grid)} tiles of {st.tile_shape} (halo {st.halo}): {s.summary()}")
    print(
        f"  single image F1 {single_f1:.3f}, mosaic F1 {s.f1:.3f} (difference {s.f1 - single_f1:+.3f}); "
        f"{crossing} reference objects cross a tile-core border, {split} of them split; "
        f"{res.encoder_calls} tile embeddings",
        flush=True,
    )


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
        print(
            f"ct slice {z}: {ok}/{len(big)} structures >= 2000 px recovered at IoU >= 0.5 "
            f"({', '.join(f'{k} {v:.2f}' for k, v in best.items())}); {res.labels.max()} objects, "
            f"{res.proposals} prompts, {res.timings['total']:.1f} s",
            flush=True,
        )
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
    print(
        f"speed: encoder {statistics.median(enc):.2f} s per embedding, decoder "
        f"{1000 * statistics.median(dec):.0f} ms per prompt (median; torch threads {torch.get_num_threads()})"
    )
    stages: dict[str, list[float]] = {}
    for _ in range(runs):
        model.forget_recent()  # cold: the slice is encoded again in every run
        seg = AutomaticSegmenter(model, AutoSettings.for_microscopy(), CropEmbeddings(model))  # cold cache
        t, c = time.perf_counter(), time.process_time()
        res = seg.segment(img)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        for k, v in {**res.timings, "wall": wall, "cpu": cpu}.items():
            stages.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in stages.items()}
    print(
        f"speed: automatic mode on {img.shape} nuclei, median of {runs} cold runs: wall {med['wall']:.2f} s = "
        f"proposals {med['proposals']:.2f} + encoder {med['encoder']:.2f} ({res.encoder_calls} runs) + decoder "
        f"{med['decoder']:.2f} ({res.proposals} prompts, {1000 * med['decoder'] / max(res.proposals, 1):.0f} ms "
        f"each) + postprocess {med['postprocess']:.2f} s; CPU {med['cpu']:.2f} s (process_time)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--ct-slices", default="10", help="CT slices, e.g. 10 or 0-19")
    ap.add_argument("--runs", type=int, default=3, help="speed runs")
    ap.add_argument("--no-grids", action="store_true", help="options: skip the box-grid rows (2400+ prompts)")
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
        part_options(model, img, lab, cache, not args.no_grids)
    if "cv" in parts:
        part_cv(model, img, lab)
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
