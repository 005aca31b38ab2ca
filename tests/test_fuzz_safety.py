"""Fuzz-safety suite, part 1: bad prompts, images and DICOM series.

Each case is a real file made in the test. The promise checked: the input is
refused with an InputError (ModelError for a checkpoint) whose message is one
line and says what is wrong (and, for an unknown key, the closest valid one),
never a ValueError, RecursionError or traceback; and inputs are not touched.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fuzz_helpers import digest, write_dicom_series, write_volume
from napari_sam.errors import InputError, ModelError
from napari_sam.io import read_image
from napari_sam.prompts import load_prompts

OK_PROMPT = {"slice": 1, "box": [2, 2, 10, 10]}


def _obj(**kw) -> dict:
    return {"id": 1, "prompts": [dict(OK_PROMPT)], **kw}


def _prompt(**kw) -> dict:
    return {"objects": [{"id": 1, "prompts": [{"slice": 1, **kw}]}]}


PROMPT_CASES = {
    "labels-string": (_prompt(points=[[3, 3]], labels=["x"]), "labels must be 1"),
    "labels-null": (_prompt(points=[[3, 3]], labels=[None]), "labels must be 1"),
    "labels-bool": (_prompt(points=[[3, 3]], labels=[True]), "labels must be 1"),
    "labels-two": (_prompt(points=[[3, 3]], labels=[2]), "labels must be 1"),
    "labels-not-list": (_prompt(points=[[3, 3]], labels=1), "labels must be 1"),
    "points-null": (_prompt(points=[[None, 3]]), "'points' must be"),
    "points-triple": (_prompt(points=[[1, 2, 3]]), "'points' must be"),
    "box-strings": (_prompt(box=["a", 1, 2, 3]), "'box' must be"),
    "box-r1<r0": (_prompt(box=[10, 2, 4, 8]), "r0 <= r1"),
    "box-c1<c0": (_prompt(box=[2, 10, 8, 4]), "c0 <= c1"),
    "color-strings": ({"objects": [_obj(color=["r", "g", "b"])]}, "'color' must be"),
    "color-300": ({"objects": [_obj(color=[300, 0, 0])]}, "'color' must be"),
    "color-name": ({"objects": [_obj(color="red")]}, "'color' must be"),
    "name-number": ({"objects": [_obj(name=5)]}, "'name' must be"),
    "id-bool": ({"objects": [_obj(id=True)]}, "'id' must be"),
    "axis-3": ({"objects": [_obj(axis=3)]}, "'axis' must be"),
    "propagate-string": ({"objects": [_obj(propagate="yes")]}, "'propagate' must be"),
    "range-strings": ({"objects": [_obj(range=["a", 3])]}, "'range' must be"),
    "window-one": ({"objects": [_obj(window=[1])]}, "'window' must be"),
    "window-inverted": ({"objects": [_obj(window=[400, -100])]}, "low < high"),
    "window-top-inverted": ({"objects": [_obj()], "window": [1, 1]}, "low < high"),
    "top-list": ([1, 2], "top level must be"),
    "objects-empty": ({"objects": []}, "non-empty"),
    "prompts-null": ({"objects": [{"id": 1, "prompts": None}]}, "'prompts' must be"),
    "corrections-bad": ({"objects": [_obj(corrections=[{"point": [1, 2], "label": 1}])]}, "'point' must be"),
}

UNKNOWN_KEY_CASES = {
    "top-windw": ({"objects": [_obj()], "windw": [0, 1]}, "'windw'", "'window'"),
    "object-propagte": ({"objects": [_obj(propagte=True)]}, "'propagte'", "'propagate'"),
    "object-colour": ({"objects": [_obj(colour=[1, 2, 3])]}, "'colour'", "'color'"),
    "prompt-bx": (_prompt(bx=[1, 1, 2, 2]), "'bx'", "'box'"),
    "correction-pont": ({"objects": [_obj(corrections=[{"pont": [1, 2, 3], "label": 1}])]}, "'pont'", "'point'"),
    "object-unrelated": ({"objects": [_obj(zzzzzz=1)]}, "'zzzzzz'", "valid keys"),
}


def _load(tmp_path: Path, doc) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    before = digest(p)
    try:
        load_prompts(p)
    finally:
        assert digest(p) == before


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_bad_prompt_types_are_input_errors(tmp_path, case):
    doc, expect = PROMPT_CASES[case]
    with pytest.raises(InputError) as err:
        _load(tmp_path, doc)
    assert expect in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", sorted(UNKNOWN_KEY_CASES))
def test_unknown_keys_refused_with_closest_valid_key(tmp_path, case):
    doc, key, hint = UNKNOWN_KEY_CASES[case]
    with pytest.raises(InputError) as err:
        _load(tmp_path, doc)
    assert key in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize(
    "text,expect",
    [
        ('{"objects": [{"id": 1, "prompts": [{"slice": 1, "box": [1e400, 1, 2, 2]}]}]}', "too large"),
        ('{"objects": [{"id": 1, "prompts": [{"slice": 1, "box": [NaN, 1, 2, 2]}]}]}', "not a number"),
        ('{"objects": [{"id": 1, "prompts": [{"slice": 1, "points": [[Infinity, 1]]}]}]}', "not a number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("", "not valid JSON"),
        ("\udcff", "not valid JSON"),
    ],
)
def test_hostile_json_is_an_input_error(tmp_path, text, expect):
    p = tmp_path / "p.json"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError) as err:
        load_prompts(p)
    assert expect in str(err.value)


@pytest.mark.parametrize(
    "objects,shape,is_2d,expect",
    [
        (
            [{"id": 1, "propagate": True, "range": [3, 5], "prompts": [{"slice": 1, "box": [1, 1, 4, 4]}]}],
            (8, 16, 16),
            False,
            "outside the object's range",
        ),
        ([{"id": 1, "propagate": True, "prompts": [{"box": [1, 1, 4, 4]}]}], (1, 16, 16), True, "needs a 3D image"),
        ([{"id": 1, "prompts": [{"slice": 9, "box": [1, 1, 4, 4]}]}], (8, 16, 16), False, "outside 0..7"),
        ([{"id": 1, "prompts": [{"slice": 1, "box": [1, 1, 40, 4]}]}], (8, 16, 16), False, "lies outside"),
    ],
)
def test_prompts_checked_against_the_image(objects, shape, is_2d, expect):
    from napari_sam.prompts import parse_prompts

    with pytest.raises(InputError) as err:
        parse_prompts({"objects": objects}).check_against(shape, is_2d)
    assert expect in str(err.value)


def test_propagate_on_2d_refused_alike_for_grey_and_rgb(tmp_path):
    from napari_sam.io import Volume
    from napari_sam.prompts import parse_prompts
    from napari_sam.segmentation import segment_volume

    doc = parse_prompts({"objects": [{"id": 1, "propagate": True, "prompts": [{"box": [1, 1, 4, 4]}]}]})
    msgs = []
    for arr, rgb in ((np.zeros((1, 16, 16), np.uint8), False), (np.zeros((1, 16, 16, 3), np.uint8), True)):
        with pytest.raises(InputError) as err:
            segment_volume(Volume(arr, metadata={"is_2d": True, "is_rgb": rgb}), doc, backend=None)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]


# ----------------------------------------------------------------------------- DICOM series


def _series(tmp_path: Path, kind: str) -> Path:
    d = tmp_path / "dicom"
    if kind == "missing-slice":
        write_dicom_series(d, positions=[0, 2, 4, 8, 10, 12])
    elif kind == "duplicate-position":
        write_dicom_series(d, positions=[0, 2, 4, 4, 6, 8])
    elif kind == "shifted-slice":
        write_dicom_series(d, positions=[0, 2, 4, 6.7, 8, 10])
    elif kind == "mixed-size":
        write_dicom_series(d, sizes=[(16, 16)] * 5 + [(16, 20)])
    elif kind == "mixed-orientation":
        write_dicom_series(d, orientations=["1\\0\\0\\0\\1\\0"] * 5 + ["0\\1\\0\\1\\0\\0"])
    elif kind in ("truncated-slice", "garbage-slice"):
        files = write_dicom_series(d)
        data = files[3].read_bytes()
        files[3].write_bytes(data[: len(data) - 200] if kind == "truncated-slice" else data[:132] + b"\xff" * 300)
    elif kind == "two-series":
        write_dicom_series(d, series_uid="1.2.3.4.1")
        write_dicom_series(d, series_uid="1.2.3.4.2", start=100)
    elif kind == "empty-folder":
        d.mkdir()
    else:
        write_dicom_series(d)
    return d


@pytest.mark.parametrize(
    "kind,expect",
    [
        ("missing-slice", "missing slice"),
        ("duplicate-position", "duplicate slice position"),
        ("shifted-slice", "irregular series"),
        ("mixed-size", "slice of size"),
        ("mixed-orientation", "orientation differs"),
        ("truncated-slice", "slice"),
        ("garbage-slice", "slice"),
        ("two-series", "pick one with --series"),
        ("empty-folder", "no DICOM series"),
    ],
)
def test_irregular_dicom_refused(tmp_path, capfd, kind, expect):
    d = _series(tmp_path, kind)
    before = {p.name: digest(p) for p in d.iterdir()}
    with pytest.raises(InputError) as err:
        read_image(d)
    assert expect in str(err.value) and "\n" not in str(err.value)
    if kind not in ("two-series", "empty-folder"):
        assert "slice" in str(err.value) and str(d) in str(err.value)  # where
    assert {p.name: digest(p) for p in d.iterdir()} == before
    assert capfd.readouterr().err == ""  # no raw ITK/GDCM warning


def test_series_option_picks_one_of_two(tmp_path):
    d = _series(tmp_path, "two-series")
    vol = read_image(d, series="1.2.3.4.2")
    assert vol.shape == (6, 16, 16) and vol.metadata["series_uid"] == "1.2.3.4.2"
    with pytest.raises(InputError, match="no series"):
        read_image(d, series="9.9")


def test_regular_series_reads_on_its_grid(tmp_path):
    vol = read_image(_series(tmp_path, "regular"))  # the helper's default series: 6 slices 2 mm apart
    assert vol.shape == (6, 16, 16) and vol.geometry.spacing[2] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- broken image files


def _nifti(path: Path, shape=(4, 8, 8), affine=None, dtype=np.int16, fill=1) -> Path:
    nib.save(nib.Nifti1Image(np.full(shape, fill, dtype), np.eye(4) if affine is None else affine), str(path))
    return path


def _broken_image(tmp_path: Path, kind: str) -> Path:
    if kind == "nifti-zero-axis":
        return _nifti(tmp_path / "z.nii.gz", shape=(4, 0, 4))
    if kind == "nifti-shear":
        a = np.eye(4)
        a[0, 1] = 0.5
        return _nifti(tmp_path / "s.nii.gz", affine=a)
    if kind == "nifti-zero-spacing":
        img = nib.Nifti1Image(np.ones((4, 8, 8), np.int16), None)
        img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
        nib.save(img, str(tmp_path / "sp.nii"))
        return tmp_path / "sp.nii"
    if kind == "nifti-nan":
        return _nifti(tmp_path / "n.nii.gz", dtype=np.float32, fill=np.nan)
    if kind == "nifti-truncated":
        p = write_volume(tmp_path / "t.nii.gz")
        p.write_bytes(p.read_bytes()[:300])
        return p
    if kind == "nifti-garbage":
        p = tmp_path / "g.nii.gz"
        p.write_bytes(gzip.compress(b"garbage" * 100))
        return p
    if kind == "nrrd-truncated":
        p = tmp_path / "t.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 16, 16), np.int16)), str(p))
        p.write_bytes(p.read_bytes()[:-1000])
        return p
    if kind == "nrrd-garbage-header":
        p = tmp_path / "g.nrrd"
        p.write_bytes(b"NRRD0004\ntype: nonsense\ndimension: -3\n\n" + b"\0" * 64)
        return p
    if kind == "tiff-garbage":
        p = tmp_path / "g.tif"
        p.write_bytes(b"II*\0" + b"\xff" * 100)
        return p
    if kind == "png-truncated":
        from PIL import Image

        p = tmp_path / "t.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:40])
        return p
    if kind == "png-empty":
        p = tmp_path / "e.png"
        p.write_bytes(b"")
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,expect",
    [
        ("nifti-zero-axis", "empty image"),
        ("nifti-shear", "sheared"),
        ("nifti-zero-spacing", "spacing"),
        ("nifti-nan", "NaN"),
        ("nifti-truncated", "cannot read image"),
        ("nifti-garbage", "cannot read image"),
        ("nrrd-truncated", "cannot read image"),
        ("nrrd-garbage-header", "cannot read image"),
        ("tiff-garbage", ""),
        ("png-truncated", ""),
        ("png-empty", ""),
    ],
)
def test_broken_images_refused(tmp_path, capfd, kind, expect):
    p = _broken_image(tmp_path, kind)
    before = digest(p)
    with pytest.raises(InputError) as err:
        read_image(p)
    assert expect in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)
    assert digest(p) == before
    assert capfd.readouterr().err == ""  # ITK/nibabel said nothing of their own


def test_garbage_safetensors_is_a_model_error(tmp_path):
    from napari_sam.models.checkpoints import load_state_dict

    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x08\0\0\0\0\0\0\0{garbage" + b"\0" * 64)
    with pytest.raises(ModelError, match="safetensors"):
        load_state_dict(p)
