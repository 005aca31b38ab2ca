"""One case of a batch, computed exactly as ``napari-sam segment`` / ``auto`` would.

:func:`compute_case` reads a case's inputs and returns its label map and
sidecar fields; the label map is the one the CLI writes for the same image,
prompts, window and model (the batch tests compare the files byte for byte).
:func:`run_case` is the task a Dask worker runs: it computes, writes the
outputs all or nothing, and returns the case's summary record; a case that
fails returns ``status="failed"`` and a one-line reason instead of raising,
so the other cases go on.
"""

from __future__ import annotations

import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch_manifest import BatchSettings, Case, case_settings, input_hashes
from .batch_outputs import remove_partials, write_case_outputs
from .errors import NapariSamError
from .export import check_result_for
from .io import Geometry, Volume
from .models.base import Backend


@dataclass
class CaseResult:
    """labels: (z, y, x) integer label map on ``geometry``'s grid; names/colors
    per id; extra: sidecar fields; encoder_calls / cache_hits: embeddings
    computed / read from the disk cache; volume: the image read (the source
    of a DICOM SEG output); model: the model's name."""

    labels: np.ndarray
    geometry: Geometry
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    encoder_calls: int = 0
    cache_hits: int = 0
    volume: Volume | None = None
    model: str | None = None


def _segment(case: Case, backend: Backend, cache_dir: Path | None) -> CaseResult:
    from .embeddings import EmbeddingProvider
    from .intensity import check_window_spec
    from .io import read_image
    from .prompts import load_prompts
    from .segmentation import segment_volume

    window = check_window_spec(case.window)
    prompts = load_prompts(case.prompts)
    volume = read_image(case.image)
    check_result_for(case.output, volume)  # a DICOM SEG of a non-DICOM image fails before any work
    prompts.check_against(volume.array.shape, volume.is_2d)
    provider = EmbeddingProvider(backend, cache_dir, max_in_memory=64)
    result = segment_volume(volume, prompts, backend, window=window, embeddings_for=provider.views_of(volume.array))
    enc, hits = provider.encoder_calls, provider.disk_hits
    extra = {
        "source": str(case.image),
        "model": backend.name,
        "windows": {str(k): [w.lo, w.hi] for k, w in result.windows.items()},
        "encoder_calls": enc,
        "cache_hits": hits,
    }
    return CaseResult(
        result.labels, volume.geometry, result.names, result.colors, extra, enc, hits, volume, backend.name
    )


def _auto(case: Case, backend: Backend, cache_dir: Path | None) -> CaseResult:
    from .automatic import AutomaticSegmenter, AutoSettings
    from .cache import content_hash, embedding_key, model_identity
    from .embeddings import CropEmbeddings
    from .intensity import check_window_spec, resolve_window
    from .io import read_image
    from .segmentation import is_ct as volume_is_ct

    volume = read_image(case.image)
    check_result_for(case.output, volume)
    is_ct = volume_is_ct(volume)
    settings = AutoSettings.for_ct() if is_ct else AutoSettings.for_microscopy()
    window = resolve_window(
        volume.array,
        check_window_spec(case.window),
        volume.metadata.get("modality"),
        volume.metadata.get("dicom_window"),
    )
    crops = CropEmbeddings(backend, max_in_memory=64, cache_dir=cache_dir)
    segmenter = AutomaticSegmenter(backend, settings, crops)
    if volume.is_2d:
        result = segmenter.segment(window.apply(volume.array[0]))
        labels = result.labels[None]
    else:
        key = embedding_key(content_hash(volume.array), model_identity(backend), window, 0)
        result = segmenter.segment_volume(lambda z: window.apply(volume.array[z]), len(volume.array), volume_key=key)
        labels = result.labels
    extra = {
        "source": str(case.image),
        "model": backend.name,
        "mode": "automatic",
        "preset": "ct" if is_ct else "microscopy",
        "proposals": segmenter.proposal_kind(),
        "window": [window.lo, window.hi],
        "object_diameter": round(result.diameter, 2),
        "encoder_calls": result.encoder_calls,
        "cache_hits": crops.disk_hits,
    }
    return CaseResult(
        labels,
        volume.geometry,
        extra=extra,
        encoder_calls=result.encoder_calls,
        cache_hits=crops.disk_hits,
        volume=volume,
        model=backend.name,
    )


def compute_case(case: Case, backend: Backend, cache_dir: str | Path | None = None) -> CaseResult:
    """Compute one case's label map (no files written). cache_dir: the embedding cache, or None."""
    cd = Path(cache_dir) if cache_dir is not None else None
    if cd is not None:
        cd.mkdir(parents=True, exist_ok=True)
    return _segment(case, backend, cd) if case.mode == "segment" else _auto(case, backend, cd)


def one_line(exc: BaseException) -> str:
    """An exception as one line: our errors by their message, others with their type and place."""
    if isinstance(exc, NapariSamError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{at}"


def run_case(case: Case, settings: BatchSettings, backend: Backend, worker: str = "") -> dict[str, Any]:
    """Compute and write one case; returns its summary record (never raises for a case's own failure).

    Record keys: row, image, output, mode, status (done | failed), seconds,
    encoder_calls, cache_hits, worker, reason.
    """
    t0 = time.perf_counter()
    rec: dict[str, Any] = {
        "row": case.row,
        "image": str(case.image),
        "output": str(case.output),
        "mode": case.mode,
        "status": "done",
        "seconds": 0.0,
        "encoder_calls": 0,
        "cache_hits": 0,
        "worker": worker or socket.gethostname(),
        "reason": "",
    }
    try:
        remove_partials(case.output)
        hashes = input_hashes(case)
        res = compute_case(case, backend, settings.cache_dir)
        write_case_outputs(
            case.output,
            res.labels,
            res.geometry,
            res.names,
            res.colors,
            res.extra,
            {"inputs": hashes, "settings": case_settings(case, settings)},
            volume=res.volume,
            model=res.model,
            algorithm_type="SEMIAUTOMATIC" if case.mode == "segment" else "AUTOMATIC",
        )
        rec.update(encoder_calls=res.encoder_calls, cache_hits=res.cache_hits)
    except (NapariSamError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        rec.update(status="failed", reason=one_line(exc))
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec
