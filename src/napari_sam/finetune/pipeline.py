"""Fine-tuning end to end: image/label files -> samples -> training -> a tuned checkpoint.

``finetune_files`` is what ``napari-sam finetune`` runs; ``finetune_samples``
is the same from samples already made (benchmarks, the napari panel).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import content_hash
from ..embeddings import SliceEmbeddings
from ..errors import InputError
from ..intensity import Window, looks_like_hounsfield, parse_window, resolve_window
from ..io import Volume, read_image, read_labels_aligned, sidecar_path
from ..models.sam_family import SamFamilyBackend
from .checkpoint import base_state, now_utc, save_tuned
from .data import TrainingSample, samples_from_volume, split_samples, window_for_structure
from .train import DecoderTrainer, FinetuneSettings, TrainResult, train

Progress = Callable[[int, int, str], None]
_2D_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass
class FinetuneOutcome:
    """A finished fine-tuning: the result, the trained modules and the data's provenance."""

    result: TrainResult
    trainer: DecoderTrainer
    data: list[dict]
    n_train: int
    n_val: int


def label_names(labels_path: Path, ids: Sequence[int]) -> dict[int, str]:
    """Names of label ids from a JSON beside the labels (``LABELS.json`` or ``labels.json``:
    either {id: name} or napari-sam's sidecar {"labels": {id: {"name": ...}}}); "object" otherwise."""
    for cand in (sidecar_path(labels_path), labels_path.with_name("labels.json")):
        if cand.is_file():
            try:
                doc = json.loads(cand.read_text())
            except (OSError, ValueError):
                continue
            table = doc.get("labels", doc) if isinstance(doc, dict) else {}
            names = {
                int(k): (v.get("name") if isinstance(v, dict) else str(v)) for k, v in table.items() if str(k).isdigit()
            }
            if names:
                return {i: names.get(i, f"label_{i}") for i in ids}
    return {i: "object" for i in ids}


def read_pair(image: str | Path, labels: str | Path) -> tuple[Volume, np.ndarray]:
    """An image and its label map on the image's grid ((z, y, x) integers)."""
    vol = read_image(image)
    lp = Path(labels)
    if vol.is_2d or lp.suffix.lower() in _2D_SUFFIXES:
        lab = read_image(lp).array
        if lab.ndim == 4 or lab.shape != vol.shape:
            raise InputError(f"{lp}: labels of shape {lab.shape} do not match the image's {vol.shape}")
    else:
        lab = read_labels_aligned(lp, vol)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise InputError(f"{lp}: labels must be integers")
        lab = lab.astype(np.int64)
    return vol, lab


def structure_windows(vol: Volume, names: dict[int, str], window: str | Window | None) -> dict[int, Window]:
    """The window each label is trained in: ``window`` for all when given, else the
    default for the image, with bone and lung windows for bones and lungs on CT."""
    md = vol.metadata
    if window is not None:
        w = resolve_window(vol.array, window, md.get("modality"), md.get("dicom_window"))
        return {i: w for i in names}
    default = resolve_window(vol.array, None, md.get("modality"), md.get("dicom_window"))
    ct = looks_like_hounsfield(vol.array)
    bone, lung = (parse_window("bone"), parse_window("lung")) if ct else (None, None)
    return {i: window_for_structure(n, default, bone, lung) for i, n in names.items()}


