"""What a prompt gives back: :class:`Prediction` (a leaf of the prediction layer).

Built by the click strategy (:mod:`napari_sam.clicks`), the zoom path
(:mod:`napari_sam.zoom`) and the :class:`napari_sam.predictor.SlicePredictor`
that combines them; it lives below all three so that none imports another
for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Crop

__all__ = ["Prediction"]


@dataclass(frozen=True)
class Prediction:
    """Candidate masks for one prompt, best first.

    masks: (K, H, W) bool, K in 1..3; scores: (K,) float32, higher is better;
    low_res_logits: (K, s, s) float32 model-frame logits (for a later mask_input);
    boxes: (K, 4) float32, the box (r0, c0, r1, c1) that produced each mask.
    crop: None when decoded on the whole slice; else the zoom crop whose
        model frame ``low_res_logits`` are in.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    boxes: np.ndarray
    crop: Crop | None = None

    @property
    def mask(self) -> np.ndarray:
        """The best candidate, (H, W) bool."""
        return self.masks[0]

    def candidate(self, index: int) -> np.ndarray:
        """Candidate ``index`` modulo the number of candidates (for cycling)."""
        return self.masks[index % len(self.masks)]
