"""In-session adaptation: a short training on the slices the user committed for one object.

After a few key slices of an object are committed (or corrected), the
model's systematic error on this object (a sub-part of an organ, a leak into
a neighbour) shows on every slice propagation reaches. :func:`adapt_to_slices`
trains a copy of the decoder's output head on exactly those slices for at
most ``time_budget`` seconds (30 by default) with the prompts the session
uses (the committed mask's box with jitter, and with propagation's margin),
and returns a backend that shares the base model's frozen image encoder (and
therefore its embeddings) and holds the adapted decoder. The base backend's
weights are never changed; nothing is written to disk.

Coordinates: masks are (rows, cols) bool arrays on slices along the
propagation axis, keyed by slice index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import box_of_mask
from ..jobs import Cancel, Progress, ProgressCallback
from .data import MIN_AREA, TrainingSample, target_on_model_grid
from .pipeline import tuned_backend
from .train import DecoderTrainer, FinetuneSettings

#: the defaults of an adaptation: the output head, a high rate, no validation (measured in docs/finetuning.md)
ADAPT_SETTINGS = FinetuneSettings(
    epochs=1, lr=3e-4, anchor=1e-3, trainable="head", val_fraction=0.0, batch=4, mode_weights=(0.5, 0.5, 0.0)
)


@dataclass
class AdaptResult:
    """An adapted backend and how the adaptation went.

    backend: the adapted model (the base's image encoder, an adapted decoder).
    seconds: wall time; steps: optimiser steps; loss_first / loss_last: the
    training loss of the first and last steps (on the committed slices).
    """

    backend: object
    seconds: float
    steps: int
    loss_first: float
    loss_last: float


def _samples(embeddings, masks: dict[int, np.ndarray], out_side: int, model_size: int) -> list[TrainingSample]:
    keys = sorted(k for k, m in masks.items() if int(np.asarray(m).sum()) >= MIN_AREA)
    out = []
    for k in keys:
        emb = embeddings.get(k)
        feats = emb.features.detach().float().cpu().clone()
        m = np.asarray(masks[k], bool)
        near = [np.asarray(box_of_mask(masks[j]), np.float32) for j in keys if 0 < abs(j - k) <= 3]
        out.append(
            TrainingSample(
                features=feats,
                original_size=tuple(emb.original_size),
                input_size=tuple(emb.input_size),
                mask=m,
                target=target_on_model_grid(m, emb.input_size, model_size, out_side),
                name="object",
                label=1,
                group=f"slice {k}",
                neighbour_boxes=near + [np.asarray(box_of_mask(m), np.float32)],
            )
        )
    return out


def adapt_to_slices(
    backend,
    embeddings,
    masks: dict[int, np.ndarray],
    time_budget: float = 30.0,
    max_steps: int = 60,
    settings: FinetuneSettings | None = None,
    cancel: Cancel | None = None,
    progress: ProgressCallback | None = None,
) -> AdaptResult:
    """Adapt a copy of ``backend``'s decoder to one object's committed slices.

    embeddings: the slices' embeddings along the propagation axis (``get(index)``,
        e.g. :class:`napari_sam.embeddings.SliceEmbeddings`).
    masks: slice index -> (rows, cols) bool mask the user committed.
    time_budget: seconds at most (checked between steps); max_steps: steps at most.
    cancel: a :class:`napari_sam.jobs.Cancel` token, checked between steps
        (a cancelled adaptation returns what it learnt so far).
    progress: called with a :class:`napari_sam.jobs.Progress` after every step.
    Raises InputError when no committed mask has at least 16 pixels.
    """
    t0 = time.perf_counter()
    samples = _samples(embeddings, masks, 4 * backend.prompt_encoder.image_embedding_size[0], backend.image_size)
    if not samples:
        raise InputError("adaptation needs at least one committed slice of the object (16 pixels or more)")
    s = settings or ADAPT_SETTINGS
    trainer = DecoderTrainer(backend, s)
    losses: list[float] = []
    step = 0
    t_train = time.perf_counter()
    while step < max_steps:
        now = time.perf_counter()
        per_step = (now - t_train) / step if step else 0.0
        if now + per_step - t0 > time_budget or (cancel is not None and cancel.is_set()):
            break  # the next step would overrun the budget
        sample = samples[step % len(samples)]
        losses.append(trainer.train_step([sample] * s.batch))
        step += 1
        if progress is not None:
            progress(Progress(step, max_steps, f"adapting: step {step}"))
    adapted = tuned_backend(backend, trainer)
    return AdaptResult(
        adapted,
        time.perf_counter() - t0,
        step,
        losses[0] if losses else float("nan"),
        losses[-1] if losses else float("nan"),
    )
