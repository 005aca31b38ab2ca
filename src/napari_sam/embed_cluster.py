"""``napari-sam embed`` on a Dask cluster: fill the shared embedding cache, one task per group of slices.

The cache entry of a volume (:class:`napari_sam.cache.EmbeddingStore`: one
zarr chunk and one checksum per slice) is filled by several worker processes
at once, safely:

1. one **prepare** task reads the image (lazily for zarr / OME-Zarr,
   :mod:`napari_sam.lazy_volume`), resolves the window, hashes the content,
   finds the slices not cached yet and encodes the first of them, which
   creates the entry (its arrays and signature) before anyone else writes;
2. the other missing slices are split into groups (``per_task`` slices), one
   **fill** task each, spread over the workers; every task writes only its
   own slices, i.e. its own chunk files, so concurrent writers never touch
   the same file, and each slice's checksum is written after its features
   (a task killed mid-slice leaves that slice missing, not wrong).

A re-run finds every slice cached: the prepare task encodes nothing and no
fill task is sent. The workers need the model plugin
(:func:`napari_sam.batch.register_model`); the image and the cache folder
must be on a filesystem every worker sees.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embeddings import EmbeddingProvider, SliceEmbeddings
from .errors import InputError
from .intensity import Window, resolve_window
from .io import Volume, read_image
from .lazy_volume import content_hash, is_zarr_path, open_volume, sample_volume

__all__ = ["EmbedJob", "EmbedReport", "embed_on_cluster", "fill_task", "prepare_task"]


@dataclass(frozen=True)
class EmbedJob:
    """What to embed: ``image`` (a path every worker sees; ``series`` picks a DICOM
    series), ``window`` (a spec as ``--window``, None: automatic), ``axis``,
    ``slices`` ((first, last) inclusive along ``axis``, None: all) and the
    shared ``cache_dir``."""

    image: str
    cache_dir: str
    window: Any = None
    axis: int = 0
    slices: tuple[int, int] | None = None
    series: str | None = None


@dataclass
class EmbedReport:
    """encoded: slices encoded by this run; cached: slices found cached; tasks:
    fill tasks sent (the prepare task not counted); workers: addresses of the
    workers that encoded; window; entry: the cache entry's folder."""

    encoded: int
    cached: int
    tasks: int
    workers: set[str]
    window: Window
    entry: str


_LAST: dict[tuple, Volume] = {}  # the last volume this worker process read (tasks of one run share it)
_LAST_LOCK = threading.Lock()


def _volume(job: EmbedJob) -> Volume:
    """The job's image: lazily for zarr / OME-Zarr, else read whole (kept for the next task)."""
    p = Path(job.image)
    if is_zarr_path(p):
        return open_volume(p)
    try:
        st = p.stat()
    except OSError:
        raise InputError(f"{p}: no such file or folder") from None
    key = (str(p.resolve()), job.series, st.st_mtime_ns, st.st_size)
    with _LAST_LOCK:
        if key not in _LAST:
            _LAST.clear()
            _LAST[key] = read_image(p, series=job.series)
        return _LAST[key]


def _backend():
    from distributed import get_worker

    from .batch import PLUGIN_NAME

    return get_worker().plugins[PLUGIN_NAME].backend


def _view(job: EmbedJob, volume: Volume, window: Window, image_hash: str) -> SliceEmbeddings:
    backend = _backend()
    provider = EmbeddingProvider(backend, job.cache_dir, max_in_memory=4)
    return SliceEmbeddings(backend, volume.array, window, job.axis, image_hash=image_hash, provider=provider)


def _worker_name() -> str:
    from distributed import get_worker

    return get_worker().address


def prepare_task(job: EmbedJob) -> dict[str, Any]:
    """The first task (on a worker): window, content hash, the slices missing from
    the cache; encodes the first missing one (creating the entry)."""
    volume = _volume(job)
    if volume.is_2d and job.axis != 0:
        raise InputError(f"{job.image}: a 2D image has only axis 0")
    n = volume.shape[job.axis]
    first, last = job.slices if job.slices is not None else (0, n - 1)
    if not 0 <= first <= last < n:
        raise InputError(f"--slices {first}:{last}: outside 0..{n - 1}")
    md = volume.metadata
    sample = sample_volume(volume) if md.get("lazy") else volume
    window = resolve_window(sample.array, job.window, md.get("modality"), md.get("dicom_window"))
    image_hash = content_hash(volume.array)
    view = _view(job, volume, window, image_hash)
    missing = view.missing(range(first, last + 1))
    encoded = view.fill(missing[:1])
    return {
        "window": window,
        "image_hash": image_hash,
        "missing": missing[1:],
        "encoded": encoded,
        "requested": last - first + 1,
        "entry": str(view.store.path) if view.store else "",
        "worker": _worker_name() if encoded else "",
    }


def fill_task(job: EmbedJob, window: Window, image_hash: str, indices: list[int]) -> dict[str, Any]:
    """A fill task (on a worker): encode and store ``indices`` (those still missing)."""
    view = _view(job, _volume(job), window, image_hash)
    return {"encoded": view.fill(indices), "worker": _worker_name(), "first": indices[0], "last": indices[-1]}


def slice_groups(indices: list[int], per_task: int) -> list[list[int]]:
    """``indices`` in consecutive groups of at most ``per_task``."""
    per_task = max(1, int(per_task))
    return [indices[i : i + per_task] for i in range(0, len(indices), per_task)]


def embed_on_cluster(
    client, job: EmbedJob, per_task: int | None = None, progress: Callable[[int, int, str], None] | None = None
) -> EmbedReport:
    """Fill the cache for ``job`` on ``client``'s cluster (see the module).

    The workers need :func:`napari_sam.batch.register_model`. per_task: slices
    per fill task (default: about 4 tasks per worker). progress(done, total,
    message) after each task. Task errors (bad image, bad slices) are raised here.
    """
    from distributed import as_completed

    if not job.cache_dir:
        raise InputError("embed fills the cache: give a cache folder every worker can write")
    Path(job.cache_dir).mkdir(parents=True, exist_ok=True)
    prep = client.submit(prepare_task, job, pure=False).result()
    missing: list[int] = prep["missing"]
    total = len(missing) + prep["encoded"]
    workers = {prep["worker"]} - {""}
    if per_task is None:
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        per_task = max(1, math.ceil(len(missing) / (4 * n_workers)))
    groups = slice_groups(missing, per_task)
    futures = [client.submit(fill_task, job, prep["window"], prep["image_hash"], g, pure=False) for g in groups]
    done = prep["encoded"]
    if progress:
        progress(done, total, "prepared")
    for fut in as_completed(futures):
        rec = fut.result()
        done += rec["encoded"]
        workers.add(rec["worker"])
        if progress:
            progress(done, total, f"slices {rec['first']}-{rec['last']}")
    return EmbedReport(
        encoded=done,
        cached=prep["requested"] - total,
        tasks=len(groups),
        workers=workers,
        window=prep["window"],
        entry=prep["entry"],
    )
