"""``napari-sam segment`` on volumes read lazily (zarr / OME-Zarr), on the shared MR.

- On an OME-Zarr copy of the MR, the lazy path gives the label file the
  in-memory path gives, byte for byte, and shares its embedding cache.
- A 5.9 GiB OME-Zarr volume (3,000 slices of 512 x 512 float64; the MR's 20
  slices in the middle, the rest zarr's fill value, so the file is small) is
  segmented by a ``napari-sam segment`` process whose peak RSS stays under
  1.5 GiB (the volume is 3.9 times that): the label map (1.5 GiB as uint16)
  goes to zarr chunk by chunk, equal on the MR's slices to an in-memory run on
  those 20 slices alone, empty elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam.sample_prompts import mr_liver_spleen, shifted

zarr = pytest.importorskip("zarr")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = mr_liver_spleen(window=[0, 600])
BUDGET = 1.5 * 2**30  # peak RSS allowed to the process segmenting the large volume


def _ome_zarr(path: Path, shape, dtype, spacing_zyx, origin_zyx=(0.0, 0.0, 0.0), chunks=None):
    g = zarr.open_group(str(path), mode="w")
    arr = g.create_array("0", shape=shape, chunks=chunks or (1, *shape[1:]), dtype=dtype, fill_value=0)
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": list(spacing_zyx)},
                            {"type": "translation", "translation": list(origin_zyx)},
                        ],
                    }
                ],
            }
        ],
    }
    return arr


# The CLI run by a wrapper that writes the process's own peak RSS (VmHWM) to the file named
# by NAPARI_SAM_PEAK_FILE (benchmarks/common.py): not ru_maxrss from wait4, which Linux carries
# over from the forking parent, so under a long pytest run it reads the test process's memory.
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CLI_WITH_PEAK  # noqa: E402


def _cli(args: list, hwm: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "napari_sam.cli"]
    if hwm is not None:
        env["NAPARI_SAM_PEAK_FILE"] = str(hwm)
        cmd = [sys.executable, "-c", CLI_WITH_PEAK]
    return subprocess.Popen([*cmd, *map(str, args)], env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def mr(data_dir):
    from napari_sam.io import read_image

    return read_image(data_dir / "mr_small" / "image.nii.gz")


def test_lazy_ome_zarr_gives_the_in_memory_label_file(tmp_path, data_dir, mr) -> None:
    from napari_sam.cli import main

    src = data_dir / "mr_small" / "image.nii.gz"
    g = mr.geometry
    _ome_zarr(tmp_path / "mr.ome.zarr", mr.array.shape, mr.array.dtype, g.scale_zyx, g.origin[::-1])[:] = mr.array
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS))
    common = ["--prompts", str(tmp_path / "p.json"), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(["segment", str(src), "--output", str(tmp_path / "mem.nii.gz"), *common]) == 0
    assert main(["segment", str(tmp_path / "mr.ome.zarr"), "--output", str(tmp_path / "lazy.nii.gz"), *common]) == 0
    assert main(["segment", str(tmp_path / "mr.ome.zarr"), "--output", str(tmp_path / "lazy.zarr"), *common]) == 0
    assert main(["segment", str(src), "--output", str(tmp_path / "nifti_in.zarr"), *common]) == 0
    mem = (tmp_path / "mem.nii.gz").read_bytes()
    assert (tmp_path / "lazy.nii.gz").read_bytes() == mem
    side = json.loads((tmp_path / "lazy.json").read_text())
    assert side["encoder_calls"] == 0 and side["cache_hits"] > 0  # the in-memory run's cache entry, reused
    from napari_sam.io import read_image

    want = read_image(tmp_path / "mem.nii.gz").array
    z = zarr.open_array(str(tmp_path / "lazy.zarr"), mode="r")
    assert np.array_equal(z[:], want) and set(np.unique(want)) == {0, 1, 5}
    assert np.array_equal(zarr.open_array(str(tmp_path / "nifti_in.zarr"), mode="r")[:], want)
    assert z.attrs["labels"]["5"]["name"] == "liver" and z.attrs["geometry"]["spacing"] == [3.0, 3.0, 3.0]
    assert z.attrs["propagation"]["5"]["key_slices"] == [10]


def test_cli_refuses_what_the_lazy_path_cannot_do(tmp_path, capsys) -> None:
    from napari_sam.cli import main

    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(4, 32, 32), dtype="f4")[:] = 1
    (tmp_path / "p.json").write_text(
        json.dumps({"objects": [{"id": 1, "prompts": [{"slice": 1, "box": [2, 2, 9, 9]}]}]})
    )
    (tmp_path / "out.zarr").mkdir()
    cases = [
        (["--output", tmp_path / "o.zarr", "--overview", tmp_path / "o.png"], "--overview is not available"),
        (["--output", tmp_path / "out.zarr"], "output exists"),
        (["--output", tmp_path / "v.zarr" / "x.zarr", "--overwrite"], "refusing to overwrite an input"),
    ]
    for extra, message in cases:
        assert (
            main(
                [
                    "segment",
                    str(tmp_path / "v.zarr"),
                    "--prompts",
                    str(tmp_path / "p.json"),
                    "--quiet",
                    *map(str, extra),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_volume_several_times_larger_than_the_memory_budget(tmp_path, mr) -> None:
    n, k0, side = 3000, 1500, 512
    sub = np.zeros((20, side, side), np.float64)
    sub[:, : mr.shape[1], : mr.shape[2]] = mr.array
    big = _ome_zarr(tmp_path / "big.ome.zarr", (n, side, side), "float64", (3.0, 3.0, 3.0))
    big[k0 : k0 + 20] = sub
    assert big.nbytes > 3.5 * BUDGET
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(sub)
    img.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "sub.nii.gz"))
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "big.json").write_text(json.dumps(shifted(PROMPTS, k0)))

    ref = _cli(
        [
            "segment",
            tmp_path / "sub.nii.gz",
            "--prompts",
            tmp_path / "p.json",
            "--output",
            tmp_path / "ref.nii.gz",
            "--quiet",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    assert ref.wait(timeout=900) == 0, ref.stderr.read()
    proc = _cli(
        [
            "segment",
            tmp_path / "big.ome.zarr",
            "--prompts",
            tmp_path / "big.json",
            "--output",
            tmp_path / "out.zarr",
            "--quiet",
            "--cache-dir",
            tmp_path / "cache",
        ],
        hwm=tmp_path / "hwm",
    )
    assert proc.wait(timeout=900) == 0, proc.stderr.read()
    peak = int((tmp_path / "hwm").read_text())
    assert peak < BUDGET, f"peak RSS {peak / 2**30:.2f} GiB"

    from napari_sam.io import read_image

    want = read_image(tmp_path / "ref.nii.gz").array
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.shape == (n, side, side) and out.chunks == (1, side, side)
    assert np.array_equal(out[k0 : k0 + 20], want) and set(np.unique(want)) == {0, 1, 5}
    stored = out.nchunks_initialized  # chunks holding any label: only on the MR's slices
    assert stored == sum(1 for z in range(20) if want[z].any())


def test_tiff_read_lazily_into_zarr_gives_the_in_memory_labels(tmp_path, data_dir) -> None:
    import tifffile

    from napari_sam.cli import main

    src = data_dir / "nuclei_2d" / "image.tif"
    truth = tifffile.imread(data_dir / "nuclei_2d" / "labels.tif")
    objects = []
    for oid in np.unique(truth)[1:4]:
        rows, cols = np.nonzero(truth == oid)
        objects.append(
            {"id": int(oid), "prompts": [{"box": [int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())]}]}
        )
    (tmp_path / "p.json").write_text(json.dumps({"objects": objects}))
    common = ["--prompts", str(tmp_path / "p.json"), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(["segment", str(src), "--output", str(tmp_path / "mem.tif"), *common]) == 0
    assert main(["segment", str(src), "--output", str(tmp_path / "lazy.zarr"), *common]) == 0
    want = tifffile.imread(tmp_path / "mem.tif")
    got = zarr.open_array(str(tmp_path / "lazy.zarr"), mode="r")
    assert got.shape == (1, *want.shape) and np.array_equal(got[0], want) and len(np.unique(want)) == 4
