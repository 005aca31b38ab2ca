"""2D prediction: embed a slice once, answer many prompts.

:class:`SlicePredictor` mirrors SAM's ``SamPredictor``: ``set_image`` (or
``set_embedding``) once, then ``predict`` as often as prompts change; each
call costs only the mask decoder.

Clicks on box-only models. LiteMedSAM was fine-tuned with boxes alone: a
click given to it as a point prompt yields an empty mask. For such models the
predictor turns the clicks into *box hypotheses* (:mod:`napari_sam.clicks`),
decodes them, and ranks the masks by agreement with every click, by how well
each mask explains its own box, and by the model's predicted quality.

Coordinates are (row, col) pixels of the slice; boxes (r0, c0, r1, c1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clicks import ClickStrategy
from .errors import InputError, UsageError
from .models.base import Backend, Embedding
from .prompts import SlicePrompt, as_slice_prompt


@dataclass(frozen=True)
class Prediction:
    """Candidate masks for one prompt, best first.

    masks: (K, H, W) bool, K in 1..3; scores: (K,) float32, higher is better;
    low_res_logits: (K, s, s) float32 model-frame logits (for a later mask_input);
    boxes: (K, 4) float32, the box (r0, c0, r1, c1) that produced each mask.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    boxes: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """The best candidate, (H, W) bool."""
        return self.masks[0]

    def candidate(self, index: int) -> np.ndarray:
        """Candidate ``index`` modulo the number of candidates (for cycling)."""
        return self.masks[index % len(self.masks)]


class SlicePredictor:
    """Embed one 2D slice, then predict masks from prompts many times.

    backend: a loaded model (:func:`napari_sam.load_model`).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.clicks = ClickStrategy(backend)
        self._embedding: Embedding | None = None

    @property
    def embedding(self) -> Embedding:
        if self._embedding is None:
            raise UsageError("no image set: call .set_image(image) or .set_embedding(embedding) first")
        return self._embedding

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the current slice."""
        return self.embedding.original_size

    def set_image(self, image: np.ndarray) -> Embedding:
        """Embed a slice. image: (H, W) or (H, W, 3) float32 in [0, 1] (see
        :mod:`napari_sam.intensity` to window raw data). Returns the embedding."""
        image = np.asarray(image)
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise InputError(f"slice of shape {image.shape}: expected (H, W) or (H, W, 3)")
        if min(image.shape[:2]) < 2:
            raise InputError(f"slice of shape {image.shape}: too small to segment")
        self._embedding = self.backend.embed(image.astype(np.float32, copy=False))
        return self._embedding

    def set_embedding(self, embedding: Embedding) -> None:
        """Use an embedding computed earlier (e.g. from the cache)."""
        if embedding.model != self.backend.name:
            raise InputError(f"embedding made by model {embedding.model!r}, predictor uses {self.backend.name!r}")
        self._embedding = embedding

    def predict(self, points: np.ndarray | list | None = None, labels: np.ndarray | list | None = None,
                box: tuple[float, float, float, float] | list | None = None,
                prompt: SlicePrompt | None = None, previous: np.ndarray | None = None,
                multimask: bool = True) -> Prediction:
        """Predict candidate masks from clicks and/or a box.

        points: (N, 2) (row, col); labels: (N,) 1 positive / 0 negative
            (default all positive); box: (r0, c0, r1, c1) inclusive.
        prompt: a SlicePrompt instead of points/labels/box.
        previous: (H, W) bool, the mask the user is correcting (clicks then
            refine it, as in SAM's interactive loop).
        multimask: return up to 3 distinct candidates (ambiguity), else 1.
        """
        if prompt is None:
            prompt = as_slice_prompt(points, labels, box)
        prompt.check_inside(self.image_shape)
        emb = self.embedding
        return self.clicks.predict(emb, prompt, previous=previous, multimask=multimask)
