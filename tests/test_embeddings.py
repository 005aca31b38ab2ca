"""The one embedding provider: one memory tier for slices, crops and tiles, one encoder lock, and the
widget's store on it (so that propagation's zoom region works there too)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_sam.cache import content_hash
from napari_sam.embeddings import CropEmbeddings, EmbeddingProvider, SliceEmbeddings, encoder_lock
from napari_sam.errors import UsageError
from napari_sam.geometry import Crop
from napari_sam.intensity import Window
from napari_sam.models.base import Backend, Embedding
from napari_sam.propagation import PropagationState, Propagator, RoiZoom
from test_propagation import BrightInBoxBackend, ball, dice, key_prompt


class SlowBackend(Backend):
    """Records how many encoder runs overlap (each takes 20 ms)."""

    name = "slow"
    image_size = 16
    supports_points = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.shapes: list[tuple[int, int]] = []
        self._count = threading.Lock()

    def embed(self, image: np.ndarray) -> Embedding:
        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)
            self.shapes.append(image.shape[:2])
        time.sleep(0.02)
        with self._count:
            self.active -= 1
        feats = torch.full((1, 2, 4, 4), float(image.mean()))
        return Embedding(features=feats, original_size=image.shape[:2], input_size=(8, 8), model=self.name)

    def decode_low_res(self, *a, **k):
        raise NotImplementedError

    def upsample(self, low_res, embedding):
        raise NotImplementedError


def test_one_encoder_lock_for_slices_and_crops_of_every_provider():
    """A worker embedding slices and a decode thread embedding zoom crops, even through two providers,
    never run the encoder at once: the lock is the backend's."""
    be = SlowBackend()
    vol = np.random.default_rng(0).random((8, 32, 32)).astype(np.float32)
    slices = SliceEmbeddings(be, vol, Window(0, 1))
    crops = CropEmbeddings(be)  # another provider, same backend
    assert slices.provider is not crops.provider and slices.provider.encoder is crops.provider.encoder
    assert encoder_lock(be) is slices.provider.encoder and encoder_lock(SlowBackend()) is not encoder_lock(be)

    def crop_work():
        for k in range(8):
            crops.get(vol[k], Crop(0, 0, 16, 16))

    t = threading.Thread(target=crop_work)
    t.start()
    for i in range(8):
        slices.get(i)
        slices.get(i, Crop(8, 8, 16, 16))
    t.join()
    assert be.most == 1 and len(be.shapes) == 24


def test_views_on_one_provider_share_one_memory_tier():
    be = SlowBackend()
    vol = np.random.default_rng(1).random((4, 32, 32)).astype(np.float32)
    provider = EmbeddingProvider(be, max_in_memory=3)
    a = SliceEmbeddings(be, vol, Window(0, 1), provider=provider)
    b = SliceEmbeddings(be, vol, Window(0, 1), provider=provider, image_hash=content_hash(vol))
    c = SliceEmbeddings(be, vol, Window(0, 1), provider=provider, image_hash=content_hash(vol))
    crops = CropEmbeddings(be, provider=provider)
    b.get(0)
    assert c.get(0) is b.get(0) and c.encoder_calls == 0  # same image, window, axis: one entry
    a.get(0)
    assert a.encoder_calls == 1  # no content hash known: its own entry
    crops.get(vol[0], Crop(0, 0, 8, 8), image_key="k")
    assert provider.peek(b.entry, 0) is not None  # 3 held: b's slice, a's slice, one crop
    crops.get(vol[1], Crop(0, 0, 8, 8), image_key="k2")
    assert provider.peek(b.entry, 0) is None  # one LRU of 3 over slices and crops: the oldest went
    assert provider.peek(a.entry, 0) is not None and provider.encoder_calls == 4
    with pytest.raises(UsageError, match="provider"):
        SliceEmbeddings(be, vol, Window(0, 1), provider=provider, cache_dir="/tmp")
    with pytest.raises(UsageError, match="provider"):
        CropEmbeddings(SlowBackend(), provider=provider)


class BigBrightInBox(BrightInBoxBackend):
    """The fake box model with a 256 px input, recording the shape of every image it embeds."""

    image_size = 256

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int]] = []

    def embed(self, image: np.ndarray) -> Embedding:
        self.shapes.append(image.shape[:2])
        return super().embed(image)


def test_zoom_region_works_on_the_widgets_store():
    """The widget's slice embeddings (plugin/_background's registry, on the shared provider) serve
    propagation's zoom region: a small object is propagated in its region, encoded at the region's size
    (before, a store without ``cropped`` made propagation skip the zoom without a word)."""
    pytest.importorskip("qtpy")
    from napari_sam.plugin._background import StoreRegistry

    obj = ball((12, 256, 256), center=(6, 120, 130), radius=(4.5, 9, 8))
    vol = np.where(obj, 200.0, 0.0).astype(np.float32)
    backend = BigBrightInBox()
    store = StoreRegistry().get(backend, vol, content_hash(vol), Window(0, 255), 0)
    state = PropagationState(shape=vol.shape)
    state.add_prompt(6, key_prompt(obj, 6))
    Propagator(backend, store, zoom=RoiZoom()).propagate(state)
    assert state.roi is not None
    side = state.roi[2] - state.roi[0] + 1
    assert side == 96 and set(backend.shapes) == {(96, 96)}  # only the region was ever encoded
    assert dice(state.volume_mask(), obj) > 0.95
    assert store.ready() == []  # no whole slice was needed


def test_the_widgets_registry_keeps_few_providers():
    """The process-wide registry bounds what it keeps (the embeddings of every model and cache folder ever
    opened would otherwise stay in memory); a view a session still holds keeps working."""
    pytest.importorskip("qtpy")
    from napari_sam.plugin._background import StoreRegistry

    reg = StoreRegistry(max_in_memory=4, max_providers=2)
    vol = np.random.default_rng(2).random((3, 16, 16)).astype(np.float32)
    backends = [SlowBackend() for _ in range(3)]
    held = reg.get(backends[0], vol, content_hash(vol), Window(0, 1), 0)
    held.get(0)
    assert reg.provider(backends[0]) is held.provider  # the same provider while it is kept
    reg.get(backends[1], vol, content_hash(vol), Window(0, 1), 0).get(0)
    reg.get(backends[2], vol, content_hash(vol), Window(0, 1), 0).get(0)
    assert reg.provider(backends[0]) is not held.provider  # the oldest went (a new one is made)
    assert held.peek(0) is not None and held.get(1) is not None  # the session's own view still works
