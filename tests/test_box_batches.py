"""Box-only objects decoded in batches per slice (in windows around each box on
SAM's decoder) give the label map the per-object path gives, and keep each mask
cropped."""

from __future__ import annotations

import numpy as np
import pytest

from fake_blob_backend import FakeBlobBackend
from napari_sam import box_batches as bb
from napari_sam import segmentation as seg
from napari_sam.annotation import replay
from napari_sam.box_batches import CroppedMask
from napari_sam.io import Volume
from napari_sam.models import windows as windows_module
from napari_sam.prompts import parse_prompts
from napari_sam.synthetic import blob_boxes


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


def _spy_batched(monkeypatch) -> list[int]:
    """Counts the boxes the replay decodes in batches (the fast path)."""
    calls: list[int] = []
    real = replay.decode_boxes

    def spy(backend, emb, boxes, *args, **kwargs):
        calls.append(len(boxes))
        return real(backend, emb, boxes, *args, **kwargs)

    monkeypatch.setattr(replay, "decode_boxes", spy)
    return calls


@pytest.mark.parametrize("key_choice", ["single", "box_fit"])
def test_batched_boxes_equal_the_per_object_path(monkeypatch, key_choice):
    """Under either key-slice rule (box_fit: volumes that are neither CT nor 2D) the boxes
    go through the batched path, and give the per-object path's label map."""
    volume, prompts = _case()
    monkeypatch.setattr(seg, "key_choice_for", lambda v: key_choice)
    fast = _spy_batched(monkeypatch)
    batched = seg.segment_volume(volume, prompts, FakeBlobBackend())
    assert sum(fast) == len(prompts.objects)  # every box took the batched path
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


def _blob_case(n: int, z: int = 3, size: int = 256, seed: int = 0):
    """Bright discs on noise and n boxes of 6-24 px over z slices (as benchmarks/many_objects.py)."""
    vol, doc = blob_boxes(n, z, size, seed)
    return Volume(vol), parse_prompts(doc)


def _nuclei_case(data_dir):
    """The nuclei image (512 px: the logits are resized x2 onto it) with one box per nucleus."""
    import tifffile
    from scipy import ndimage

    from napari_sam.io import read_image

    lab = tifffile.imread(data_dir / "nuclei_2d" / "labels.tif")
    objs = [
        {"id": i + 1, "prompts": [{"box": [s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1]}]}
        for i, s in enumerate(x for x in ndimage.find_objects(lab) if x is not None)
    ]
    return read_image(data_dir / "nuclei_2d" / "image.tif"), parse_prompts({"objects": objs})


def _spy_whole(monkeypatch) -> list[int]:
    """Counts the boxes decoded over the whole slice (not in a window)."""
    calls: list[int] = []
    real = bb._decode_whole

    def spy(backend, emb, arr, batch, box_fit=False):
        calls.append(len(arr))
        return real(backend, emb, arr, batch, box_fit)

    monkeypatch.setattr(bb, "_decode_whole", spy)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("case", ["blobs", "nuclei"])
def test_windowed_boxes_equal_the_per_object_path_on_litemedsam(case, lite_medsam, monkeypatch, request):
    """The fast path (boxes decoded in windows, in parallel small batches) gives the label map
    of the per-object path with the real model: 300 boxes on 256 px slices, and the 125
    nuclei of the shared micrograph (512 px)."""
    if case == "blobs":
        volume, prompts = _blob_case(300)
    else:
        volume, prompts = _nuclei_case(request.getfixturevalue("data_dir"))
    whole = _spy_whole(monkeypatch)
    batched = _spy_batched(monkeypatch)
    fast = seg.segment_volume(volume, prompts, lite_medsam)
    assert sum(batched) == len(prompts.objects)  # the fast path ran (blobs: box_fit, nuclei: single)
    assert sum(whole) == 0  # every mask stayed inside its window: none decoded again
    with monkeypatch.context() as m:
        m.setattr(replay, "is_plain_box", lambda p: False)
        reference = seg.segment_volume(volume, prompts, lite_medsam)
    assert len(fast.slices) > 0.9 * len(prompts.objects)
    np.testing.assert_array_equal(fast.labels, reference.labels)
    assert fast.slices == reference.slices


@pytest.mark.slow
def test_a_mask_reaching_its_windows_edge_is_decoded_over_the_whole_slice(lite_medsam, monkeypatch):
    """With no margin around the boxes' tokens, masks reach their windows' edges: those
    boxes are decoded again over the whole slice, and the masks are the whole-slice ones."""
    volume, prompts = _blob_case(40, z=1)
    boxes = [o.prompts[0].box for o in prompts.objects]
    emb = lite_medsam.embed(np.clip((volume.array[0] + 50) / 400, 0, 1).astype(np.float32))
    reference = bb.decode_boxes(lite_medsam, emb, boxes, windows=False)
    monkeypatch.setattr(windows_module, "MARGIN_TOKENS", 0)
    whole = _spy_whole(monkeypatch)
    fast = bb.decode_boxes(lite_medsam, emb, boxes)
    assert 0 < sum(whole) < len(boxes)
    for a, b in zip(fast, reference):
        np.testing.assert_array_equal(a.full(), b.full())


def _kept_bytes(n: int, size: int = 512) -> int:
    """Bytes (tracemalloc) that a replay of n box objects on two size x size slices leaves
    allocated while its result is held."""
    import gc
    import tracemalloc

    rng = np.random.default_rng(0)
    vol = np.zeros((2, size, size), np.float32)
    for k in range(2):
        for r, c in rng.integers(8, size - 8, (200, 2)):
            vol[k, r - 4 : r + 4, c - 4 : c + 4] = 1.0
    objs = []
    for i in range(n):
        r, c = rng.integers(0, size - 16, 2)
        objs.append({"id": i + 1, "prompts": [{"slice": i % 2, "box": [int(r), int(c), int(r + 14), int(c + 14)]}]})
    volume, prompts = Volume(vol), parse_prompts({"objects": objs, "window": [0, 1]})
    backend = FakeBlobBackend()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = seg.segment_volume(volume, prompts, backend)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert result.labels.any()
    return kept


def test_memory_per_object_is_small_and_flat():
    """What the objects keep grows by far less than a slice's mask per object (512 x 512:
    256 KiB; the per-object path keeps one each, ~270 KB measured) and by no more than their
    bookkeeping: the rule is that 200 objects keep at most 7 KiB per object more than 50 do
    (measured: ~5.4 KB, each object's state, its crop and one frozen undo snapshot; ~9.3 KB
    when the replay was two undo steps with mutable snapshots, which fails it)."""
    per_object = (_kept_bytes(200) - _kept_bytes(50)) / 150
    assert per_object < 7 * 1024, per_object


def test_free_heap_is_given_back_on_glibc():
    """release_free_heap asks glibc's malloc_trim (the decoder's freed temporaries no longer
    hold the process's resident memory at its high-water mark); a no-op elsewhere."""
    import platform

    from napari_sam.heap import release_free_heap

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_free_heap() is expected
