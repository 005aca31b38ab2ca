"""The embedding cache on disk: zarr entries, their keys and the cache folder.

This is the disk tier under :mod:`napari_sam.embeddings` (whose
:class:`~napari_sam.embeddings.EmbeddingProvider` puts one memory tier and
the encoder lock in front of it; :class:`~napari_sam.embeddings.SliceEmbeddings`
and :class:`~napari_sam.embeddings.CropEmbeddings` read through that).

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

Several processes may share a cache folder (two CLI runs, the workers of a
batch). An entry is created under a lock file (``<entry>.lock``, with the
``filelock`` package torch already depends on) in a temporary folder and
renamed into place complete, so no process ever removes or recreates the
arrays another one is writing; a process that finds the entry made
meanwhile adopts it. Slice chunks are written by zarr through a temporary
file and a rename, and each slice's checksum catches a torn or mismatched
pair, so concurrent writers of one slice cost at most a recomputation.

Storage is float16 by default: the masks decoded from float16 embeddings
match those from float32 ones (measured on the shared CT, see
docs/propagation.md); pass ``dtype="float32"`` for exact storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, NapariSamWarning
from .intensity import Window
from .models.base import Backend, Embedding
from .models.precision import precision_tag
from .outputs import current_umask

log = logging.getLogger(__name__)

#: bump when the on-disk layout changes: older entries are then stale
STORE_FORMAT = 2  # 2: each checksum bound to its slice index and entry key
#: environment variable naming the cache directory
CACHE_ENV = "NAPARI_SAM_CACHE_DIR"
#: seconds to wait for another process creating the same entry (then: memory only, with a warning)
LOCK_TIMEOUT = 120.0


def content_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes, shape and dtype (the image identity)."""
    h = hashlib.sha256()
    h.update(str((array.shape, str(array.dtype))).encode())
    a = np.ascontiguousarray(array)
    flat = a.reshape(-1).view(np.uint8)
    step = 64 << 20
    for i in range(0, flat.size, step):  # in pieces: no copy of a large volume
        h.update(flat[i : i + step].data)
    return h.hexdigest()


