"""The CVPR 2025 interactive 3D segmentation protocol, through the CLI, warm cache.

    python benchmarks/interactive_3d.py ct mr                 # both datasets
    python benchmarks/interactive_3d.py mr --steps 5 --cache-dir DIR
    python benchmarks/interactive_3d.py ct --max-structures 10
    python benchmarks/interactive_3d.py ct --every 3           # every third structure (a documented subset)

Step 0: one box (the label's bounding box) on each object's largest slice,
``"propagate": true``; every object in one prompts file, one label map.
Steps 1..N (5 by default): one click per object at the deepest voxel
(Euclidean distance transform in mm) of the object's largest 26-connected
error component: label 1 if that component was missed, 0 if it was wrongly
included; the prompts file is re-run with the accumulated ``"corrections"``.
Every step is one ``napari-sam segment`` process on a warm embedding cache
(filled by ``napari-sam embed`` beforehand, not timed).

Structures come from the labels: CT, every label of at least 1000 voxels
(bone window for skeletal structures, soft-tissue window otherwise); MR,
every label of the shared MR (automatic window: none is given).

Reported: mean Dice after each step (scored on the joint label map), DSC_AUC
(trapezoid over steps 1..N, step spacing 1), final Dice, NSD at 2 mm, and
slices added past the end / cut short at step 0 (joint map, axis 0),
seconds per structure (each step's wall time over the number of objects,
summed over the steps), and the same in CPU time of the ``napari-sam``
processes (user + system: what the step costs on a machine shared with
other work, where wall time mostly measures the others). With ``--json PATH`` the per-structure rows are saved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, dice, load_ct, shared_data_dir  # noqa: E402
from napari_sam.geometry import box_of_mask  # noqa: E402
from napari_sam.io import read_image, read_labels_aligned  # noqa: E402

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
NSD_TOLERANCE_MM = 2.0
CUBE = np.ones((3, 3, 3), bool)


def load_mr():
    d = shared_data_dir() / "mr_small"
    vol = read_image(d / "image.nii.gz")
    labels = read_labels_aligned(d / "labels.nii.gz", vol)
    names = {int(k): v for k, v in json.loads((d / "labels.json").read_text()).items()}
    return vol, labels, names, d / "image.nii.gz"


def dataset(name: str):
    """(volume, labels, names, image path, structure ids, id -> window or None)."""
    if name == "ct":
        vol, labels, names = load_ct()
        path = shared_data_dir() / "ct_abdomen_dicom" / "dicom"
        ids, counts = np.unique(labels, return_counts=True)
        chosen = [int(i) for i, n in zip(ids, counts) if i and n >= MIN_VOXELS]
        windows = {i: "bone" if names[i].startswith(SKELETAL) else "soft-tissue" for i in chosen}
    else:
        vol, labels, names, path = load_mr()
        chosen = [int(i) for i in np.unique(labels) if i]
        windows = {i: None for i in chosen}
    return vol, labels, names, path, chosen, windows


def surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, CUBE, border_value=0)


def nsd(pred: np.ndarray, gt: np.ndarray, spacing, tol: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tol`` mm (spacing (z, y, x) mm)."""
    sp, sg = surface(pred), surface(gt)
    if not sp.any() and not sg.any():
        return 1.0
    if not sp.any() or not sg.any():
        return 0.0
    dg = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dp = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(((dg[sp] <= tol).sum() + (dp[sg] <= tol).sum()) / (sp.sum() + sg.sum()))


