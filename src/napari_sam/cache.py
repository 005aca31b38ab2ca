"""Embeddings of a volume's slices, computed lazily and kept in memory (LRU).

:class:`SliceEmbeddings` answers ``get(index)`` with the embedding of one
slice along an axis, computing it only when first asked. The key that makes
an embedding valid covers the image content, the model, the window and the
axis (see :func:`embedding_key`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import numpy as np

from .intensity import Window
from .models.base import Backend, Embedding


def content_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes, shape and dtype (the image identity)."""
    h = hashlib.sha256()
    h.update(str((array.shape, str(array.dtype))).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def embedding_key(image_hash: str, model: str, window: Window, axis: int) -> str:
    """The identity of a volume's embeddings: content, model, window, axis."""
    return hashlib.sha256(f"{image_hash}|{model}|{window.key()}|axis={axis}".encode()).hexdigest()[:32]


def slice_along(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a (z, y, x[, 3]) volume along ``axis`` (a view)."""
    sl: list[slice | int] = [slice(None)] * volume.ndim
    sl[axis] = index
    return volume[tuple(sl)]


class SliceEmbeddings:
    """Lazily computed embeddings of the slices of one volume along one axis.

    volume: (z, y, x) raw intensities (or (z, y, x, 3) RGB);
    window: maps the raw intensities to what the model sees;
    max_in_memory: LRU bound on embeddings held in memory.
    on_encode: called with the slice index whenever the encoder runs.
    """

    def __init__(self, backend: Backend, volume: np.ndarray, window: Window, axis: int = 0,
                 max_in_memory: int = 64, on_encode: Callable[[int], None] | None = None) -> None:
        self.backend = backend
        self.volume = volume
        self.window = window
        self.axis = axis
        self.max_in_memory = max_in_memory
        self.on_encode = on_encode
        self.encoder_calls = 0
        self._lru: OrderedDict[int, Embedding] = OrderedDict()

    def __len__(self) -> int:
        return self.volume.shape[self.axis]

    def model_input(self, index: int) -> np.ndarray:
        """Slice ``index`` through the window: float32 in [0, 1]."""
        return self.window.apply(slice_along(self.volume, self.axis, index))

    def get(self, index: int) -> Embedding:
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} outside 0..{len(self) - 1}")
        if index in self._lru:
            self._lru.move_to_end(index)
            return self._lru[index]
        emb = self.backend.embed(self.model_input(index))
        self.encoder_calls += 1
        if self.on_encode is not None:
            self.on_encode(index)
        self._lru[index] = emb
        while len(self._lru) > self.max_in_memory:
            self._lru.popitem(last=False)
        return emb
