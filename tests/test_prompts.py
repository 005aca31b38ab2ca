from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam.errors import InputError
from napari_sam.geometry import box_of_mask
from napari_sam.prompts import SlicePrompt, load_prompts, parse_prompts


def test_prompts_file_round_trip(tmp_path):
    doc = {
        "window": [-160, 240],
        "objects": [
            {
                "id": 5,
                "name": "liver",
                "window": "soft-tissue",
                "color": [1, 2, 3],
                "prompts": [
                    {"slice": 10, "box": [10, 20, 30, 40]},
                    {"slice": 11, "points": [[5, 6], [7, 8]], "labels": [1, 0]},
                ],
            },
            {
                "id": 6,
                "name": "spleen",
                "propagate": True,
                "axis": 0,
                "range": [2, 9],
                "prompts": [{"slice": 3, "points": [[1, 1]]}],
            },
        ],
    }
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    pf = load_prompts(p)
    assert [o.id for o in pf.objects] == [5, 6]
    liver = pf.objects[0]
    assert liver.prompts[0].box == (10, 20, 30, 40)
    np.testing.assert_array_equal(liver.prompts[1].labels, [1, 0])
    assert pf.objects[1].propagate and pf.objects[1].range == (2, 9)
    np.testing.assert_array_equal(pf.objects[1].prompts[0].labels, [1])  # labels default to positive
    assert parse_prompts(pf.to_json()).to_json() == pf.to_json()


def test_box_corners_are_normalised():
    assert SlicePrompt(box=(30, 40, 10, 20)).box == (10, 20, 30, 40)


def test_only_negative_clicks():
    assert SlicePrompt(points=[[1, 1]], labels=[0]).only_negative
    assert not SlicePrompt(points=[[1, 1]], labels=[1]).only_negative


def test_check_against_shape():
    pf = parse_prompts({"objects": [{"id": 1, "prompts": [{"slice": 2, "box": [0, 0, 9, 9]}]}]})
    pf.check_against((3, 10, 10), is_2d=False)
    with pytest.raises(InputError, match="outside"):
        pf.check_against((3, 9, 10), is_2d=False)
    with pytest.raises(InputError, match="2D image"):
        pf.check_against((1, 10, 10), is_2d=True)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"objects": "x"},
        {"objects": [{"id": 1, "prompts": []}]},
        {"objects": [{"id": 1, "prompts": [{"slice": 0}]}]},
        {"objects": [{"id": 1, "prompts": [{"box": [0, 0, 1, 1]}]}, {"id": 1, "prompts": [{"box": [0, 0, 1, 1]}]}]},
        {"objects": [{"id": 1, "prompts": [{"points": [[1, np.nan]]}]}]},
    ],
)
def test_malformed(doc):
    with pytest.raises(InputError):
        parse_prompts(doc)


def test_box_of_mask():
    m = np.zeros((10, 10), bool)
    assert box_of_mask(m) is None
    m[2:5, 3:8] = True
    assert box_of_mask(m) == (2, 3, 4, 7)