def next_correction(pred: np.ndarray, gt: np.ndarray, spacing) -> dict | None:
    """The protocol's click: deepest voxel (EDT in mm) of the largest 26-connected error component."""
    best = None
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        lab, n = ndimage.label(err, CUBE)
        if not n:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), lab == k, label)
    if best is None:
        return None
    comp = best[1]
    zz, yy, xx = np.nonzero(comp)
    lo = [max(0, a.min() - 1) for a in (zz, yy, xx)]
    sub = comp[lo[0] : zz.max() + 2, lo[1] : yy.max() + 2, lo[2] : xx.max() + 2]
    edt = ndimage.distance_transform_edt(np.pad(sub, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    p = np.unravel_index(int(np.argmax(edt)), sub.shape)
    return {"point": [int(p[i] + lo[i]) for i in range(3)], "label": best[2]}


def slices_off(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(slices added past the end, slices cut short) along axis 0: slices where the
    prediction holds the object and the label does not, and the reverse."""
    p, g = pred.any((1, 2)), gt.any((1, 2))
    return int((p & ~g).sum()), int((g & ~p).sum())


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``napari-sam`` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0, c0 = time.perf_counter(), _child_cpu()
    p = subprocess.run([sys.executable, "-m", "napari_sam.cli", *args], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"napari-sam {args[0]} failed: {p.stderr.strip()}")
    return time.perf_counter() - t0, _child_cpu() - c0


def read_map(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def step0_objects(labels: np.ndarray, names: dict, ids: list[int], windows: dict) -> list[dict]:
    """Step 0's prompts-file objects: the label's box on each structure's largest slice,
    propagated, its window (if any), and an empty list for the clicks to come."""
    objects = []
    for i in ids:
        gt = labels == i
        z0 = int(gt.sum((1, 2)).argmax())
        o = {
            "id": i,
            "name": names[i],
            "propagate": True,
            "prompts": [{"slice": z0, "box": list(box_of_mask(gt[z0]))}],
            "corrections": [],
        }
        if windows[i]:
            o["window"] = windows[i]
        objects.append(o)
    return objects


def protocol(
    name: str, steps: int, cache: Path, max_structures: int | None, out_json: str | None, every: int = 1
) -> None:
    vol, labels, names, path, ids, windows = dataset(name)
    ids = ids[::every]
    if max_structures:
        ids = ids[:max_structures]
    spacing = vol.geometry.scale_zyx
    for w in sorted({w for w in windows.values()}, key=str):
        run_cli(["embed", str(path), "--cache-dir", str(cache), "--quiet"] + (["--window", w] if w else []))
    objects = step0_objects(labels, names, ids, windows)
    work = Path(tempfile.mkdtemp(prefix=f"nsam-i3d-{name}-"))
    per_step: list[dict[int, float]] = []
    seconds: list[float] = []
    cpu: list[float] = []
    final_nsd: dict[int, float] = {}
    extents: dict[int, tuple[int, int]] = {}
    print(f"== {name}: {len(ids)} structures, {steps} click step(s), spacing {spacing} mm", flush=True)
    for step in range(steps + 1):
        (work / "prompts.json").write_text(json.dumps({"objects": objects}))
        out = work / f"seg_{step}.nii.gz"
        wall, cpu_s = run_cli(
            [
                "segment",
                str(path),
                "--prompts",
                str(work / "prompts.json"),
                "--output",
                str(out),
                "--cache-dir",
                str(cache),
                "--quiet",
                "--overwrite",
            ]
        )
        seconds.append(wall / len(ids))
        cpu.append(cpu_s / len(ids))
        seg = read_map(out)
        scores = {}
        for o in objects:
            pred, gt = seg == o["id"], labels == o["id"]
            scores[o["id"]] = dice(pred, gt)
            if step == 0:
                extents[o["id"]] = slices_off(pred, gt)
            if step == steps:
                final_nsd[o["id"]] = nsd(pred, gt, spacing)
            elif (c := next_correction(pred, gt, spacing)) is not None:
                o["corrections"].append(c)
        per_step.append(scores)
        print(
            f"step {step}: mean Dice {np.mean(list(scores.values())):.3f}  ({wall:.1f} s wall, "
            f"{wall / len(ids):.1f} s per structure; CPU {cpu_s / len(ids):.1f} s per structure)  "
            + " ".join(f"{names[k]}={v:.3f}" for k, v in scores.items()),
            flush=True,
        )
    curve = [float(np.mean(list(s.values()))) for s in per_step]
    auc = float(np.trapezoid(curve[1:])) if steps > 1 else float("nan")
    print(f"{'structure':32s} " + " ".join(f"{'s' + str(k):>6s}" for k in range(steps + 1)) + "    NSD2")
    rows = []
    for i in ids:
        d = [per_step[k][i] for k in range(steps + 1)]
        rows.append(
            {
                "id": i,
                "name": names[i],
                "dice": d,
                "nsd2": final_nsd[i],
                "step0_added": extents[i][0],
                "step0_cut_short": extents[i][1],
                "corrections": next(o["corrections"] for o in objects if o["id"] == i),
            }
        )
        print(f"{names[i]:32s} " + " ".join(f"{v:6.3f}" for v in d) + f"  {final_nsd[i]:6.3f}")
    print(
        f"{name}: step 0, slices added past the end / cut short (joint map): "
        f"{sum(a for a, _ in extents.values())} / {sum(c for _, c in extents.values())}"
    )
    print(
        f"{name}: Dice per step {' '.join(f'{v:.3f}' for v in curve)}; DSC_AUC (steps 1-{steps}) {auc:.3f}; "
        f"final Dice {curve[-1]:.3f}; NSD@2mm {np.mean(list(final_nsd.values())):.3f}; "
        f"seconds per structure, all steps: {sum(seconds):.1f} wall (step 0: {seconds[0]:.1f}; "
        f"machine shared with other work), {sum(cpu):.1f} CPU (step 0: {cpu[0]:.1f})",
        flush=True,
    )
    if out_json:
        Path(out_json).write_text(
            json.dumps(
                {"dataset": name, "curve": curve, "auc": auc, "seconds": seconds, "cpu_seconds": cpu, "rows": rows},
                indent=1,
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["ct", "mr"], choices=["ct", "mr"])
    ap.add_argument("--steps", type=int, default=5, help="click steps after the box (default 5)")
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: a folder under the user cache)")
    ap.add_argument("--max-structures", type=int, default=None, help="only the first N structures (by label id)")
    ap.add_argument("--every", type=int, default=1, help="every Nth structure by label id (default 1: all)")
    ap.add_argument("--json", default=None, help="save per-structure rows here (one file per dataset: NAME.json)")
    args = ap.parse_args()
    from napari_sam.cache import resolve_cache_dir

    cache = resolve_cache_dir(args.cache_dir)
    for name in args.datasets:
        protocol(
            name,
            args.steps,
            cache,
            args.max_structures,
            None if args.json is None else str(Path(args.json).with_suffix(f".{name}.json")),
            args.every,
        )


if __name__ == "__main__":
    main()
