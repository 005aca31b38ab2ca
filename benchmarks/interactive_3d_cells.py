"""Interactive 3D for cells: one box (or one click) on one slice of each nucleus,
propagated through a synthetic stack with the existing propagation.

    python benchmarks/interactive_3d_cells.py                       # contrasts 3, 2, 1.3; box and click
    python benchmarks/interactive_3d_cells.py --contrasts 2 --prompt box --seeds 40,41

For each seeded stack (napari_sam.synthetic.nuclei_stack: 31 x 61 x 57 voxels,
spacing 1.0 x 0.25 x 0.25 um, ~95 nuclei, ~35 % touching a neighbour), every
nucleus gets one prompt on the slice of its largest cross-section: its box
there (``box``), or a click at the cross-section's deepest point (``click``).
All nuclei go into one prompts file with ``"propagate": true`` and are
segmented by ``napari_sam.segment_volume`` (the ``napari-sam segment`` job) in
one label map. Reported per contrast: mean and median 3D Dice per nucleus
(scored on the joint map), the fraction of nuclei with Dice >= 0.7, slices
covered against the truth, and the wall time (load average printed: timings
on a loaded machine are slower than the machine is).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch  # noqa: F401  (before anything that could import napari)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_sam.evaluation import per_object_dice, prompts_from_labels  # noqa: E402
from napari_sam.io import Geometry, Volume  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402
from napari_sam.synthetic import nuclei_stack  # noqa: E402


def run(model, contrast: float, seed: int, prompt: str) -> dict:
    s = nuclei_stack(contrast=contrast, seed=seed)
    vol = Volume(np.asarray(s.image), Geometry(spacing=tuple(reversed(s.spacing))), {})
    prompts = prompts_from_labels(s.labels, prompt)
    t = time.perf_counter()
    res = segment_volume(vol, prompts, model)
    wall = time.perf_counter() - t
    d = per_object_dice(res.labels, s.labels)
    spans = [(len(np.unique(np.nonzero(res.labels == i)[0])), len(np.unique(np.nonzero(s.labels == i)[0])))
             for i in range(1, int(s.labels.max()) + 1)]
    return {"dice": d, "wall": wall, "n": len(d), "spans": spans}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contrasts", default="3,2,1.3")
    ap.add_argument("--seeds", default="40")
    ap.add_argument("--prompt", choices=["box", "click", "both"], default="both")
    args = ap.parse_args()
    model = load_model()
    kinds = ["box", "click"] if args.prompt == "both" else [args.prompt]
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    for kind in kinds:
        for c in (float(v) for v in args.contrasts.split(",")):
            dices, walls, short = [], [], 0
            for seed in (int(v) for v in args.seeds.split(",")):
                r = run(model, c, seed, kind)
                dices += r["dice"]
                walls.append(r["wall"])
                short += sum(got < want for got, want in r["spans"])
            d = np.asarray(dices)
            print(f"{kind:5s} contrast {c:.1f}:1  3D Dice per nucleus mean {d.mean():.3f} median {np.median(d):.3f}"
                  f"  >= 0.7: {np.mean(d >= 0.7):.0%}  ({len(d)} nuclei; {short} cover fewer slices than the "
                  f"truth)  [{np.sum(walls):.1f} s wall, loaded]", flush=True)


if __name__ == "__main__":
    main()
