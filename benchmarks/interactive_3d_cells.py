"""Interactive 3D for cells: one box (or one click) on one slice of each nucleus,
propagated through a synthetic stack with the existing propagation.

    python benchmarks/interactive_3d_cells.py                       # contrasts 3, 2, 1.3; box and click
    python benchmarks/interactive_3d_cells.py --contrasts 2 --prompt box --seeds 40,41 --nuclei 30

For each seeded stack (napari_sam.synthetic.nuclei_stack: 31 x 61 x 57 voxels,
spacing 1.0 x 0.25 x 0.25 um, ~95 nuclei, ~35 % touching a neighbour), every
k-th nucleus (``--nuclei`` of them, 20 by default) gets one prompt on the
slice of its largest cross-section: its box there (``box``), or a click at the
cross-section's deepest point (``click``). They go into one prompts file with ``"propagate": true`` and are
segmented by ``napari_sam.segment_volume`` (the ``napari-sam segment`` job) in
one label map, with stop rules for nuclei (``--rules cells``, default) or the
CT defaults (``--rules ct``). Reported per contrast: mean and median 3D Dice per nucleus
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

import numpy as np
import torch  # noqa: F401  (before anything that could import napari)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_sam.evaluation import per_object_dice, prompts_from_labels  # noqa: E402
from napari_sam.io import Geometry, Volume  # noqa: E402
from napari_sam.models.registry import load_model  # noqa: E402
from napari_sam.propagation import StopRules  # noqa: E402
from napari_sam.segmentation import segment_volume  # noqa: E402
from napari_sam.synthetic import nuclei_stack  # noqa: E402

#: stop rules for nuclei (as tests/test_cells_interactive3d.py): stop where the intensity under the
#: answer leaves the nucleus' own by one robust spread, bridge no slice; "ct": the defaults (tuned on CT)
RULES = {"cells": StopRules(patience=0, max_intensity_shift=1.0, min_iou=0.5), "ct": StopRules()}
#: --large: cell nuclei of 5-7 um on a 0.25 um grid with 1 um slices (5-8 slices each)
LARGE = {"shape": (31, 128, 128), "radius_um": (2.5, 3.5)}


def run(model, contrast: float, seed: int, prompt: str, n_nuclei: int, large: bool, rules: str) -> dict:
    s = nuclei_stack(contrast=contrast, seed=seed, **(LARGE if large else {}))
    vol = Volume(np.asarray(s.image), Geometry(spacing=tuple(reversed(s.spacing))), {})
    n = int(s.labels.max())
    ids = sorted({int(v) for v in np.linspace(1, n, min(n, n_nuclei)).round()})
    prompts = prompts_from_labels(s.labels, prompt, ids=ids)
    t = time.perf_counter()
    res = segment_volume(vol, prompts, model, stop_rules=RULES[rules])
    wall = time.perf_counter() - t
    d = per_object_dice(res.labels, s.labels, ids)
    spans = [
        (len(np.unique(np.nonzero(res.labels == i)[0])), len(np.unique(np.nonzero(s.labels == i)[0]))) for i in ids
    ]
    return {"dice": d, "wall": wall, "n": len(d), "spans": spans}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contrasts", default="3,2,1.3")
    ap.add_argument("--seeds", default="40")
    ap.add_argument("--prompt", choices=["box", "click", "both"], default="both")
    ap.add_argument("--nuclei", type=int, default=20, help="nuclei prompted per stack")
    ap.add_argument("--rules", choices=sorted(RULES), default="cells", help="propagation stop rules")
    ap.add_argument(
        "--large",
        action="store_true",
        help="31 x 128 x 128 stacks of 5-7 um nuclei (default: the "
        "issue's 31 x 61 x 57 stack, 2.8-4 um nuclei spanning 3-4 slices)",
    )
    args = ap.parse_args()
    model = load_model()
    kinds = ["box", "click"] if args.prompt == "both" else [args.prompt]
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    for kind in kinds:
        for c in (float(v) for v in args.contrasts.split(",")):
            dices, walls, short = [], [], 0
            for seed in (int(v) for v in args.seeds.split(",")):
                r = run(model, c, seed, kind, args.nuclei, args.large, args.rules)
                dices += r["dice"]
                walls.append(r["wall"])
                short += sum(got < want for got, want in r["spans"])
            d = np.asarray(dices)
            print(
                f"{args.rules} rules, {kind:5s} contrast {c:.1f}:1  3D Dice per nucleus mean {d.mean():.3f} median {np.median(d):.3f}"
                f"  >= 0.7: {np.mean(d >= 0.7):.0%}  ({len(d)} nuclei; {short} cover fewer slices than the "
                f"truth)  [{np.sum(walls):.1f} s wall, loaded]",
                flush=True,
            )


if __name__ == "__main__":
    main()
