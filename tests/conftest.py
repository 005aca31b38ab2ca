"""Shared fixtures: the real data (skipped with a reason when absent), the
embedded model (loaded once per session), and cached CT embeddings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# torch first: its CUDA build brings triton, which crashes if first imported
# after napari has made a GL context under Xvfb.
import torch  # noqa: F401  isort: skip

try:  # setup.sh leaves triton out; where it is installed, load it before any GL context
    import triton  # noqa: F401
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]

# The GUI tests run on PyQt6 (the `qt` extra) where it is installed; QT_API=pyqt5 keeps PyQt5.
# Set before qtpy is imported and before pytest-qt picks its binding (pytest_configure).
if "QT_API" not in os.environ:
    import importlib.util

    if importlib.util.find_spec("PyQt6") is not None:
        os.environ["QT_API"] = "pyqt6"
os.environ.setdefault("PYTEST_QT_API", os.environ.get("QT_API", "pyqt5"))


def shared_data_dir() -> Path:
    """NAPARI_SAM_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("NAPARI_SAM_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set NAPARI_SAM_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(shared_data_dir())


@pytest.fixture(scope="session")
def ct_dicom_dir(data_dir: Path) -> Path:
    return _need(data_dir / "ct_abdomen_dicom" / "dicom")


@pytest.fixture(scope="session")
def ct_volume(ct_dicom_dir: Path):
    from napari_sam.io import read_image

    return read_image(ct_dicom_dir)


@pytest.fixture(scope="session")
def ct_labels(ct_volume, data_dir: Path) -> np.ndarray:
    """The CT's labels resampled onto the DICOM grid by physical geometry."""
    from napari_sam.io import read_labels_aligned

    return read_labels_aligned(_need(data_dir / "ct_abdomen_dicom" / "labels.nii.gz"), ct_volume)


@pytest.fixture(scope="session")
def ct_label_names(data_dir: Path) -> dict[str, int]:
    """name -> id of the CT's labelled structures."""
    names = json.loads(_need(data_dir / "ct_abdomen_dicom" / "labels.json").read_text())
    return {v: int(k) for k, v in names.items()}


@pytest.fixture(scope="session")
def lite_medsam():
    """The embedded default model, loaded once."""
    from napari_sam.models.registry import load_model

    return load_model("lite_medsam")


@pytest.fixture(scope="session")
def ct_embeddings(lite_medsam, ct_volume):
    """Lazily computed soft-tissue-window embeddings of the CT's slices (shared by tests)."""
    from napari_sam.embeddings import SliceEmbeddings
    from napari_sam.intensity import parse_window

    return SliceEmbeddings(lite_medsam, ct_volume.array, parse_window("-160,240"), axis=0, max_in_memory=32)


@pytest.fixture(autouse=True, scope="session")
def _private_embedding_cache(tmp_path_factory):
    """Tests never read or fill the user's embedding cache."""
    import os

    old = os.environ.get("NAPARI_SAM_CACHE_DIR")
    os.environ["NAPARI_SAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))
    yield
    if old is None:
        os.environ.pop("NAPARI_SAM_CACHE_DIR", None)
    else:
        os.environ["NAPARI_SAM_CACHE_DIR"] = old
