"""Propagation on the shared abdominal CT: accuracy against the plain reference
protocol, stop-rule quality, float16 storage, warm-cache CLI re-run, and peak
memory on a 512x512x300 volume.

    python benchmarks/propagation_ct.py                 # everything
    python benchmarks/propagation_ct.py accuracy fp16   # some parts
    python benchmarks/propagation_ct.py --cache-dir DIR # embedding cache to use

Parts:

accuracy  For every labelled structure of at least 1000 voxels, and every one
          that starts or ends inside the volume (from the labels: 10 on the
          shared CT, the 6th and 12th ribs among them): one box (the
          label's bounding box) on its largest slice, then propagation through
          the volume. Bone window (400/1800) for skeletal structures,
          soft-tissue window (40/400) otherwise. Per-structure 3D Dice of
          (a) ours (napari_sam.propagation.Propagator, default settings),
          (b) the reference protocol run in the same script: each next slice
              prompted with the box of the previous mask + 3 px, stopping when
              the mask vanishes or the predicted IoU falls under 0.5,
          (c) the ceiling of box prompting: the label's own box on every slice
              it covers (no propagation, no stop decision).
          Stop-rule quality for the structures that start or end inside the
          volume: slices wrongly added past the true end, slices wrongly cut
          short before it.
fp16      Masks decoded from float16-stored embeddings against float32 ones
          (the label's box on every labelled slice of every structure).
cli       `napari-sam segment` with propagating objects, cold cache then
          warm: encoder calls and wall time of each run.
memory    Peak RSS of a process propagating the liver through the CT
          resampled to 512x512x300 (linear along z), embeddings cached on
          disk (float16) and an LRU of 32 in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, dice, load_ct  # noqa: E402
from napari_sam.embeddings import SliceEmbeddings  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.intensity import parse_window  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.prompts import SlicePrompt  # noqa: E402
from napari_sam.propagation import PropagationState, Propagator  # noqa: E402

SKELETAL = (
    "vertebrae",
    "rib",
    "humerus",
    "costal_cartilages",
    "sternum",
    "scapula",
    "clavicula",
    "femur",
    "hip",
    "sacrum",
    "skull",
)
MIN_VOXELS = 1000


def ends_inside(labels: np.ndarray) -> set[int]:
    """Label ids whose first or last slice (axis 0) lies inside the volume, read
    from the labels (on the shared CT: 10 structures, pancreas and both 12th
    ribs among them)."""
    n = labels.shape[0]
    out = set()
    for i in np.unique(labels):
        if i:
            zs = np.flatnonzero((labels == i).any((1, 2)))
            if zs[0] > 0 or zs[-1] < n - 1:
                out.add(int(i))
    return out


def window_for(name: str) -> str:
    return "bone" if name.startswith(SKELETAL) else "soft-tissue"


def structures(labels: np.ndarray, names: dict[int, str]) -> list[int]:
    """Every structure of at least MIN_VOXELS voxels, and every one that ends inside the volume."""
    ids, counts = np.unique(labels, return_counts=True)
    inside = ends_inside(labels)
    return [int(i) for i, n in zip(ids, counts) if i and (n >= MIN_VOXELS or int(i) in inside)]


@torch.inference_mode()
def reference_protocol(backend, emb: SliceEmbeddings, z0: int, box) -> dict[int, np.ndarray]:
    """The plain protocol: box of the previous mask + 3 px; stop when the mask
    vanishes or the predicted IoU < 0.5."""

    def decode(z, b):
        d = backend.decode(emb.get(z), boxes_rc=np.asarray(b, np.float32)[None])
        return d.masks[0, 0], float(d.scores[0, 0])

    out = {z0: decode(z0, box)[0]}
    n = len(emb)
    for step in (1, -1):
        prev, z = out[z0], z0 + step
        while 0 <= z < n and prev.any():
            r0, c0, r1, c1 = box_of_mask(prev)
            h, w = prev.shape
            m, s = decode(z, (max(0, r0 - 3), max(0, c0 - 3), min(h - 1, r1 + 3), min(w - 1, c1 + 3)))
            if not m.any() or s < 0.5:
                break
            out[z], prev, z = m, m, z + step
    return out


@torch.inference_mode()
def box_ceiling(backend, emb: SliceEmbeddings, gt: np.ndarray) -> np.ndarray:
    out = np.zeros_like(gt)
    for z in np.flatnonzero(gt.any((1, 2))):
        out[z] = backend.decode(emb.get(int(z)), boxes_rc=np.asarray(box_of_mask(gt[z]), np.float32)[None]).masks[0, 0]
    return out


def stop_errors(pred_slices: set[int], gt_slices: set[int], n: int) -> tuple[int, int]:
    """(slices added past the true ends, slices cut short before them), counted
    only at ends that lie inside the volume."""
    g0, g1 = min(gt_slices), max(gt_slices)
    added = short = 0
    if g0 > 0:
        added += sum(1 for z in pred_slices if z < g0)
        short += sum(1 for z in range(g0, g1 + 1) if z not in pred_slices and z < min(pred_slices, default=n))
    if g1 < n - 1:
        added += sum(1 for z in pred_slices if z > g1)
        short += sum(1 for z in range(g0, g1 + 1) if z not in pred_slices and z > max(pred_slices, default=-1))
    return added, short


def part_accuracy(backend, cache_dir: Path) -> None:
    vol, labels, names = load_ct()
    embs = {
        w: SliceEmbeddings(backend, vol.array, parse_window(w), cache_dir=cache_dir, max_in_memory=64)
        for w in ("soft-tissue", "bone")
    }
    n = vol.array.shape[0]
    inside = ends_inside(labels)
    rows = []
    print(
        f"{'structure':30s} {'win':4s} {'key':>3s} {'ours':>6s} {'ref':>6s} {'ceil':>6s}  "
        f"{'ours ext':>8s} {'ref ext':>8s} {'gt ext':>8s}  ours +/-  ref +/-  time",
        flush=True,
    )
    for lid in structures(labels, names):
        name = names[lid]
        gt = labels == lid
        emb = embs[window_for(name)]
        areas = gt.sum((1, 2))
        z0 = int(areas.argmax())
        box = box_of_mask(gt[z0])
        t0 = time.perf_counter()
        state = PropagationState(shape=gt.shape)
        state.add_prompt(z0, SlicePrompt(box=box, slice=z0))
        Propagator(backend, emb).propagate(state)
        t_ours = time.perf_counter() - t0
        ours = state.volume_mask()
        ref_masks = reference_protocol(backend, emb, z0, box)
        ref = np.zeros_like(gt)
        for z, m in ref_masks.items():
            ref[z] = m
        ceil = box_ceiling(backend, emb, gt)
        gt_sl = set(np.flatnonzero(areas).tolist())
        ours_sl = set(np.flatnonzero(ours.any((1, 2))).tolist())
        ref_sl = set(np.flatnonzero(ref.any((1, 2))).tolist())
        r = dict(
            name=name,
            window=window_for(name),
            voxels=int(gt.sum()),
            key=z0,
            ours=dice(ours, gt),
            ref=dice(ref, gt),
            ceiling=dice(ceil, gt),
            ends_inside=lid in inside,
            ours_err=stop_errors(ours_sl, gt_sl, n),
            ref_err=stop_errors(ref_sl, gt_sl, n),
            stops=[f"{s.direction:+d}@{s.last}:{s.reason.value}" for s in state.stops],
            seconds=t_ours,
        )
        rows.append(r)
        ext = lambda s: f"{min(s)}-{max(s)}" if s else "-"  # noqa: E731
        print(
            f"{name:30s} {r['window'][:4]:4s} {z0:3d} {r['ours']:6.3f} {r['ref']:6.3f} {r['ceiling']:6.3f}  "
            f"{ext(ours_sl):>8s} {ext(ref_sl):>8s} {ext(gt_sl):>8s}  "
            f"{r['ours_err'][0]:2d}/{r['ours_err'][1]:<2d}    {r['ref_err'][0]:2d}/{r['ref_err'][1]:<2d}   "
            f"{t_ours:5.1f}s  {' '.join(r['stops'])}",
            flush=True,
        )
    big = [r for r in rows if r["voxels"] >= MIN_VOXELS]
    ends = [r for r in rows if r["ends_inside"]]
    print()
    for label, group in ((f"all structures >= {MIN_VOXELS} voxels", big), ("structures ending inside", ends)):
        o, f, c = (np.mean([r[k] for r in group]) for k in ("ours", "ref", "ceiling"))
        print(
            f"mean Dice, {label} (n={len(group)}): ours {o:.3f}, reference {f:.3f} "
            f"(ours/ref {o / f:.2f}), box ceiling {c:.3f}; median ours {np.median([r['ours'] for r in group]):.3f}"
            f", reference {np.median([r['ref'] for r in group]):.3f}"
        )
    for who in ("ours", "ref"):
        added = sum(r[f"{who}_err"][0] for r in ends)
        short = sum(r[f"{who}_err"][1] for r in ends)
        print(
            f"stop rules ({who}), structures ending inside: {added} slice(s) wrongly added past the end, "
            f"{short} slice(s) wrongly cut short"
        )
    out = os.environ.get("PROPAGATION_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))


def part_fp16(backend, cache_dir: Path) -> None:
    vol, labels, names = load_ct()
    agree = []
    for w in ("soft-tissue", "bone"):
        e16 = SliceEmbeddings(backend, vol.array, parse_window(w), cache_dir=cache_dir, dtype="float16")
        e32 = SliceEmbeddings(backend, vol.array, parse_window(w), cache_dir=cache_dir, dtype="float32")
        for lid in structures(labels, names):
            if window_for(names[lid]) != w:
                continue
            gt = labels == lid
            for z in np.flatnonzero(gt.any((1, 2))):
                b = np.asarray(box_of_mask(gt[z]), np.float32)[None]
                with torch.inference_mode():
                    m16 = backend.decode(e16.get(int(z)), boxes_rc=b).masks[0, 0]
                    m32 = backend.decode(e32.get(int(z)), boxes_rc=b).masks[0, 0]
                agree.append((dice(m16, m32), int((m16 != m32).sum()), int(m32.sum())))
    d = np.array([a[0] for a in agree])
    px = np.array([a[1] for a in agree])
    print(
        f"float16 vs float32 storage: {len(d)} masks; Dice between them: mean {d.mean():.4f}, min {d.min():.4f}, "
        f"5th percentile {np.percentile(d, 5):.4f}; differing pixels: median {np.median(px):.0f}, "
        f"max {px.max()} (of masks of median {np.median([a[2] for a in agree]):.0f} px)"
    )


def part_cli(cache_root: Path) -> None:
    """Cold then warm `napari-sam segment` with propagating objects."""
    d = Path(tempfile.mkdtemp(prefix="nsam-cli-"))
    cache = d / "cache"
    vol, labels, names = load_ct()
    ids = {v: k for k, v in names.items()}
    objects = []
    for i, name in enumerate(("liver", "spleen", "aorta", "adrenal_gland_right", "portal_vein_and_splenic_vein")):
        gt = labels == ids[name]
        z0 = int(gt.sum((1, 2)).argmax())
        objects.append(
            {
                "id": i + 1,
                "name": name,
                "propagate": True,
                "window": "soft-tissue",
                "prompts": [{"slice": z0, "box": list(box_of_mask(gt[z0]))}],
            }
        )
    (d / "prompts.json").write_text(json.dumps({"objects": objects}))
    dicom = ROOT.parent / "shared" / "data" / "ct_abdomen_dicom" / "dicom"
    if os.environ.get("NAPARI_SAM_DATA"):
        dicom = Path(os.environ["NAPARI_SAM_DATA"]) / "ct_abdomen_dicom" / "dicom"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for run in ("cold", "warm"):
        out = d / f"seg_{run}.nii.gz"
        t0 = time.perf_counter()
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "napari_sam.cli",
                "segment",
                str(dicom),
                "--prompts",
                str(d / "prompts.json"),
                "--output",
                str(out),
                "--cache-dir",
                str(cache),
                "--quiet",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if p.returncode:
            print(f"cli {run}: failed: {p.stderr.strip()}")
            return
        side = json.loads((d / f"seg_{run}.json").read_text())
        print(
            f"cli segment, {run} cache: {side['encoder_calls']} encoder call(s), "
            f"{side['cache_hits']} slice(s) from the cache, wall {wall:.1f} s (process start and model load included)"
        )
    same = np.array_equal(
        *(
            np.asarray(
                __import__("SimpleITK").GetArrayFromImage(__import__("SimpleITK").ReadImage(str(d / f"seg_{r}.nii.gz")))
            )
            for r in ("cold", "warm")
        )
    )
    print(f"cli segment: warm output identical to cold: {same}")


MEMORY_CHILD = r"""
import resource, sys, time, numpy as np
from scipy import ndimage
sys.path.insert(0, {bench!r})
from common import load_ct
from napari_sam.embeddings import SliceEmbeddings
from napari_sam.intensity import parse_window
from napari_sam.models.registry import load_model
from napari_sam.prompts import SlicePrompt
from napari_sam.geometry import box_of_mask
from napari_sam.propagation import PropagationState, Propagator
vol, labels, names = load_ct()
ids = {{v: k for k, v in names.items()}}
big = ndimage.zoom(vol.array, (300 / vol.array.shape[0], 1, 1), order=1).astype(np.int16)
lab = ndimage.zoom((labels == ids['liver']).astype(np.uint8), (300 / labels.shape[0], 1, 1), order=0).astype(bool)
del vol, labels
print('volume', big.shape, big.dtype, f'{{big.nbytes / 2**20:.0f}} MiB', flush=True)
backend = load_model('lite_medsam')
emb = SliceEmbeddings(backend, big, parse_window('soft-tissue'), cache_dir={cache!r}, max_in_memory=32)
z0 = int(lab.sum((1, 2)).argmax())
state = PropagationState(shape=big.shape)
state.add_prompt(z0, SlicePrompt(box=box_of_mask(lab[z0]), slice=z0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
Propagator(backend, emb).propagate(state, progress=lambda d, t, m: print(f'  {{d}}/{{t}} {{m}}', flush=True)
                                   if d % 25 == 0 else None)
t = time.perf_counter() - t0
m = state.volume_mask()
inter = np.logical_and(m, lab).sum()
print(f'propagated {{len(state.results)}} slices in {{t:.0f}} s ({{emb.encoder_calls}} encoded, {{emb.disk_hits}} from disk); '
      f'Dice vs resampled label {{2 * inter / (m.sum() + lab.sum()):.3f}}', flush=True)
print(f'peak RSS {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}} MiB '
      f'(before propagation: {{base:.0f}} MiB, the volume itself {{big.nbytes / 2**20:.0f}} MiB)', flush=True)
"""


def part_memory(cache_root: Path) -> None:
    code = MEMORY_CHILD.format(bench=str(Path(__file__).resolve().parent), cache=str(cache_root / "memory"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-c", code], env=env, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "parts", nargs="*", default=["accuracy", "fp16", "cli", "memory"], choices=["accuracy", "fp16", "cli", "memory"]
    )
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: the user cache folder)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    from napari_sam.cache import resolve_cache_dir

    cache = resolve_cache_dir(args.cache_dir)
    backend = load_model("lite_medsam")
    for part in args.parts:
        print(f"== {part}", flush=True)
        if part == "accuracy":
            part_accuracy(backend, cache)
        elif part == "fp16":
            part_fp16(backend, cache)
        elif part == "cli":
            part_cli(cache)
        else:
            part_memory(cache)


if __name__ == "__main__":
    main()
