"""The package logs through ``logging.getLogger("napari_sam")`` and configures nothing itself; the
command line's ``-v`` shows INFO on stderr and ``-vv`` DEBUG."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from napari_sam.cli import main


def _tiny_volume(path):
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(0, 200, size=(2, 40, 48)).astype(np.int16))
    img.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(img, str(path))
    return path


def test_library_configures_no_log_handler():
    code = (
        "import logging, napari_sam.cli, napari_sam.embeddings, napari_sam.propagation, napari_sam.io, "
        "napari_sam.models.registry\n"
        "from napari_sam.models.registry import load_model\nload_model()\n"
        "lg = logging.getLogger('napari_sam')\nprint(len(lg.handlers), lg.level, lg.propagate)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0", "True"]


def test_verbose_shows_info_and_very_verbose_debug(tmp_path, capsys):
    image = _tiny_volume(tmp_path / "tiny.nii.gz")
    assert main(["embed", str(image), "--cache-dir", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "INFO" not in capsys.readouterr().err  # nothing without -v

    assert main(["-v", "embed", str(image), "--cache-dir", str(tmp_path / "info"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "napari-sam: INFO napari_sam.io: read " in err and "(z, y, x) (2, 40, 48) int16" in err
    assert "DEBUG" not in err

    assert main(["embed", str(image), "--cache-dir", str(tmp_path / "debug"), "--quiet", "-vv"]) == 0
    err = capsys.readouterr().err
    assert "napari-sam: DEBUG napari_sam.embeddings: embedding " in err and "encoded (batch)" in err
    assert err.count("encoded (batch)") == 2  # one line per slice encoded
    lg = logging.getLogger("napari_sam")
    assert lg.handlers == [] and lg.level == logging.NOTSET  # main() leaves the logger as it found it
