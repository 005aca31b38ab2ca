"""Embeddings of a volume's slices: computed lazily, kept on disk (zarr) and in memory (LRU).

:class:`SliceEmbeddings` answers ``get(index)`` with the embedding of one
slice along an axis. It looks in memory first (an LRU bounded to
``max_in_memory`` embeddings), then in the disk store, and only then runs the
encoder, writing the result to the store. Propagation therefore encodes only
the slices it reaches, and re-opening a volume encodes nothing.

The disk store (:class:`EmbeddingStore`) lives under a cache directory:
``--cache-dir`` / ``cache_dir=``, else the environment variable
``NAPARI_SAM_CACHE_DIR``, else the platform's user cache folder
(``~/.cache/napari-sam/embeddings`` on Linux, ``~/Library/Caches/napari-sam``
on macOS, ``%LOCALAPPDATA%\\napari-sam\\Cache`` on Windows). Each volume's
embeddings are one entry, named by :func:`embedding_key`: a hash of the
image content, the model (and its weights), the window and the axis. An entry
holds a zarr array ``features`` (n, C, h, w), one chunk per slice, a zarr
array ``crc`` with a checksum per slice (0: not computed yet) and
``signature.json``; float16 and float32 stores of the same key are separate
entries (``<key>-f16.zarr``, ``<key>-f32.zarr``). A stale entry (its signature does not match) is wiped and
rebuilt; a corrupt slice (unreadable chunk or checksum mismatch) is
recomputed.

Storage is float16 by default: the masks decoded from float16 embeddings
match those from float32 ones (measured on the shared CT, see
docs/propagation.md); pass ``dtype="float32"`` for exact storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zlib
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import InputError, NapariSamWarning
from .intensity import Window
from .models.base import Backend, Embedding

#: bump when the on-disk layout changes: older entries are then stale
STORE_FORMAT = 2  # 2: each checksum bound to its slice index and entry key
#: environment variable naming the cache directory
CACHE_ENV = "NAPARI_SAM_CACHE_DIR"


def content_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes, shape and dtype (the image identity)."""
    h = hashlib.sha256()
    h.update(str((array.shape, str(array.dtype))).encode())
    a = np.ascontiguousarray(array)
    flat = a.reshape(-1).view(np.uint8)
    step = 64 << 20
    for i in range(0, flat.size, step):  # in pieces: no copy of a large volume
        h.update(flat[i:i + step].data)
    return h.hexdigest()


def model_identity(backend: Backend) -> str:
    """What identifies a model's embeddings: its name, plus ``backend.weights_id``
    (e.g. a checkpoint's SHA-256) when the backend has one, plus the encoder's
    precision when it is not fp32 (``|bf16``, ``|fp16``, ``|bf16+fp32:layers.0``):
    bf16 and fp32 embeddings never share an entry; fp32 keys are those of
    earlier versions, still valid."""
    from .models.precision import precision_tag

    wid = getattr(backend, "weights_id", None)
    ident = f"{backend.name}@{wid}" if wid else backend.name
    precision = precision_tag(backend)
    return ident if precision == "fp32" else f"{ident}|{precision}"


def embedding_key(image_hash: str, model: str, window: Window, axis: int) -> str:
    """The identity of a volume's embeddings: content, model, window, axis."""
    return hashlib.sha256(f"{image_hash}|{model}|{window.key()}|axis={axis}".encode()).hexdigest()[:32]


