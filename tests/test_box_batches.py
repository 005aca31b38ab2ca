"""Box-only objects decoded in batches per slice give the label map the
per-object path gives, and keep each mask cropped."""

from __future__ import annotations

import numpy as np

from fake_blob_backend import FakeBlobBackend
from napari_sam import segmentation as seg
from napari_sam.annotation import replay
from napari_sam.box_batches import CroppedMask
from napari_sam.io import Volume
from napari_sam.prompts import parse_prompts


def _case(n: int = 120):
    rng = np.random.default_rng(1)
    vol = np.zeros((3, 96, 96), np.float32)
    for z in range(3):
        for r, c in rng.integers(8, 88, (25, 2)):
            vol[z, r - 4 : r + 4, c - 4 : c + 4] = 1.0
    objs = []
    for i in range(n):
        r, c = rng.integers(-4, 90, 2)
        objs.append(
            {
                "id": i + 1,
                "prompts": [
                    {
                        "slice": int(i % 3),
                        "box": [int(max(r, 0)), int(max(c, 0)), int(min(r + 14, 95)), int(min(c + 14, 95))],
                    }
                ],
            }
        )
    return Volume(vol), parse_prompts({"objects": objs, "window": [0, 1]})


def test_batched_boxes_equal_the_per_object_path(monkeypatch):
    volume, prompts = _case()
    batched = seg.segment_volume(volume, prompts, FakeBlobBackend())
    monkeypatch.setattr(replay, "is_plain_box", lambda p: False)
    single = seg.segment_volume(volume, prompts, FakeBlobBackend())
    assert batched.labels.any()
    np.testing.assert_array_equal(batched.labels, single.labels)
    assert batched.slices == single.slices


def test_cropped_mask_round_trip():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    m[7, 1] = True
    c = CroppedMask.of(m)
    assert c.crop.shape == (6, 8) and c.offset == (2, 1)
    np.testing.assert_array_equal(c.full(), m)
    target = np.zeros((10, 12), np.uint16)
    target[3, 4] = 9
    c.paint_into(target, 5, only_where_zero=True)
    assert target[3, 4] == 9 and target[2, 3] == 5 and target[7, 1] == 5 and (target > 0).sum() == m.sum()
