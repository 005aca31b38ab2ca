"""Whole-process time of ``napari-sam embed`` against a plain script that
embeds the same slices with the reference model (benchmarks/reference_embed.py),
both started as fresh processes with empty output folders, interleaved, medians.

    python benchmarks/whole_process.py [--repeats 3] [--precisions fp32,bf16]

Ours runs once per encoder precision in each round (``napari-sam embed --precision P``).

The goal: napari-sam at most 0.35x the reference script's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT, shared_data_dir


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", default="-160,240")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    dicom = shared_data_dir() / "ct_abdomen_dicom" / "dicom"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    precisions = args.precisions.split(",")
    ours_t: dict[str, list[float]] = {p: [] for p in precisions}
    ref_t: list[float] = []

    def ours_cmd(p: str) -> Callable[[str], list[str]]:
        return lambda d: [
            sys.executable,
            "-m",
            "napari_sam.cli",
            "embed",
            str(dicom),
            "--window",
            args.window,
            "--cache-dir",
            d,
            "--quiet",
            "--precision",
            p,
        ]

    def ref_cmd(d: str) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).with_name("reference_embed.py")),
            str(dicom),
            f"--window={args.window}",
            "--out",
            d,
        ]

    for _ in range(args.repeats):
        for target, cmd_of in [(ours_t[p], ours_cmd(p)) for p in precisions] + [(ref_t, ref_cmd)]:
            d = tempfile.mkdtemp(prefix="nsam-whole-")
            try:
                target.append(timed(cmd_of(d), env))
            finally:
                shutil.rmtree(d, ignore_errors=True)
        print(
            "  "
            + ", ".join(f"ours {p} {ours_t[p][-1]:.1f} s" for p in precisions)
            + f", reference {ref_t[-1]:.1f} s (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    r = statistics.median(ref_t)
    for p in precisions:
        o = statistics.median(ours_t[p])
        print(
            f"whole process, 20-slice CT: napari-sam embed --precision {p} {o:.1f} s, "
            f"reference script {r:.1f} s, ratio {o / r:.2f}x"
        )


if __name__ == "__main__":
    main()
