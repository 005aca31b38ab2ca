"""One embedding provider: every slice, zoom crop and tile embedding goes through it.

:class:`EmbeddingProvider` is the single memory + disk tier of a process (or
of one run): one LRU in memory, in front of the zarr entries of
:mod:`napari_sam.cache` on disk, keyed by (image, window, axis, crop), and
one encoder lock per backend (:func:`encoder_lock`), so that two encoder
runs never overlap, whoever asks (the widget's embedding queue, its decode
thread embedding a zoom crop, a propagation worker).

Two views name what they read through it:

- :class:`SliceEmbeddings`: the slices of one volume along one axis
  (``get(i)``), and crops of them (``get(i, crop)``: propagation's zoom
  region), computed lazily: propagation encodes only the slices it reaches,
  and re-opening a volume encodes nothing;
- :class:`CropEmbeddings`: crops of 2D images (the prompt zoom path, the
  tiles and crops of automatic mode), keyed by the image's identity and the
  crop.

Each view made without a ``provider`` gets a private one (its own memory,
as a script expects); the fronts share one: the CLI one per run, the napari
widget one per model and cache folder for the process
(:mod:`napari_sam.plugin._background`).

Memory-only entries of an image whose content hash is not known (no cache
folder, no ``image_hash``) are keyed by the view itself: they are not shared
with another view of the same volume.

Coordinates: (row, col) pixels of a slice; crops are
:class:`napari_sam.geometry.Crop`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import EmbeddingStore, as_stored, content_hash, embedding_key, model_identity, slice_along
from .errors import InputError, NapariSamWarning, UsageError
from .geometry import Crop
from .intensity import Window
from .jobs import Cancel, Job, Progress, ProgressCallback, drive
from .models.base import Backend, Embedding
from .torch_threads import encoding

__all__ = ["CropEmbeddings", "EmbeddingProvider", "Entry", "SliceEmbeddings", "crop_key", "encoder_lock"]

log = logging.getLogger(__name__)

_LOCKS: weakref.WeakKeyDictionary[Backend, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def encoder_lock(backend: Backend) -> threading.RLock:
    """The one lock around ``backend``'s image encoder (and the disk entries
    written with it): one per backend object, for the whole process."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(backend)
        if lock is None:
            lock = _LOCKS[backend] = threading.RLock()
        return lock


def crop_key(image_key: str, model: str, crop: Crop) -> str:
    """Identity of one crop embedding of a 2D image: the image's identity, the model, the crop."""
    return hashlib.sha256(f"{image_key}|{model}|crop={crop.key()}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    """One cache entry: the embeddings of ``n`` slices of one image seen one way.

    key: its identity (a hash of image content, model, window, axis and crop;
        the disk entry's name); n: slices it holds; signature: what its disk
        entry must match to be valid (see :class:`napari_sam.cache.EmbeddingStore`).
    """

    key: str
    n: int
    signature: dict[str, Any] = field(compare=False, hash=False)


class EmbeddingProvider:
    """The memory + disk tier of embeddings for one backend.

    cache_dir: the disk store's folder (None: memory only); dtype: the
    storage, "float16" (default) or "float32", of every embedding handed out,
    stored or not (:func:`~napari_sam.cache.as_stored`); max_in_memory: embeddings
    held in memory (one LRU over every entry; the embedded model's are 4 MiB
    each). ``encoder_calls`` and ``disk_hits`` count encoder runs and disk reads.
    """

    def __init__(
        self, backend: Backend, cache_dir: str | Path | None = None, max_in_memory: int = 32, dtype: str = "float16"
    ) -> None:
        if max_in_memory < 1:
            raise InputError(f"max_in_memory {max_in_memory}: expected at least 1")
        if dtype not in ("float16", "float32"):
            raise InputError(f"embedding storage dtype {dtype!r}: use float16 or float32")
        self.backend = backend
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.dtype = dtype
        self.max_in_memory = int(max_in_memory)
        self.model = model_identity(backend)
        self.encoder_calls = 0
        self.disk_hits = 0
        self._memory: OrderedDict[tuple[str, int], Embedding] = OrderedDict()
        self._stores: dict[str, EmbeddingStore | None] = {}
        self._lock = threading.Lock()  # the memory tier and the table of stores
        self.encoder = encoder_lock(backend)

    def views_of(self, volume: np.ndarray, image_hash: str | None = None) -> Callable[[Window, int], SliceEmbeddings]:
        """(window, axis) -> the :class:`SliceEmbeddings` of ``volume`` on this
        provider (what :func:`napari_sam.segmentation.segment_volume` takes as
        ``embeddings_for``). The volume's content hash, the disk entries' key,
        is computed once, on first use, when the provider has a disk store."""
        known = [image_hash] if image_hash is not None else []

        def view(window: Window, axis: int) -> SliceEmbeddings:
            if self.cache_dir is not None and not known:
                known.append(content_hash(volume))
            return SliceEmbeddings(
                self.backend, volume, window, axis, image_hash=known[0] if known else None, provider=self
            )

        return view

    # ------------------------------------------------------------ memory
    def peek(self, entry: Entry, index: int) -> Embedding | None:
        """The embedding if it is in memory, else None (never reads the disk or encodes)."""
        with self._lock:
            return self._memory.get((entry.key, index))

    def in_memory(self, entry: Entry) -> list[int]:
        """The slices of ``entry`` held in memory, least recently used first."""
        with self._lock:
            return [i for k, i in self._memory if k == entry.key]

    def remember(self, entry: Entry, index: int, emb: Embedding) -> None:
        """Keep ``emb`` in memory (least recently used first out)."""
        with self._lock:
            self._memory[(entry.key, index)] = emb
            self._memory.move_to_end((entry.key, index))
            while len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)

    def forget(self) -> None:
        """Empty the memory tier (the disk entries stay)."""
        with self._lock:
            self._memory.clear()

    # ------------------------------------------------------------ disk
    def store(self, entry: Entry) -> EmbeddingStore | None:
        """``entry``'s disk store (opened on first use), or None (memory only)."""
        if self.cache_dir is None:
            return None
        with self._lock:
            if entry.key not in self._stores:
                self._stores[entry.key] = EmbeddingStore(
                    self.cache_dir, entry.key, entry.signature, entry.n, self.dtype
                )
            return self._stores[entry.key]

    def on_disk(self, entry: Entry) -> np.ndarray:
        """(n,) bool: which slices of ``entry`` are stored on disk."""
        st = self.store(entry)
        return np.zeros(entry.n, bool) if st is None else st.computed()

    def _save(self, entry: Entry, index: int, emb: Embedding) -> Embedding:
        """Store on disk; a cache folder that cannot be written (read-only, full)
        turns this entry into a memory-only one, with one warning. Returns the
        embedding as stored (:func:`~napari_sam.cache.as_stored`), stored or not."""
        st = self.store(entry)
        if st is None:
            return as_stored(emb, self.dtype)
        try:
            return st.save(index, emb)
        except OSError as exc:
            warnings.warn(
                f"cannot write the embedding cache {st.root} ({exc.strerror or exc}); "
                "keeping embeddings in memory only",
                NapariSamWarning,
                stacklevel=4,
            )
            with self._lock:
                self._stores[entry.key] = None
                self.max_in_memory = max(self.max_in_memory, entry.n)
            return as_stored(emb, self.dtype)

    # ------------------------------------------------------------ access
    def get(self, entry: Entry, index: int, pixels: Callable[[], np.ndarray]) -> tuple[Embedding, str]:
        """Slice ``index`` of ``entry``: from memory, else disk, else the encoder
        (run on ``pixels()``, the (H, W[, 3]) float32 [0, 1] image the model sees).
        Returns the embedding and where it came from: "memory", "disk" or "encoder"."""
        emb = self.peek(entry, index)
        if emb is not None:
            self.remember(entry, index, emb)
            return emb, "memory"
        with self.encoder:  # one encoder run at a time; the disk entry is read and written under it too
            emb = self.peek(entry, index)
            if emb is not None:
                return emb, "memory"
            st = self.store(entry)
            emb = st.load(index, self.backend.device) if st is not None else None
            if emb is not None and emb.model == self.backend.name:
                self.disk_hits += 1
                source = "disk"
                log.debug("embedding %s[%d]: from disk", entry.key[:8], index)
            else:
                with encoding():  # the operators' threads, even inside a decoding block
                    emb = self._save(entry, index, self.backend.embed(pixels()))
                self.encoder_calls += 1
                source = "encoder"
                log.debug("embedding %s[%d]: encoded", entry.key[:8], index)
            self.remember(entry, index, emb)
        return emb, source

    def put(self, entry: Entry, index: int, emb: Embedding) -> Embedding:
        """Store a freshly encoded embedding (e.g. from a batch): on disk, or in
        memory when the entry has no disk store. Returns it as stored."""
        self.encoder_calls += 1
        log.debug("embedding %s[%d]: encoded (batch)", entry.key[:8], index)
        emb = self._save(entry, index, emb)
        if self.store(entry) is None:  # memory only (from the start, or the disk failed just now)
            self.remember(entry, index, emb)
        return emb


def _provider_for(
    view: str,
    backend: Backend,
    provider: EmbeddingProvider | None,
    cache_dir: str | Path | None,
    max_in_memory: int,
    dtype: str = "float16",
) -> EmbeddingProvider:
    """A view's provider: ``provider`` (shared, of the same backend), or a private one."""
    if provider is None:
        return EmbeddingProvider(backend, cache_dir, max_in_memory, dtype)
    if provider.backend is not backend or cache_dir is not None:
        raise UsageError(
            f"a {view} on a shared provider takes the provider's backend and cache folder: "
            "pass neither another backend nor cache_dir"
        )
    return provider


class SliceEmbeddings:
    """Lazily computed embeddings of the slices of one volume along one axis.

    volume: (z, y, x) raw intensities (or (z, y, x, 3) RGB);
    window: maps the raw intensities to what the model sees;
    axis: the axis slices are taken along;
    provider: the :class:`EmbeddingProvider` to read through (shared by the
        fronts); None makes a private one from ``max_in_memory``,
        ``cache_dir`` (None: memory only; pass :func:`napari_sam.cache.default_cache_dir()`
        for the usual place) and ``dtype`` (disk storage, "float16" or "float32");
    on_encode: called with the slice index whenever the encoder runs for this view;
    image_hash: the volume's :func:`napari_sam.cache.content_hash`, if known.

    ``encoder_calls`` counts encoder runs of this view (slices and crops),
    ``disk_hits`` the embeddings it read from disk.
    """

    def __init__(
        self,
        backend: Backend,
        volume: np.ndarray,
        window: Window,
        axis: int = 0,
        max_in_memory: int = 32,
        on_encode: Callable[[int], None] | None = None,
        cache_dir: str | Path | None = None,
        dtype: str = "float16",
        image_hash: str | None = None,
        provider: EmbeddingProvider | None = None,
    ) -> None:
        if volume.ndim not in (3, 4) or axis not in (0, 1, 2):
            raise InputError(f"volume of shape {volume.shape} along axis {axis}: expected (z, y, x) and axis 0-2")
        self.backend = backend
        self.provider = provider = _provider_for("SliceEmbeddings", backend, provider, cache_dir, max_in_memory, dtype)
        self.volume = volume
        self.window = window
        self.axis = axis
        self.on_encode = on_encode
        self.encoder_calls = 0
        self.disk_hits = 0
        if image_hash is None and provider.cache_dir is not None:
            image_hash = content_hash(volume)
        if image_hash is None:  # memory only: this view's own entries
            key = f"mem-{uuid.uuid4().hex}"
        else:
            key = embedding_key(image_hash, provider.model, window, axis)
        sig = {
            "image_hash": image_hash,
            "model": provider.model,
            "window": window.key(),
            "axis": axis,
            "volume_shape": list(volume.shape),
        }
        self.entry = Entry(key, volume.shape[axis], sig)
        self._crops: dict[Crop, Entry] = {}

    def __len__(self) -> int:
        return self.volume.shape[self.axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows, cols) of one slice along ``axis``."""
        return tuple(s for i, s in enumerate(self.volume.shape[:3]) if i != self.axis)  # type: ignore[return-value]

    @property
    def store(self) -> EmbeddingStore | None:
        """The whole slices' disk entry, or None (memory only)."""
        return self.provider.store(self.entry)

    def model_input(self, index: int) -> np.ndarray:
        """Slice ``index`` through the window: (rows, cols[, 3]) float32 in [0, 1]."""
        return self.window.apply(slice_along(self.volume, self.axis, index))

    def _crop_entry(self, crop: Crop) -> Entry:
        rows, cols = self.slice_shape
        if not (
            0 <= crop.top
            and 0 <= crop.left
            and crop.height >= 1
            and crop.width >= 1
            and crop.top + crop.height <= rows
            and crop.left + crop.width <= cols
        ):
            raise InputError(f"region {list(crop.box)} outside a slice of shape ({rows}, {cols})")
        entry = self._crops.get(crop)
        if entry is None:
            key = hashlib.sha256(f"{self.entry.key}|crop={crop.key()}".encode()).hexdigest()[:32]
            entry = self._crops[crop] = Entry(key, self.entry.n, dict(self.entry.signature, crop=crop.key()))
        return entry

    def get(self, index: int, crop: Crop | None = None) -> Embedding:
        """Slice ``index``'s embedding: from memory, else disk, else the encoder.

        crop: a region of the slice (:class:`napari_sam.geometry.Crop`, in the
        slice's (row, col) pixels) to embed instead, magnified to the model's
        input size (propagation's zoom region); cached as an entry of its own.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} outside 0..{len(self) - 1}")
        if crop is None or crop.is_whole(self.slice_shape):
            emb, source = self.provider.get(self.entry, index, lambda: self.model_input(index))
        else:

            def pixels() -> np.ndarray:
                return np.ascontiguousarray(self.model_input(index)[crop.slices])

            emb, source = self.provider.get(self._crop_entry(crop), index, pixels)
        self._count(index, source)
        return emb

    def _count(self, index: int, source: str) -> None:
        if source == "disk":
            self.disk_hits += 1
        elif source == "encoder":
            self.encoder_calls += 1
            if self.on_encode is not None:
                self.on_encode(index)

    def is_cached(self, index: int) -> bool:
        """Whether slice ``index`` is in memory or on disk (no encoder needed)."""
        in_memory = self.provider.peek(self.entry, index) is not None
        return in_memory or bool(self.provider.on_disk(self.entry)[index])

    def missing(self, indices: range | list[int] | None = None) -> list[int]:
        """The slices (of ``indices``, default all) not yet in memory or on disk."""
        idx = range(len(self)) if indices is None else indices
        on_disk = self.provider.on_disk(self.entry)
        return [i for i in idx if not on_disk[i] and self.provider.peek(self.entry, i) is None]

    def fill_job(self, indices: range | list[int] | None = None, batch: int = 1) -> Job[int]:
        """Compute and store the embeddings of ``indices`` (default all) not stored
        yet: a job (:mod:`napari_sam.jobs`) yielding a Progress per slice (or batch)
        and returning the number of slices encoded. Holds the encoder lock while it
        encodes (other callers' encodes wait); closing it stops between slices.

        batch: slices per encoder pass (1: ``Backend.embed_many``, slices encoded
        by parallel workers while this thread windows the next and writes the
        finished ones).
        """
        todo = self.missing(indices)
        total = len(todo)
        yield Progress(0, total, "encoding" if total else "all cached")
        done = 0
        with self.provider.encoder:
            if batch <= 1:
                stream = self.backend.embed_many(self.model_input(i) for i in todo)
                try:
                    for i in todo:
                        self._put(i, next(stream))
                        done += 1
                        yield Progress(done, total, f"slice {i}")
                finally:
                    stream.close()
                return done
            for s in range(0, total, batch):
                chunk = todo[s : s + batch]
                for i, emb in zip(chunk, self.backend.embed_batch([self.model_input(i) for i in chunk])):
                    self._put(i, emb)
                done += len(chunk)
                yield Progress(done, total, f"slice {chunk[-1]}")
        return done

    def fill(
        self,
        indices: range | list[int] | None = None,
        batch: int = 1,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
    ) -> int:
        """:meth:`fill_job` driven to its end (:func:`napari_sam.jobs.drive`); returns
        the number of slices encoded. A set ``cancel`` token raises
        :class:`napari_sam.jobs.Cancelled` (the slices stored so far stay)."""
        return drive(self.fill_job(indices, batch), progress, cancel, what="embedding")

    def _put(self, index: int, emb: Embedding) -> None:
        self.provider.put(self.entry, index, emb)
        self._count(index, "encoder")


class CropEmbeddings:
    """Embeddings of crops of 2D images (zoom crops, tiles), computed on first use.

    The key is (image identity, model, crop): ``image_key`` names the image as
    the model sees it (e.g. :func:`napari_sam.cache.content_hash` of the
    windowed slice, or a volume's :func:`napari_sam.cache.embedding_key` plus
    the slice index); without one the content hash is computed.
    provider: the :class:`EmbeddingProvider` to read through; None makes a
        private one from ``max_in_memory`` and ``cache_dir`` (None: memory
        only; else one zarr entry per crop, float16, checksummed, a corrupt
        entry recomputed).
    on_encode: called with the crop whenever the encoder runs for this view.
    ``encoder_calls`` and ``disk_hits`` count this view's encoder runs and disk reads.
    """

    def __init__(
        self,
        backend: Backend,
        max_in_memory: int = 32,
        on_encode: Callable[[Crop], None] | None = None,
        cache_dir: str | Path | None = None,
        provider: EmbeddingProvider | None = None,
    ) -> None:
        self.backend = backend
        self.provider = _provider_for("CropEmbeddings", backend, provider, cache_dir, max_in_memory)
        self.on_encode = on_encode
        self.encoder_calls = 0
        self.disk_hits = 0

    @property
    def cache_dir(self) -> Path | None:
        return self.provider.cache_dir

    def entry(self, image_key: str, crop: Crop) -> Entry:
        """The cache entry of ``crop`` of the image named ``image_key``."""
        key = crop_key(image_key, self.provider.model, crop)
        return Entry(f"crop-{key}", 1, {"kind": "crop", "key": key, "model": self.provider.model})

    def __contains__(self, item: tuple[str, Crop]) -> bool:
        """Whether (image_key, crop) is in memory."""
        return self.provider.peek(self.entry(*item), 0) is not None

    def get(self, image01: np.ndarray, crop: Crop, image_key: str | None = None) -> Embedding:
        """The embedding of ``image01[crop]``; image01: (H, W[, 3]) float32 in [0, 1]."""
        if image_key is None:
            image_key = content_hash(np.asarray(image01))
        emb, source = self.provider.get(
            self.entry(image_key, crop),
            0,
            lambda: np.ascontiguousarray(np.asarray(image01)[crop.slices], dtype=np.float32),
        )
        if source == "disk":
            self.disk_hits += 1
        elif source == "encoder":
            self.encoder_calls += 1
            if self.on_encode is not None:
                self.on_encode(crop)
        return emb

    def clear(self) -> None:
        """Forget what the provider holds in memory (the disk entries stay)."""
        self.provider.forget()
