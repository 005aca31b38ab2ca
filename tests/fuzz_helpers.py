"""Helpers of the fuzz-safety suite: real files made in the test (DICOM series
with SimpleITK, NIfTI with nibabel), a fast fake model, and a CLI runner that
uses it in this process or in a subprocess."""

from __future__ import annotations

import hashlib
import json
import locale
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> its SHA-256."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def write_dicom_series(
    folder: Path,
    n: int = 6,
    spacing: float = 2.0,
    positions: list[float] | None = None,
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1",
    size: tuple[int, int] = (16, 16),
    orientations: list[str] | None = None,
    sizes: list[tuple[int, int]] | None = None,
    start: int = 0,
) -> list[Path]:
    """A CT series of ``n`` slices along z, one file each; returns the files.

    GDCM's DICOM writer switches the process's locale to "C", which would make
    every later ``subprocess.run(..., text=True)`` of the test session decode
    as ASCII: the locale is restored afterwards."""
    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        return _write_dicom_series(folder, n, spacing, positions, series_uid, size, orientations, sizes, start)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


def _write_dicom_series(
    folder: Path,
    n: int,
    spacing: float,
    positions: list[float] | None,
    series_uid: str,
    size: tuple[int, int],
    orientations: list[str] | None,
    sizes: list[tuple[int, int]] | None,
    start: int,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    zs = positions if positions is not None else [k * spacing for k in range(n)]
    files = []
    rng = np.random.default_rng(len(zs))
    for k, z in enumerate(zs):
        rows, cols = sizes[k] if sizes else size
        img = sitk.GetImageFromArray(rng.integers(0, 400, (rows, cols)).astype(np.int16))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": orientations[k] if orientations else "1\\0\\0\\0\\1\\0",
            "0008|0018": f"{series_uid}.{start + k + 1}",
            "0028|0030": "0.8\\0.8",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
        }
        for key, value in tags.items():
            img.SetMetaData(key, value)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        path = folder / f"slice{start + k:03d}.dcm"
        w.SetFileName(str(path))
        w.Execute(img)
        files.append(path)
    return files


def write_volume(path: Path, shape=(4, 32, 32), spacing=(0.8, 0.8, 2.0), seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 200, shape).astype(np.int16)
    arr[:, 8:20, 8:20] += 500
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def write_prompts(path: Path, objects: list | None = None) -> Path:
    objects = objects or [{"id": 1, "name": "x", "prompts": [{"slice": 1, "box": [6, 6, 22, 22]}]}]
    path.write_text(json.dumps({"objects": objects}))
    return path


RUNNER = (
    "import sys, os, time\n"
    "sys.path.insert(0, {tests!r})\n"
    "import torch\n"
    "from fake_blob_backend import FakeBlobBackend\n"
    "class Slow(FakeBlobBackend):\n"
    "    def embed(self, image):\n"
    "        if os.environ.get('FAKE_EMBED_MARK'):\n"
    "            open(os.environ['FAKE_EMBED_MARK'], 'a').close()\n"
    "        time.sleep(float(os.environ.get('FAKE_EMBED_DELAY', '0')))\n"
    "        return super().embed(image)\n"
    "import napari_sam.models.registry as r\n"
    "r.load_model = lambda *a, **k: Slow()\n"
    "from napari_sam.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def cli_command(args: list) -> list[str]:
    return [sys.executable, "-c", RUNNER.format(tests=str(HERE)), *[str(a) for a in args]]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    return env


def run_cli(args: list, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """The CLI with the fake model, in a subprocess (real exit code and stderr)."""
    return subprocess.run(cli_command(args), capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def wait_for(predicate, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
