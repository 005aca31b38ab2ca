"""Shared pieces of the benchmark scripts: where the data is, the CT with its
aligned labels, embeddings, Dice and simulated clicks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_sam.evaluation import deepest_point, dice, next_click, simulate_clicks  # noqa: E402,F401
from napari_sam.io import read_image, read_labels_aligned  # noqa: E402


def shared_data_dir() -> Path:
    """NAPARI_SAM_DATA, else ../shared/data beside the project."""
    env = os.environ.get("NAPARI_SAM_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    if not path.is_dir():
        sys.exit(f"shared data not found at {path}; set NAPARI_SAM_DATA")
    return path


def load_ct():
    """The shared CT volume, its labels on the CT grid, and the id -> name map."""
    d = shared_data_dir() / "ct_abdomen_dicom"
    vol = read_image(d / "dicom")
    labels = read_labels_aligned(d / "labels.nii.gz", vol)
    names = {int(k): v for k, v in json.loads((d / "labels.json").read_text()).items()}
    return vol, labels, names


# Runs the CLI and, at exit, writes the process's own peak RSS (VmHWM) to the file named by
# NAPARI_SAM_PEAK_FILE. Not ru_maxrss from wait4: Linux carries the forking parent's peak over
# exec into it, so a big parent (this script after loading torch) would be measured instead.
CLI_WITH_PEAK = """
import atexit, os, runpy, sys
def _peak():
    kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    open(os.environ["NAPARI_SAM_PEAK_FILE"], "w").write(str(kib * 1024))
atexit.register(_peak)
sys.argv[0] = "napari-sam"
runpy.run_module("napari_sam.cli", run_name="__main__")
"""


def run_cli(args: list) -> tuple[float, float, float]:
    """Run ``napari-sam ARGS`` in a new process: (its own peak RSS in MiB, wall s, CPU s
    of the process: user + system). Exits when the command fails."""
    import resource
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NAPARI_SAM_PEAK_FILE": str(peak_file)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CLI_WITH_PEAK, *map(str, args)], env=env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"failed ({done.returncode}): napari-sam {' '.join(map(str, args))}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return int(peak_file.read_text()) / 2**20, wall, cpu