def model_identity(backend: Backend) -> str:
    """What identifies a model's embeddings: its name, plus ``backend.weights_id``
    (e.g. a checkpoint's SHA-256) when the backend has one, plus the encoder's
    precision when it is not fp32 (``|bf16``, ``|fp16``, ``|bf16+fp32:layers.0``):
    bf16 and fp32 embeddings never share an entry; fp32 keys are those of
    earlier versions, still valid."""
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
    import pooch  # platformdirs' user cache folder, through a dependency we already have (slow to import)

    return Path(pooch.os_cache("napari-sam")) / "embeddings"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache directory to use: ``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def usable_cache_dir(cache_dir: str | Path | None = None, no_cache: bool = False) -> Path | None:
    """The cache folder a command uses: :func:`resolve_cache_dir`, created if
    needed; None when ``no_cache``, or (with a warning) when it cannot be
    written: embeddings then stay in memory. Raises InputError when it is a file."""
    if no_cache:
        return None
    d = resolve_cache_dir(cache_dir)
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: cache directory is a file")
    try:
        d.mkdir(parents=True, exist_ok=True)
        writable = os.access(d, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        warnings.warn(
            f"{d}: the cache directory cannot be written; keeping embeddings in memory only",
            NapariSamWarning,
            stacklevel=2,
        )
        return None
    return d


def _crc(a: np.ndarray, index: int, key: str) -> int:
    """Checksum of slice ``index`` of entry ``key``, never 0 (0 marks "not
    computed"). Bound to the index and key, so a chunk and its checksum copied
    from another slice or another entry do not pass."""
    head = f"{key}\0{int(index)}\0".encode()
    return (zlib.crc32(np.ascontiguousarray(a).data, zlib.crc32(head)) & 0xFFFFFFFF) + 1


def _warn(message: str) -> None:
    warnings.warn(message, NapariSamWarning, stacklevel=3)


def _rounded(t: torch.Tensor, dtype: str) -> tuple[np.ndarray, torch.Tensor]:
    """A (1, ...) tensor's first item in the storage dtype, and that back as a float32 (1, ...) tensor."""
    a = t[0].detach().float().cpu().numpy().astype(dtype)
    return a, torch.from_numpy(a.astype(np.float32))[None].to(t.device)


def as_stored(emb: Embedding, dtype: str) -> Embedding:
    """``emb`` as a store of ``dtype`` keeps it (float16: rounded; float32: itself).

    The embedding provider hands out only this form, stored or not, so a
    label map does not depend on whether the cache was cold, warm, absent
    (``--no-cache``) or failed to write."""
    if dtype == "float32":
        return emb
    return replace(
        emb, features=_rounded(emb.features, dtype)[1], extra={k: _rounded(v, dtype)[1] for k, v in emb.extra.items()}
    )


class EmbeddingStore:
    """One volume's slice embeddings on disk: a zarr entry under ``root``.

    root: the cache directory; key: :func:`embedding_key`; signature: what the
    entry must match to be valid (model, window, axis, image hash, number of
    slices); dtype: "float16" (default) or "float32" storage.

    The feature layout (C, h, w) and the slice/input sizes are learnt from the
    first embedding written, so the store works for any backend.
    """

    def __init__(
        self, root: str | Path, key: str, signature: dict[str, Any], n_slices: int, dtype: str = "float16"
    ) -> None:
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

    def _open_existing(self, locked: bool = False) -> None:
        """Open the entry on disk if it is valid; remove a stale or damaged one (under the
        lock file unless ``locked``: the caller holds it)."""
        if not self.path.exists():
            return
        try:
            meta = json.loads(self._sig_path().read_text())
            ok = isinstance(meta, dict) and all(meta.get(k) == v for k, v in self.signature.items())
        except (OSError, ValueError):
            ok = False
        if not ok:  # stale or broken entry: rebuild
            log.info("embedding cache entry %s is stale (another format, model or volume): rebuilding it", self.path)
            self._remove(locked)
            return
        try:
            self._open_arrays(meta, mode="r+")
            if self._crc.shape != (self.n_slices,) or self._features.shape[0] != self.n_slices:
                raise ValueError("arrays of the wrong shape")
        except Exception as exc:  # noqa: BLE001 - garbage zarr.json, a missing array, ...
            _warn(f"embedding cache entry {self.path} is damaged ({type(exc).__name__}); rebuilding it")
            self._remove(locked)
            return
        self._meta = meta

    def _open_arrays(self, meta: dict[str, Any], mode: str, folder: Path | None = None) -> None:
        """Open the entry's arrays (mode "r+"), or make them empty in ``folder`` (mode "w")."""
        import zarr

        n = self.n_slices
        if mode == "r+":
            self._features = zarr.open_array(str(self.path / "features"), mode="r+")
            self._crc = zarr.open_array(str(self.path / "crc"), mode="r+")
            self._extra = {
                name: zarr.open_array(str(self.path / f"extra_{name}"), mode="r+") for name in meta.get("extra", {})
            }
            return
        fshape = tuple(meta["feature_shape"])
        self._features = zarr.open_array(
            str(folder / "features"), mode="w", shape=(n, *fshape), chunks=(1, *fshape), dtype=self.dtype, fill_value=0
        )
        self._crc = zarr.open_array(
            str(folder / "crc"), mode="w", shape=(n,), chunks=(1,), dtype="uint64", fill_value=0
        )
        self._extra = {
            name: zarr.open_array(
                str(folder / f"extra_{name}"), mode="w", shape=(n, *s), chunks=(1, *s), dtype=self.dtype, fill_value=0
            )
            for name, s in meta.get("extra", {}).items()
        }

    @contextmanager
    def _creating(self) -> Iterator[None]:
        """Hold the entry's lock file: one process at a time creates or removes the entry."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        # filelock sets the file's mode itself, past the umask: give it what the umask gives;
        # a timeout raises filelock.Timeout, an OSError
        with FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT, mode=0o666 & ~current_umask()):
            yield

    def _create(self, emb: Embedding) -> None:
        """Make the entry for embeddings like ``emb``, or adopt the one another process made meanwhile."""
        meta = dict(
            self.signature,
            feature_shape=list(emb.features.shape[1:]),
            original_size=list(emb.original_size),
            input_size=list(emb.input_size),
            model_name=emb.model,
            extra={k: list(v.shape[1:]) for k, v in emb.extra.items()},
        )
        with self._creating():
            if self.path.exists():
                self._open_existing(locked=True)
                if self._meta is not None:
                    return
            aside = self.root / f".{self.path.name}.{uuid.uuid4().hex}.partial"
            try:
                aside.mkdir()
                self._open_arrays(meta, mode="w", folder=aside)
                (aside / "signature.json").write_text(json.dumps(meta, indent=1))
                os.rename(aside, self.path)  # complete or absent: never a half-made entry in place
            finally:
                shutil.rmtree(aside, ignore_errors=True)
            self._open_arrays(meta, mode="r+")
            self._meta = meta

    def _remove(self, locked: bool) -> None:
        if locked:
            self.wipe()
            return
        try:
            with self._creating():
                self.wipe()
        except OSError:  # a read-only cache: the entry stays; this process keeps to memory
            self._close()

    def wipe(self) -> None:
        """Delete this entry from disk."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        """Drop this process's handles on the entry (it then reads as absent)."""
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
                self._remove(locked=False)
            return None
        m = self._meta
        t = torch.from_numpy(feats.astype(np.float32))[None].to(device)
        return Embedding(
            features=t,
            original_size=tuple(m["original_size"]),
            input_size=tuple(m["input_size"]),
            model=m["model_name"],
            extra={k: torch.from_numpy(v.astype(np.float32))[None].to(device) for k, v in extra.items()},
        )

    def save(self, index: int, emb: Embedding) -> Embedding:
        """Store slice ``index``'s embedding (features first, then its checksum).

        Returns the embedding as stored (rounded to the storage dtype), which
        is what a later :meth:`load` gives: use it, so that a run on a cold
        cache decodes exactly what a re-run on the warm cache will.
        """
        if self._meta is None:
            self._create(emb)
        elif tuple(emb.features.shape[1:]) != tuple(self._meta["feature_shape"]) or tuple(emb.original_size) != tuple(
            self._meta["original_size"]
        ):
            raise InputError(f"embedding of shape {tuple(emb.features.shape)} does not fit cache entry {self.key}")
        feats, stored = _rounded(emb.features, self.dtype)
        extra = {k: _rounded(emb.extra[k], self.dtype) for k in self._extra}
        self._features[index] = feats
        for k, a in self._extra.items():
            a[index] = extra[k][0]
        self._crc[index] = _crc(feats, index, self.key)
        if self.dtype == "float32":
            return emb
        return replace(emb, features=stored, extra={**emb.extra, **{k: v[1] for k, v in extra.items()}})
