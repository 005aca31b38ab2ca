"""The candidate masks side by side: a thumbnail of the slice around the
object with each candidate's outline, its rank and score; clicking one shows
it as the preview (as Shift-M cycles through them).

Candidates come from :class:`napari_sam.predictor.Prediction` (best first,
see :func:`napari_sam.clicks.candidate_order` for the ranking).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QToolButton, QWidget

#: thumbnail side (screen pixels)
THUMB = 64
#: outline colour (RGB) of a candidate on its thumbnail
OUTLINE = (0, 230, 255)


def thumbnail(plane: np.ndarray, mask: np.ndarray, crop: tuple[int, int, int, int], side: int = THUMB) -> np.ndarray:
    """(side, side, 3) uint8: ``plane`` (H, W[, 3]) float in [0, 1] cropped to
    ``crop`` (r0, c0, r1, c1 inclusive), with the outline of ``mask`` (H, W) bool."""
    r0, c0, r1, c1 = crop
    img = np.asarray(plane[r0 : r1 + 1, c0 : c1 + 1], np.float32)
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    m = np.asarray(mask[r0 : r1 + 1, c0 : c1 + 1], bool)
    h, w = m.shape
    rr = np.minimum((np.arange(side) * h / side).astype(int), h - 1)  # nearest-neighbour resize
    cc = np.minimum((np.arange(side) * w / side).astype(int), w - 1)
    small = (np.clip(rgb[rr][:, cc], 0, 1) * 255).astype(np.uint8)
    ms = m[rr][:, cc]
    inner = ms.copy()
    inner[1:-1, 1:-1] = ms[1:-1, 1:-1] & ms[:-2, 1:-1] & ms[2:, 1:-1] & ms[1:-1, :-2] & ms[1:-1, 2:]
    small[ms & ~inner] = OUTLINE
    return np.ascontiguousarray(small)


def union_crop(masks: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int] | None:
    """The box (r0, c0, r1, c1) around every mask of (K, H, W), grown by ``margin``, made square."""
    any_ = np.asarray(masks, bool).any(axis=0)
    if not any_.any():
        return None
    rr, cc = np.nonzero(any_)
    h, w = any_.shape
    cr, cc_ = (rr.min() + rr.max()) / 2, (cc.min() + cc.max()) / 2
    half = max(rr.max() - rr.min(), cc.max() - cc.min()) * (0.5 + margin) + 2
    r0, r1 = int(max(0, cr - half)), int(min(h - 1, cr + half))
    c0, c1 = int(max(0, cc_ - half)), int(min(w - 1, cc_ + half))
    return r0, c0, r1, c1


class CandidatesView(QWidget):
    """Up to three buttons, one per candidate: thumbnail with outline, "rank: score"."""

    def __init__(self, on_pick: Callable[[int], Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.on_pick = on_pick
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.buttons: list[QToolButton] = []
        for i in range(3):
            b = QToolButton()
            b.setToolButtonStyle(Qt.ToolButtonTextUnderIcon)
            b.setIconSize(QSize(THUMB, THUMB))
            b.setCheckable(True)
            b.setAutoRaise(True)
            b.clicked.connect(lambda _c=False, k=i: self.on_pick(k))
            b.setVisible(False)
            lay.addWidget(b)
            self.buttons.append(b)
        lay.addStretch(1)
        #: (rank, score) of the candidates shown, for scripts and tests
        self.shown: list[tuple[int, float]] = []

    def show_candidates(
        self, plane: np.ndarray | None, masks: np.ndarray | None, scores: np.ndarray | None, current: int
    ) -> None:
        """plane: (H, W[, 3]) float in [0, 1]; masks: (K, H, W) bool; scores: (K,). None clears."""
        self.shown = []
        crop = union_crop(masks) if masks is not None and len(masks) > 0 else None
        for i, b in enumerate(self.buttons):
            if crop is None or plane is None or i >= len(masks):
                b.setVisible(False)
                continue
            arr = thumbnail(plane, masks[i], crop)
            img = QImage(arr.data, arr.shape[1], arr.shape[0], 3 * arr.shape[1], QImage.Format_RGB888).copy()
            b.setIcon(QIcon(QPixmap.fromImage(img)))
            b.setText(f"{i + 1}: {float(scores[i]):.2f}")
            b.setToolTip(
                f"Candidate {i + 1} (model score {float(scores[i]):.2f}); click to preview it (Shift-M cycles)"
            )
            b.setChecked(i == current)
            b.setVisible(True)
            self.shown.append((i + 1, float(scores[i])))
        self.setVisible(bool(self.shown))
