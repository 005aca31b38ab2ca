"""`napari-sam auto`: 2D -> TIFF or NIfTI, 3D -> NIfTI in the source geometry,
one-line errors with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from fake_blob_backend import FakeBlobBackend, blob_image, touching_pairs_image
from napari_sam.cli import main
from napari_sam.evaluation import match_instances


@pytest.fixture
def fake_model(monkeypatch):
    """`--model` resolves to the fake blob model (fast logic tests)."""
    import napari_sam.models.registry as reg

    backend = FakeBlobBackend()
    monkeypatch.setattr(reg, "load_model", lambda *a, **k: backend)
    return backend


def test_auto_2d_tiff_with_the_embedded_model(tmp_path: Path, data_dir: Path, capsys):
    """A crop of the real nuclei image, end to end with the embedded model:
    the CLI path runs and writes labels with a sidecar (F1 >= 0.7). The blobs
    alone would pass this too; what the model adds is proved by
    test_automatic.py::test_nuclei_automatic_f1_and_what_the_model_adds."""
    img = tifffile.imread(data_dir / "nuclei_2d" / "image.tif")[:192, :192]
    lab = tifffile.imread(data_dir / "nuclei_2d" / "labels.tif")[:192, :192]
    src = tmp_path / "crop.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "objects.tif"
    assert main(["auto", str(src), "--output", str(out), "--min-size", "40"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (192, 192)
    s = match_instances(labels, lab)
    assert s.f1 >= 0.7, s.summary()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["mode"] == "automatic" and side["preset"] == "microscopy" and side["model"] == "lite_medsam"
    err = capsys.readouterr().err
    assert "wrote" in err and "object(s)" in err


def test_auto_2d_nifti_and_tiling_options(tmp_path: Path, fake_model):
    """`--model-role masks` with tiles: every blob decoded on its tile's
    embedding (several tiles), written as a NIfTI label map. A blob the model
    leaves unanswered is kept (the microscopy preset), so this checks the
    tiling options and the output, not the model's answers (test_tiling.py's
    mosaic test does, with no blob fallback)."""
    img, lab = blob_image((300, 260))
    src = tmp_path / "blobs.tif"
    tifffile.imwrite(src, (img * 1000).astype(np.uint16))
    out = tmp_path / "blobs_labels.nii.gz"
    rc = main(
        [
            "auto",
            str(src),
            "--output",
            str(out),
            "--tile-shape",
            "128,128",
            "--halo",
            "24",
            "--quiet",
            "--model-role",
            "masks",
        ]
    )
    assert rc == 0
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert arr.shape == (1, 300, 260)
    assert match_instances(arr[0], lab).f1 >= 0.95
    assert fake_model.embed_calls > 1  # tiled


def test_auto_2d_splits_touching_nuclei_with_the_models_answers(tmp_path: Path, fake_model):
    """The microscopy default (split-check) through the CLI: touching pairs
    that the blobs merge come out split because the (fake) model answers each
    half as an object (F1 1.0; the blobs alone score about 0.5)."""
    img, lab = touching_pairs_image()
    src = tmp_path / "pairs.tif"
    tifffile.imwrite(src, (img * 1000).astype(np.uint16))
    out = tmp_path / "pairs_labels.tif"
    assert main(["auto", str(src), "--output", str(out), "--quiet"]) == 0
    assert match_instances(tifffile.imread(out), lab).f1 >= 0.95
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["model_role"] == "split-check" and side["proposals"] == "blobs"


def test_auto_3d_keeps_the_source_geometry(tmp_path: Path, fake_model):
    img, lab = blob_image((96, 96), touching_pair=False)
    vol = np.stack([img, img, img]) * 1000
    src_img = sitk.GetImageFromArray(vol.astype(np.int16))
    src_img.SetSpacing((0.5, 0.7, 2.0))
    src_img.SetOrigin((10.0, -20.0, 5.0))
    src_img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    src = tmp_path / "vol.nii.gz"
    sitk.WriteImage(src_img, str(src))
    out = tmp_path / "vol_labels.nii.gz"
    assert main(["auto", str(src), "--output", str(out), "--preset", "microscopy", "--quiet"]) == 0
    res = sitk.ReadImage(str(out))
    assert np.allclose(res.GetSpacing(), (0.5, 0.7, 2.0))
    assert np.allclose(res.GetOrigin(), (10.0, -20.0, 5.0))
    assert np.allclose(res.GetDirection(), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    arr = sitk.GetArrayFromImage(res)
    assert arr.shape == (3, 96, 96)
    assert arr.max() == lab.max()  # one id per object through the slices
    # a 3D result with geometry is not written as TIFF
    rc = main(["auto", str(src), "--output", str(tmp_path / "x.tif"), "--quiet"])
    assert rc == 2 and not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tile-shape", "abc"], "--tile-shape"),
        (["--tile-shape", "64,64", "--halo", "40"], "halo"),
        (["--quality", "3"], "quality threshold"),
        (["--proposals", "point-grid"], "point-grid"),
    ],
)
def test_auto_errors_are_one_line(tmp_path: Path, fake_model, capsys, args, message):
    img, _ = blob_image((64, 64))
    src = tmp_path / "b.tif"
    tifffile.imwrite(src, (img * 255).astype(np.uint8))
    out = tmp_path / "o.tif"
    rc = main(["auto", str(src), "--output", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.startswith("napari-sam: error:") and message in err and "\n" not in err


def test_auto_refuses_to_overwrite(tmp_path: Path, fake_model, capsys):
    img, _ = blob_image((64, 64))
    src = tmp_path / "b.tif"
    tifffile.imwrite(src, (img * 255).astype(np.uint8))
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep")
    assert main(["auto", str(src), "--output", str(out), "--quiet"]) == 2
    assert out.read_bytes() == b"keep"
    assert main(["auto", str(tmp_path / "missing.tif"), "--output", str(tmp_path / "p.tif")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_auto_reruns_from_the_tile_embedding_cache(tmp_path: Path, fake_model):
    """The tiles' embeddings go to --cache-dir: a second run encodes nothing."""
    img, _ = blob_image((300, 260))
    src = tmp_path / "blobs.tif"
    tifffile.imwrite(src, (img * 1000).astype(np.uint16))
    cache = tmp_path / "cache"
    args = [
        "auto",
        str(src),
        "--tile-shape",
        "128,128",
        "--halo",
        "24",
        "--quiet",
        "--cache-dir",
        str(cache),
        "--model-role",
        "masks",
    ]
    assert main(args + ["--output", str(tmp_path / "a.tif")]) == 0
    cold = fake_model.embed_calls
    assert cold > 1 and any(cache.iterdir())
    assert main(args + ["--output", str(tmp_path / "b.tif")]) == 0
    assert fake_model.embed_calls == cold
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))
    assert main(args + ["--output", str(tmp_path / "c.tif"), "--no-cache"]) == 0
    assert fake_model.embed_calls == 2 * cold


