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
