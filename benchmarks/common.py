"""Shared pieces of the benchmark scripts: where the data is, the CT with its
aligned labels, embeddings, Dice and simulated clicks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def deepest_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its border (row, col)."""
    dt = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int], int]:
    """The NoC protocol's next click: centre of the largest error region,
    positive where the model missed the object, negative where it overshot."""
    best = None
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        lab, n = ndimage.label(err)
        if n == 0:
            continue
        sizes = ndimage.sum(err, lab, range(1, n + 1))
        i = int(np.argmax(sizes))
        if best is None or sizes[i] > best[0]:
            best = (sizes[i], lab == i + 1, label)
    return deepest_point(best[1]), best[2]
