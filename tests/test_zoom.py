"""The zoom path: crop choice, crop embeddings (cached), exact box extents,
the SlicePredictor hook, and on real nuclei: better masks than the whole slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fake_blob_backend import FakeBlobBackend, blob_image
from napari_sam.embeddings import CropEmbeddings
from napari_sam.errors import InputError
from napari_sam.geometry import Crop
from napari_sam.models.base import Embedding, rc_to_model_xy
from napari_sam.predictor import SlicePredictor
from napari_sam.zoom import ZoomSettings, crop_side, extent_boxes, zoom_crop


def test_crop_side_ladder_and_no_zoom_for_large_boxes():
    st = ZoomSettings(object_fraction=0.4, min_crop=64)
    assert crop_side(10, st) == 64
    assert crop_side(30, st) == 128
    assert crop_side(60, st) == 256
    assert zoom_crop((0, 0, 199, 199), (512, 512), st) is None  # crop would be the whole slice
    assert zoom_crop((10, 10, 30, 30), (512, 512), st) is not None


@pytest.mark.parametrize("quantize", [True, False])
def test_zoom_crop_holds_the_box_and_stays_inside(quantize):
    st = ZoomSettings(quantize=quantize)
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(3, 40, 2)
        r0, c0 = rng.integers(0, 500 - h), rng.integers(0, 700 - w)
        box = (r0, c0, r0 + h - 1, c0 + w - 1)
        crop = zoom_crop(box, (500, 700), st)
        assert crop is not None and crop.contains_box(box)
        assert 0 <= crop.top and crop.top + crop.height <= 500 and 0 <= crop.left and crop.left + crop.width <= 700
        if quantize and crop.height < 500:
            assert crop.top % (crop.height // 2) == 0 or crop.top == 500 - crop.height


def test_neighbouring_small_boxes_share_a_quantised_crop():
    st = ZoomSettings()
    a = zoom_crop((100, 100, 110, 110), (512, 512), st)
    b = zoom_crop((104, 106, 114, 116), (512, 512), st)
    assert a == b


def test_crop_round_trips():
    c = Crop(10, 20, 64, 32)
    box = np.array([15.0, 25.0, 30.0, 40.0])
    assert np.allclose(c.box_from_crop(c.box_to_crop(box)), box)
    m = np.zeros((64, 32), bool)
    m[5, 5] = True
    full = c.paste(m, (100, 100))
    assert full.shape == (100, 100) and full[15, 25] and full.sum() == 1
    assert not c.touches_inner_border(m, (100, 100))
    m[0, 3] = True
    assert c.touches_inner_border(m, (100, 100))


def test_extent_boxes_land_on_the_objects_model_pixels():
    """A tight inclusive box stays tight in the model frame at any scale."""
    for size, inp in (((128, 128), (256, 256)), ((512, 512), (256, 256)), ((256, 256), (256, 256))):
        emb = Embedding(features=None, original_size=size, input_size=inp, model="x")  # type: ignore[arg-type]
        s = inp[0] / size[0]
        box = np.array([[10.0, 20.0, 29.0, 39.0]])
        b = extent_boxes(box, emb)
        xy = rc_to_model_xy(b.reshape(2, 2), size, inp)
        assert np.allclose(xy[0], [20 * s, 10 * s])
        assert np.allclose(xy[1], [(39 + 1) * s - 1, (29 + 1) * s - 1])


def test_crop_embeddings_are_cached_by_slice_and_crop():
    backend = FakeBlobBackend()
    img, _ = blob_image((192, 192))
    cache = CropEmbeddings(backend, max_in_memory=2)
    c1, c2, c3 = Crop(0, 0, 64, 64), Crop(32, 0, 64, 64), Crop(64, 0, 64, 64)
    e = cache.get(img, c1)
    assert cache.get(img, c1) is e and cache.encoder_calls == 1
    cache.get(img, c2)
    cache.get(img, c3)  # evicts c1 (LRU of 2)
    cache.get(img, c1)
    assert cache.encoder_calls == 4
    cache.get(img[::-1].copy(), c1)  # another slice: another key
    assert cache.encoder_calls == 5
    with pytest.raises(InputError):
        CropEmbeddings(backend, max_in_memory=0)


def test_predictor_zoom_hook_with_a_fake_model():
    img, lab = blob_image((256, 256), radius=5.0, touching_pair=False)
    backend = FakeBlobBackend(image_size=64)
    pred = SlicePredictor(backend, zoom=ZoomSettings(min_crop=32))
    pred.set_image(img)
    rows, cols = np.nonzero(lab == 7)
    box = (rows.min(), cols.min(), rows.max(), cols.max())
    p = pred.predict(box=box, multimask=False)
    assert p.crop is not None and p.crop.contains_box(box)
    assert p.masks.shape == (1, 256, 256)
    inter = (p.mask & (lab == 7)).sum()
    assert 2 * inter / (p.mask.sum() + (lab == 7).sum()) > 0.8
    calls = backend.embed_calls
    pred.predict(box=box)  # same crop: cached
    assert backend.embed_calls == calls
    p2 = pred.predict(points=[((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)])
    assert p2.crop is not None and (p2.mask & (lab == 7)).sum() > 0.5 * (lab == 7).sum()
    # a large box is decoded on the whole slice
    assert pred.predict(box=(10, 10, 240, 240)).crop is None
    # zoom off: the whole-slice path, no crop
    plain = SlicePredictor(backend)
    plain.set_image(img)
    assert plain.predict(box=box).crop is None


def test_zoom_needs_the_slice_pixels():
    backend = FakeBlobBackend()
    img, _ = blob_image((128, 128))
    emb = backend.embed(img)
    pred = SlicePredictor(backend, zoom=True)
    pred.set_embedding(emb)  # no pixels: zoom silently unavailable, whole-slice answer
    assert pred.predict(box=(40, 40, 50, 50)).crop is None
    pred.set_embedding(emb, image=img)
    assert pred.predict(box=(40, 40, 50, 50)).crop is not None
    with pytest.raises(InputError, match="does not match"):
        pred.set_embedding(emb, image=img[:64])


def test_zoom_beats_the_whole_slice_on_real_nuclei(data_dir, lite_medsam):
    """One box per nucleus on nuclei_2d (a sample of 8 neighbouring nuclei
    sharing crops): the zoom path's Dice is higher and at least 0.85."""
    import tifffile
    from scipy import ndimage

    from napari_sam.intensity import resolve_window

    d = data_dir / "nuclei_2d"
    raw = tifffile.imread(d / "image.tif")
    lab = tifffile.imread(d / "labels.tif")
    img = resolve_window(raw).apply(raw)
    objs = ndimage.find_objects(lab)
    # the 8 nuclei nearest to (150, 150), all away from the border
    cands = [
        (i + 1, s)
        for i, s in enumerate(objs)
        if s is not None and s[0].start > 2 and s[1].start > 2 and s[0].stop < 509 and s[1].stop < 509
    ]
    cands.sort(key=lambda t: (t[1][0].start - 150) ** 2 + (t[1][1].start - 150) ** 2)
    whole = SlicePredictor(lite_medsam)
    whole.set_image(img)
    zoom = SlicePredictor(lite_medsam, zoom=True)
    zoom.set_embedding(whole.embedding, image=img)
    dw, dz = [], []
    for i, s in cands[:8]:
        box = (s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1)
        gt = lab == i
        for pred, out in ((whole, dw), (zoom, dz)):
            m = pred.predict(box=box, multimask=False).mask
            out.append(2 * (m & gt).sum() / (m.sum() + gt.sum()))
    assert np.mean(dz) >= 0.85 and np.mean(dz) > np.mean(dw), (np.mean(dz), np.mean(dw))
    assert zoom.crop_embeddings.encoder_calls <= 8