def test_auto_3d_tiff_stack_with_imagej_spacing(tmp_path: Path, fake_model):
    """`napari-sam auto STACK.tif --output LABELS.tif` on a microscopy stack:
    3D instances in the input's shape (F1 >= 0.8), spacing read from the
    ImageJ metadata and recorded; --spacing overrides it; bad --spacing is one line, exit 2."""
    from napari_sam.synthetic import nuclei_stack

    s = nuclei_stack(contrast=1.5, seed=31)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src,
        s.image,
        imagej=True,
        resolution=(1 / s.spacing[2], 1 / s.spacing[1]),
        metadata={"spacing": s.spacing[0], "unit": "um", "axes": "ZYX"},
    )
    out = tmp_path / "labels.tif"
    assert main(["auto", str(src), "--output", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == s.image.shape
    assert match_instances(labels, s.labels).f1 >= 0.8
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["spacing_zyx"] == pytest.approx(list(s.spacing)) and side["design"] == "3d-proposals"
    assert main(["auto", str(src), "--output", str(out), "--overwrite", "--spacing", "2,0.5,0.5"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["spacing_zyx"] == [2.0, 0.5, 0.5]
    bad = tmp_path / "bad.tif"
    assert main(["auto", str(src), "--output", str(bad), "--spacing", "1,x"]) == 2
    assert not bad.exists()


def test_the_model_role_follows_the_options():
    """Microscopy defaults to split-check; `--model-role masks` and `--zoom`
    (which sharpens the model's masks) give the masks role; both given, the
    explicit role wins."""
    from napari_sam.cli import build_parser
    from napari_sam.cli.auto import _auto_settings

    def role(*extra):
        args = build_parser().parse_args(["auto", "in.tif", "--output", "out.tif", *extra])
        return _auto_settings(args, is_ct=False)[1].model_role

    assert role() == "split-check"
    assert role("--model-role", "masks") == "masks"
    assert role("--zoom") == "masks"
    assert role("--zoom", "--model-role", "split-check") == "split-check"
