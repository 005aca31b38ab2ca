"""Bad input: one clear line on stderr, exit code 2 (or 1), no traceback, no
output written, and the input untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam.cli import main


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def small_volume(tmp_path: Path) -> Path:
    arr = np.random.default_rng(0).integers(-1000, 1000, (3, 32, 32)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"objects": [{"id": 1, "name": "x", "prompts": [{"slice": 1, "box": [4, 4, 20, 20]}]}]}))
    return path


def _run(args, capsys, expect_code: int, expect: str, output: Path, inputs: list[Path]):
    before = {p: _digest(p) for p in inputs if p.is_file()}
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expect_code, err
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("napari-sam: error: ") and expect in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not output.exists() and not output.with_name(output.name.replace(".nii.gz", ".json")).exists()
    assert {p: _digest(p) for p in before} == before


def test_missing_image(tmp_path, prompts, capsys):
    out = tmp_path / "o.nii.gz"
    _run(
        ["segment", tmp_path / "nope.nii.gz", "--prompts", prompts, "--output", out],
        capsys,
        2,
        "no such file",
        out,
        [prompts],
    )


def test_truncated_image(tmp_path, small_volume, prompts, capsys):
    data = small_volume.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.nii.gz"
    _run(["segment", bad, "--prompts", prompts, "--output", out], capsys, 2, "cannot read image", out, [bad])


def test_corrupt_image(tmp_path, prompts, capsys):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    out = tmp_path / "o.nii.gz"
    _run(["segment", bad, "--prompts", prompts, "--output", out], capsys, 2, "cannot read image", out, [bad])


def test_4d_image(tmp_path, prompts, capsys):
    import nibabel as nib

    p = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.int16), np.eye(4)), str(p))
    out = tmp_path / "o.nii.gz"
    _run(["segment", p, "--prompts", prompts, "--output", out], capsys, 2, "4D image", out, [p])


def test_empty_image(tmp_path, prompts, capsys):
    import warnings

    import tifffile

    p = tmp_path / "empty.tif"
    with warnings.catch_warnings():  # tifffile warns about writing an empty image: this test's setup, not ours
        warnings.simplefilter("ignore")
        tifffile.imwrite(str(p), np.zeros((0, 16), np.uint8))
    out = tmp_path / "o.nii.gz"
    _run(["segment", p, "--prompts", prompts, "--output", out], capsys, 2, "empty image", out, [p])


def test_nan_image(tmp_path, prompts, capsys):
    arr = np.zeros((3, 32, 32), np.float32)
    arr[1, 5, 5] = np.nan
    p = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    out = tmp_path / "o.nii.gz"
    _run(["segment", p, "--prompts", prompts, "--output", out], capsys, 2, "NaN", out, [p])


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"objects": []}), "non-empty list"),
        (json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 1, "box": [1, 2, 3]}]}]}), "'box' must be"),
        (
            json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 1, "points": [[3, 3]], "labels": [2]}]}]}),
            "labels must be 1",
        ),
        (json.dumps({"objects": [{"id": "a", "prompts": [{"slice": 1, "box": [1, 2, 3, 4]}]}]}), "'id' must be"),
        (
            json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 1, "box": [1, 2, 3, 4], "boxx": 1}]}]}),
            "unknown key",
        ),
    ],
)
def test_malformed_prompts(tmp_path, small_volume, capsys, content, expect):
    p = tmp_path / "bad.json"
    p.write_text(content)
    out = tmp_path / "o.nii.gz"
    _run(["segment", small_volume, "--prompts", p, "--output", out], capsys, 2, expect, out, [p, small_volume])


@pytest.mark.parametrize(
    "prompt, expect",
    [
        ({"slice": 1, "box": [4, 4, 40, 20]}, "outside"),
        ({"slice": 7, "box": [4, 4, 10, 10]}, "slice 7 outside"),
        ({"slice": 1, "points": [[-1, 3]], "labels": [1]}, "outside"),
        ({"box": [4, 4, 10, 10]}, "needs 'slice'"),
    ],
)
def test_prompt_outside_image(tmp_path, small_volume, capsys, prompt, expect):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"id": 1, "prompts": [prompt]}]}))
    out = tmp_path / "o.nii.gz"
    _run(["segment", small_volume, "--prompts", p, "--output", out], capsys, 2, expect, out, [p, small_volume])


def test_unknown_model(tmp_path, small_volume, prompts, capsys):
    out = tmp_path / "o.nii.gz"
    _run(
        ["segment", small_volume, "--prompts", prompts, "--output", out, "--model", "vit_zz"],
        capsys,
        2,
        "unknown model 'vit_zz'",
        out,
        [small_volume, prompts],
    )


def test_existing_output_without_overwrite(tmp_path, small_volume, prompts, capsys):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"precious")
    code = main(["segment", str(small_volume), "--prompts", str(prompts), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert out.read_bytes() == b"precious"


def test_output_over_input_is_refused(tmp_path, small_volume, prompts, capsys):
    before = _digest(small_volume)
    code = main(["segment", str(small_volume), "--prompts", str(prompts), "--output", str(small_volume), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "input" in err[0]
    assert _digest(small_volume) == before


def test_bad_window_and_usage(tmp_path, small_volume, prompts, capsys):
    out = tmp_path / "o.nii.gz"
    _run(
        ["segment", small_volume, "--prompts", prompts, "--output", out, "--window", "300,100"],
        capsys,
        2,
        "lo < hi",
        out,
        [small_volume],
    )
    _run(["segment", small_volume, "--output", out], capsys, 2, "--prompts", out, [small_volume])


def test_real_process_exit_code_and_single_line(tmp_path, prompts):
    """The installed entry point, as a user runs it."""
    out = tmp_path / "o.nii.gz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sam.cli",
            "segment",
            str(tmp_path / "missing.nrrd"),
            "--prompts",
            str(prompts),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not out.exists()