def samples_from_files(
    backend: SamFamilyBackend,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    window: str | Window | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[TrainingSample], list[dict]]:
    """Samples of every pair, embeddings from (and into) the cache; also each pair's provenance."""
    if len(images) != len(labels) or not images:
        raise InputError(f"{len(images)} image(s) and {len(labels)} label map(s): give one label map per image")
    samples: list[TrainingSample] = []
    data: list[dict] = []
    out_side = 4 * backend.prompt_encoder.image_embedding_size[0]
    for img, lab in zip(images, labels):
        vol, lmap = read_pair(img, lab)
        ids = [int(v) for v in np.unique(lmap) if v != 0]
        names = label_names(Path(lab), ids)
        wins = structure_windows(vol, names, window)
        ih = content_hash(vol.array)

        def emb_for(win: Window, _vol=vol, _ih=ih) -> SliceEmbeddings:
            return SliceEmbeddings(backend, _vol.array, win, 0, cache_dir=cache_dir, image_hash=_ih)

        samples += samples_from_volume(emb_for, lmap, names, wins, Path(img).name, out_side, progress)
        data.append(
            {
                "image": str(img),
                "image_sha256": ih,
                "labels": str(lab),
                "labels_sha256": content_hash(np.ascontiguousarray(lmap)),
                "n_labels": len(ids),
                "windows": sorted({w.key() for w in wins.values()}),
            }
        )
    return samples, data


def provenance(
    model: str,
    base_sha: str,
    settings: FinetuneSettings,
    outcome_result: TrainResult,
    data: list[dict],
    n_train: int,
    n_val: int,
    n_params: int,
    kind: str = "finetune",
) -> dict:
    """The plain-data provenance stored in a tuned checkpoint."""
    from .. import __version__

    r = outcome_result
    return {
        "kind": kind,
        "base_model": model,
        "base_sha256": base_sha,
        "created": now_utc(),
        "napari_sam": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": settings.to_json(),
        "trained_parameters": n_params,
        "data": data,
        "samples": {"train": n_train, "validation": n_val},
        "validation": {
            "base_val_dice": r.base_val_dice,
            "best_val_dice": r.best_val_dice,
            "best_epoch": r.best_epoch,
            "per_class": r.per_class,
            "base_per_class": r.base_per_class,
            "history": r.history,
            "interrupted": r.interrupted,
            "train_seconds": r.seconds,
        },
    }


def finetune_samples(
    backend: SamFamilyBackend,
    samples: list[TrainingSample],
    settings: FinetuneSettings,
    output: str | Path | None = None,
    data: list[dict] | None = None,
    model: str = "lite_medsam",
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    classes: dict | None = None,
) -> FinetuneOutcome:
    """Split, train and (when ``output`` is given) write the best checkpoint at every
    improvement and at the end, so Ctrl-C keeps the best weights so far.

    classes: a taught class head's state (:mod:`.classes`), stored in the checkpoint."""
    train_set, val_set = split_samples(samples, settings.val_fraction, np.random.default_rng(settings.seed))
    trainer = DecoderTrainer(backend, settings)
    base, base_sha = base_state(model) if output is not None else ({}, "")

    def write(res: TrainResult) -> None:
        if output is not None:
            prov = provenance(
                model, base_sha, settings, res, data or [], len(train_set), len(val_set), trainer.n_trainable
            )
            save_tuned(output, base, trainer.state_dicts(), prov, classes=classes)

    res = train(trainer, train_set, val_set, progress, on_best=write, cancel=cancel)
    write(res)  # the trainer holds the best weights now; the final figures go in
    return FinetuneOutcome(res, trainer, data or [], len(train_set), len(val_set))


def tuned_backend(base: SamFamilyBackend, trainer: DecoderTrainer, name: str | None = None) -> SamFamilyBackend:
    """A backend sharing ``base``'s image encoder with the trainer's decoder (``base`` untouched).

    It keeps ``base``'s name by default, so the embedding cache (the encoder's
    output, which training does not change) is shared.
    """
    return with_decoder(base, trainer.prompt_encoder, trainer.mask_decoder, name)


def with_decoder(base: SamFamilyBackend, prompt_encoder, mask_decoder, name: str | None = None) -> SamFamilyBackend:
    """``base``'s image encoder (shared) with another prompt encoder and mask decoder."""
    return SamFamilyBackend(
        name or base.name,
        base.image_encoder,
        prompt_encoder.eval(),
        mask_decoder.eval(),
        base.image_size,
        base.device,
        base.mean,
        base.std,
        base.supports_points,
        base.dtype,
    )