def test_crop_embeddings_on_disk_survive_a_new_session(tmp_path):
    """With a cache folder, a crop is encoded once across sessions; a damaged
    entry is recomputed."""
    backend = FakeBlobBackend()
    img, _ = blob_image((192, 192))
    crop = Crop(32, 32, 64, 64)
    first = CropEmbeddings(backend, cache_dir=tmp_path)
    e1 = first.get(img, crop)
    assert first.encoder_calls == 1 and first.disk_hits == 0
    again = CropEmbeddings(backend, cache_dir=tmp_path)  # a new session: empty memory
    e2 = again.get(img, crop)
    assert again.encoder_calls == 0 and again.disk_hits == 1
    assert torch.allclose(e1.features, e2.features, atol=1e-3) and e2.original_size == e1.original_size
    for chunk in (p for p in tmp_path.rglob("*") if p.is_file() and "features" in p.parts and p.name != "zarr.json"):
        chunk.write_bytes(b"garbage")  # damage the stored features
    third = CropEmbeddings(backend, cache_dir=tmp_path)
    third.get(img, crop)
    assert third.encoder_calls == 1


def test_clicks_on_a_large_object_are_decoded_once_with_zoom_on():
    """Zoom on, a click on an object too large to zoom: the whole-slice answer
    is computed once (not again after the zoom path declines)."""
    img, lab = blob_image((256, 256), radius=40.0, touching_pair=False)
    backend = FakeBlobBackend(image_size=64)
    calls = {"n": 0}
    decode = backend.decode_low_res

    def counting(*a, **k):
        calls["n"] += 1
        return decode(*a, **k)

    backend.decode_low_res = counting
    rows, cols = np.nonzero(lab == 1)
    click = [[float(rows.mean()), float(cols.mean())]]
    results = {}
    for zoom in (False, True):
        pred = SlicePredictor(backend, zoom=zoom)
        pred.set_image(img)
        calls["n"] = 0
        p = pred.predict(points=click, labels=[1])
        results[zoom] = (calls["n"], p.masks)
        assert p.crop is None
    assert results[True][0] == results[False][0]
    assert np.array_equal(results[True][1], results[False][1])
