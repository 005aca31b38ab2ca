"""Fine-tuning from volumes already in memory: what the napari *Learn* panel runs.

``napari-sam finetune`` reads image/label files (:mod:`.pipeline`); the panel
has the image and the user's committed objects as arrays. Both end in the same
place: samples with simulated prompts, a class head taught from the label
names, training with validation and early stopping, and a checkpoint written
atomically at every improvement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..cache import content_hash
from ..embeddings import SliceEmbeddings
from ..errors import InputError
from ..io import Volume
from ..models.sam_family import SamFamilyBackend
from .classes import teach_from_volumes
from .data import samples_from_volume
from .pipeline import FinetuneOutcome, finetune_samples, structure_windows
from .train import FinetuneSettings

__all__ = ["finetune_volumes"]


def finetune_volumes(
    backend: SamFamilyBackend,
    pairs: Sequence[tuple[Volume, np.ndarray, dict[int, str]]],
    settings: FinetuneSettings,
    output: str | Path,
    window=None,
    cache_dir: str | Path | None = None,
    classes: str = "logistic",
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> FinetuneOutcome:
    """Fine-tune on ``(volume, labels (z, y, x) on its grid, {id: name})`` triples and write
    ``output``; ``classes`` ("logistic", "prototype" or "none") also teaches the names."""
    out_side = 4 * backend.prompt_encoder.image_embedding_size[0]
    samples, data = [], []
    for n, (vol, labels, names) in enumerate(pairs):
        if labels.shape != vol.shape:
            raise InputError(f"labels of shape {labels.shape} do not match the image's {vol.shape}")
        ids = [int(v) for v in np.unique(labels) if v != 0]
        if not ids:
            raise InputError("no labelled object to learn from: commit or paint some objects first")
        image_hash = content_hash(vol.array)

        def emb_for(win, _vol=vol, _h=image_hash) -> SliceEmbeddings:
            return SliceEmbeddings(backend, _vol.array, win, 0, cache_dir=cache_dir, image_hash=_h)

        wins = structure_windows(vol, {i: names.get(i, "object") for i in ids}, window)
        source = str(vol.metadata.get("path") or f"volume {n + 1}")
        samples += samples_from_volume(emb_for, labels, names, wins, source, out_side, progress)
        data.append(
            {
                "image": source,
                "image_sha256": image_hash,
                "labels": "in memory",
                "labels_sha256": content_hash(np.ascontiguousarray(labels)),
                "n_labels": len(ids),
                "windows": sorted({w.key() for w in wins.values()}),
            }
        )
    head = None
    if classes != "none":
        head = teach_from_volumes(backend, pairs, window, cache_dir, classes).to_state()
    return finetune_samples(backend, samples, settings, output, data, "lite_medsam", progress, cancel, classes=head)