def slice_along(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a (z, y, x[, 3]) volume along ``axis`` (a view)."""
    sl: list[slice | int] = [slice(None)] * volume.ndim
    sl[axis] = index
    return volume[tuple(sl)]


def default_cache_dir() -> Path:
    """``NAPARI_SAM_CACHE_DIR`` if set, else the platform's user cache folder for napari-sam."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch  # platformdirs' user cache folder, through a dependency we already have

    return Path(pooch.os_cache("napari-sam")) / "embeddings"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache directory to use: ``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _crc(a: np.ndarray, index: int, key: str) -> int:
    """Checksum of slice ``index`` of entry ``key``, never 0 (0 marks "not
    computed"). Bound to the index and key, so a chunk and its checksum copied
    from another slice or another entry do not pass."""
    head = f"{key}\0{int(index)}\0".encode()
    return (zlib.crc32(np.ascontiguousarray(a).data, zlib.crc32(head)) & 0xFFFFFFFF) + 1


def _warn(message: str) -> None:
    warnings.warn(message, NapariSamWarning, stacklevel=3)


class EmbeddingStore:
    """One volume's slice embeddings on disk: a zarr entry under ``root``.

    root: the cache directory; key: :func:`embedding_key`; signature: what the
    entry must match to be valid (model, window, axis, image hash, number of
    slices); dtype: "float16" (default) or "float32" storage.

    The feature layout (C, h, w) and the slice/input sizes are learnt from the
    first embedding written, so the store works for any backend.
    """

    def __init__(self, root: str | Path, key: str, signature: dict[str, Any], n_slices: int,
                 dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise InputError(f"embedding storage dtype {dtype!r}: use float16 or float32")
        self.root = Path(root)
        self.key = key
        self.path = self.root / f"{key}-{'f16' if dtype == 'float16' else 'f32'}.zarr"
        self.n_slices = int(n_slices)
        self.dtype = dtype
        self.signature = dict(signature, format=STORE_FORMAT, n_slices=self.n_slices, dtype=dtype)
        self._features: Any = None
        self._crc: Any = None
        self._extra: dict[str, Any] = {}
        self._meta: dict[str, Any] | None = None
        self.recomputed_corrupt = 0  # slices found corrupt and dropped
        self._open_existing()

    # ------------------------------------------------------------ layout
    def _sig_path(self) -> Path:
        return self.path / "signature.json"

    def _open_existing(self) -> None:
        if not self.path.exists():
            return
        try:
            meta = json.loads(self._sig_path().read_text())
            ok = isinstance(meta, dict) and all(meta.get(k) == v for k, v in self.signature.items())
        except (OSError, ValueError):
            ok = False
        if not ok:  # stale or broken entry: rebuild
            self.wipe()
            return
        try:
            self._open_arrays(meta, mode="r+")
            if self._crc.shape != (self.n_slices,) or self._features.shape[0] != self.n_slices:
                raise ValueError("arrays of the wrong shape")
        except Exception as exc:  # noqa: BLE001 - garbage zarr.json, a missing array, ...
            _warn(f"embedding cache entry {self.path} is damaged ({type(exc).__name__}); rebuilding it")
            self.wipe()
            return
        self._meta = meta

    def _open_arrays(self, meta: dict[str, Any], mode: str) -> None:
        import zarr

        n = self.n_slices
        if mode == "r+":
            self._features = zarr.open_array(str(self.path / "features"), mode="r+")
            self._crc = zarr.open_array(str(self.path / "crc"), mode="r+")
            self._extra = {name: zarr.open_array(str(self.path / f"extra_{name}"), mode="r+")
                           for name in meta.get("extra", {})}
            return
        fshape = tuple(meta["feature_shape"])
        self._features = zarr.open_array(str(self.path / "features"), mode="w", shape=(n, *fshape),
                                         chunks=(1, *fshape), dtype=self.dtype, fill_value=0)
        self._crc = zarr.open_array(str(self.path / "crc"), mode="w", shape=(n,), chunks=(1,),
                                    dtype="uint64", fill_value=0)
        self._extra = {name: zarr.open_array(str(self.path / f"extra_{name}"), mode="w", shape=(n, *s),
                                             chunks=(1, *s), dtype=self.dtype, fill_value=0)
                       for name, s in meta.get("extra", {}).items()}

    def _create(self, emb: Embedding) -> None:
        meta = dict(self.signature, feature_shape=list(emb.features.shape[1:]),
                    original_size=list(emb.original_size), input_size=list(emb.input_size),
                    model_name=emb.model,
                    extra={k: list(v.shape[1:]) for k, v in emb.extra.items()})
        self.path.mkdir(parents=True, exist_ok=True)
        self._open_arrays(meta, mode="w")
        tmp = self._sig_path().with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self._sig_path())  # the signature last: an entry without it is incomplete
        self._meta = meta

    def wipe(self) -> None:
        """Delete this entry from disk."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._features = self._crc = None
        self._extra = {}
        self._meta = None

    # ------------------------------------------------------------ access
    def computed(self) -> np.ndarray:
        """(n,) bool: which slices are stored (checksums present; not verified)."""
        if self._crc is None:
            return np.zeros(self.n_slices, bool)
        try:
            return np.asarray(self._crc[:]) != 0
        except Exception:  # noqa: BLE001 - an unreadable checksum array: treat all as missing
            return np.zeros(self.n_slices, bool)

    def load(self, index: int, device: torch.device | str = "cpu") -> Embedding | None:
        """Slice ``index``'s embedding, or None when absent or corrupt (then dropped)."""
        if self._features is None or self._meta is None:
            return None
        try:
            crc = int(self._crc[index])
            if crc == 0:
                return None
            feats = np.asarray(self._features[index])
            extra = {k: np.asarray(a[index]) for k, a in self._extra.items()}
            ok = _crc(feats, index, self.key) == crc and np.all(np.isfinite(feats))
        except Exception:  # noqa: BLE001 - a damaged chunk fails to decode: recompute it
            ok = False
        if not ok:
            self.recomputed_corrupt += 1
            try:
                self._crc[index] = 0
            except Exception:  # noqa: BLE001
                self.wipe()
            return None
        m = self._meta
        t = torch.from_numpy(feats.astype(np.float32))[None].to(device)
        return Embedding(features=t, original_size=tuple(m["original_size"]), input_size=tuple(m["input_size"]),
                         model=m["model_name"],
                         extra={k: torch.from_numpy(v.astype(np.float32))[None].to(device) for k, v in extra.items()})

    def save(self, index: int, emb: Embedding) -> Embedding:
        """Store slice ``index``'s embedding (features first, then its checksum).

        Returns the embedding as stored (rounded to the storage dtype), which
        is what a later :meth:`load` gives: use it, so that a run on a cold
        cache decodes exactly what a re-run on the warm cache will.
        """
        if self._meta is None:
            self._create(emb)
        elif tuple(emb.features.shape[1:]) != tuple(self._meta["feature_shape"]) or \
                tuple(emb.original_size) != tuple(self._meta["original_size"]):
            raise InputError(f"embedding of shape {tuple(emb.features.shape)} does not fit cache entry {self.key}")
        feats = emb.features[0].detach().float().cpu().numpy().astype(self.dtype)
        extra = {k: emb.extra[k][0].detach().float().cpu().numpy().astype(self.dtype) for k in self._extra}
        self._features[index] = feats
        for k, a in self._extra.items():
            a[index] = extra[k]
        self._crc[index] = _crc(feats, index, self.key)
        if self.dtype == "float32":
            return emb
        dev = emb.features.device
        return replace(emb, features=torch.from_numpy(feats.astype(np.float32))[None].to(dev),
                       extra={**emb.extra, **{k: torch.from_numpy(v.astype(np.float32))[None].to(dev)
                                              for k, v in extra.items()}})


class SliceEmbeddings:
    """Lazily computed embeddings of the slices of one volume along one axis.

    volume: (z, y, x) raw intensities (or (z, y, x, 3) RGB);
    window: maps the raw intensities to what the model sees;
    axis: the axis slices are taken along;
    max_in_memory: LRU bound on embeddings held in memory;
    on_encode: called with the slice index whenever the encoder runs;
    cache_dir: a directory for the disk store; None keeps embeddings in memory
        only (pass :func:`default_cache_dir()` for the usual place);
    dtype: disk storage, "float16" (default) or "float32".

    ``encoder_calls`` counts encoder runs, ``disk_hits`` slices read from disk.
    """

    def __init__(self, backend: Backend, volume: np.ndarray, window: Window, axis: int = 0,
                 max_in_memory: int = 32, on_encode: Callable[[int], None] | None = None,
                 cache_dir: str | Path | None = None, dtype: str = "float16",
                 image_hash: str | None = None) -> None:
        if volume.ndim not in (3, 4) or axis not in (0, 1, 2):
            raise InputError(f"volume of shape {volume.shape} along axis {axis}: expected (z, y, x) and axis 0-2")
        self.backend = backend
        self.volume = volume
        self.window = window
        self.axis = axis
        self.max_in_memory = max(1, int(max_in_memory))
        self.on_encode = on_encode
        self.encoder_calls = 0
        self.disk_hits = 0
        self._lru: OrderedDict[int, Embedding] = OrderedDict()
        self._crops: dict[tuple[int, int, int, int], SliceEmbeddings] = {}
        self.cache_dir = cache_dir
        self.dtype = dtype
        self.store: EmbeddingStore | None = None
        if cache_dir is not None:
            ih = image_hash or content_hash(volume)
            model = model_identity(backend)
            key = embedding_key(ih, model, window, axis)
            sig = {"image_hash": ih, "model": model, "window": window.key(), "axis": axis,
                   "volume_shape": list(volume.shape)}
            self.store = EmbeddingStore(Path(cache_dir), key, sig, volume.shape[axis], dtype)

    def __len__(self) -> int:
        return self.volume.shape[self.axis]

    @property
    def total_encoder_calls(self) -> int:
        """Encoder runs of this volume and of its crops (:meth:`cropped`)."""
        return self.encoder_calls + sum(c.total_encoder_calls for c in self._crops.values())

    @property
    def total_disk_hits(self) -> int:
        """Slices read from disk for this volume and its crops."""
        return self.disk_hits + sum(c.total_disk_hits for c in self._crops.values())

    def cropped(self, rect: tuple[int, int, int, int]) -> SliceEmbeddings:
        """Embeddings of a region of every slice: rect = (r0, c0, r1, c1),
        inclusive, in the (rows, cols) of a slice along ``axis``. The region is
        a volume of its own for the model (magnified to its input size) and
        for the cache (its own entry). The same rect returns the same object."""
        r0, c0, r1, c1 = (int(v) for v in rect)
        rows, cols = [s for i, s in enumerate(self.volume.shape[:3]) if i != self.axis]
        if not (0 <= r0 <= r1 < rows and 0 <= c0 <= c1 < cols):
            raise InputError(f"region {list(rect)} outside a slice of shape ({rows}, {cols})")
        key = (r0, c0, r1, c1)
        if key not in self._crops:
            sl: list[slice] = [slice(None)] * self.volume.ndim
            plane = [a for a in range(3) if a != self.axis]
            sl[plane[0]] = slice(r0, r1 + 1)
            sl[plane[1]] = slice(c0, c1 + 1)
            self._crops[key] = SliceEmbeddings(self.backend, self.volume[tuple(sl)], self.window, self.axis,
                                               self.max_in_memory, self.on_encode, self.cache_dir, self.dtype)
        return self._crops[key]

    def model_input(self, index: int) -> np.ndarray:
        """Slice ``index`` through the window: float32 in [0, 1]."""
        return self.window.apply(slice_along(self.volume, self.axis, index))

    def is_cached(self, index: int) -> bool:
        """Whether slice ``index`` is in memory or on disk (no encoder needed)."""
        return index in self._lru or (self.store is not None and bool(self.store.computed()[index]))

    def missing(self, indices: range | list[int] | None = None) -> list[int]:
        """The slices (of ``indices``, default all) not yet in memory or on disk."""
        idx = range(len(self)) if indices is None else indices
        on_disk = self.store.computed() if self.store is not None else np.zeros(len(self), bool)
        return [i for i in idx if i not in self._lru and not on_disk[i]]

    def get(self, index: int) -> Embedding:
        """Slice ``index``'s embedding: from memory, else disk, else the encoder."""
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} outside 0..{len(self) - 1}")
        if index in self._lru:
            self._lru.move_to_end(index)
            return self._lru[index]
        emb = self.store.load(index, self.backend.device) if self.store is not None else None
        if emb is not None and emb.model == self.backend.name:
            self.disk_hits += 1
        else:
            emb = self.backend.embed(self.model_input(index))
            self.encoder_calls += 1
            if self.on_encode is not None:
                self.on_encode(index)
            if self.store is not None:
                emb = self._save(index, emb)
        self._remember(index, emb)
        return emb

    def _remember(self, index: int, emb: Embedding) -> None:
        self._lru[index] = emb
        while len(self._lru) > self.max_in_memory:
            self._lru.popitem(last=False)

    def fill(self, indices: range | list[int] | None = None, batch: int = 1,
             progress: Callable[[int, int, str], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> int:
        """Compute and store the embeddings of ``indices`` (default all) not stored yet.

        batch: slices per encoder pass. progress: (done, total, message).
        Returns the number of slices encoded.
        """
        todo = self.missing(indices)
        total = len(todo)
        if progress:
            progress(0, total, "encoding" if total else "all cached")
        done = 0
        if batch <= 1:
            # Backend.embed_many: slices encoded by parallel workers while this
            # thread windows the next slices and writes the finished ones
            stream = self.backend.embed_many(self.model_input(i) for i in todo)
            try:
                for i in todo:
                    if cancel is not None and cancel():
                        break
                    self._store_new(i, next(stream))
                    done += 1
                    if progress:
                        progress(done, total, f"slice {i}")
            finally:
                stream.close()
            return done
        for s in range(0, total, batch):
            if cancel is not None and cancel():
                break
            chunk = todo[s:s + batch]
            embs = self.backend.embed_batch([self.model_input(i) for i in chunk])
            for i, emb in zip(chunk, embs):
                self._store_new(i, emb)
            done += len(chunk)
            if progress:
                progress(done, total, f"slice {chunk[-1]}")
        return done

    def _store_new(self, index: int, emb: Embedding) -> None:
        self.encoder_calls += 1
        if self.on_encode is not None:
            self.on_encode(index)
        if self.store is not None:
            self._save(index, emb)
        if self.store is None:
            self._remember(index, emb)

    def _save(self, index: int, emb: Embedding) -> Embedding:
        """Store on disk; a cache folder that cannot be written (read-only, full)
        turns this into an in-memory cache, with one warning."""
        assert self.store is not None
        try:
            return self.store.save(index, emb)
        except OSError as exc:
            _warn(f"cannot write the embedding cache {self.store.root} ({exc.strerror or exc}); "
                  "keeping embeddings in memory only")
            self.store = None
            self.max_in_memory = max(self.max_in_memory, len(self))
            return emb
