"""Region-of-interest zoom for small objects (off by default).

The embedded model sees every slice at 256 px: a 15 px adrenal gland becomes
7 px. With :class:`RoiZoom` given to the :class:`~napari_sam.propagation.Propagator`,
an object whose key slices are small is propagated in a square region around
them (``context`` times their extent, at least ``min_side`` pixels), which the
model sees magnified to its full input; objects whose region would exceed
``max_fraction`` of the slice's shorter side are not zoomed. The region's
embeddings come from the same embedding provider as whole slices (cached like
them, keyed by the crop). A pass whose mask reaches the region's edge goes on
with the whole slice.

Off by default: with the embedded LiteMedSAM on the shared CT it helped some
small structures (adrenal gland, colon) and hurt others (aorta, ribs, IVC);
see docs/propagation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import Crop, box_of_mask
from .state import PropagationState

__all__ = ["RoiZoom", "choose_roi", "key_extent"]


@dataclass(frozen=True)
class RoiZoom:
    """How the region of interest is chosen (see the module docstring)."""

    context: float = 3.0
    min_side: int = 96
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.context < 1.0 or self.min_side < 8 or not 0.0 < self.max_fraction <= 1.0:
            raise InputError(
                f"RoiZoom{(self.context, self.min_side, self.max_fraction)}: expected "
                "context >= 1, min_side >= 8 px and 0 < max_fraction <= 1"
            )


def key_extent(state: PropagationState) -> tuple[int, int, int, int] | None:
    """Inclusive (r0, c0, r1, c1) around every positive key prompt and painted
    mask, None when there is none."""
    boxes = []
    for k in state.key_slices:
        if k in state.user_masks:
            b = box_of_mask(state.user_masks[k])
            if b is not None:
                boxes.append(b)
        elif not state.is_stop_slice(k):
            p = state.prompts[k]
            if p.box is not None:
                boxes.append(p.box)
            if len(p.positive):
                lo, hi = p.positive.min(0), p.positive.max(0)
                boxes.append((lo[0], lo[1], hi[0], hi[1]))
    if not boxes:
        return None
    b = np.asarray(boxes, np.float64)
    return (
        int(np.floor(b[:, 0].min())),
        int(np.floor(b[:, 1].min())),
        int(np.ceil(b[:, 2].max())),
        int(np.ceil(b[:, 3].max())),
    )


def _fits_inside(
    ext: tuple[int, int, int, int], roi: tuple[int, int, int, int], zoom: RoiZoom, shape: tuple[int, int]
) -> bool:
    """Whether the key extent sits well inside the current region (its inner part, away from inner edges)."""
    H, W = shape
    r0, c0, r1, c1 = roi
    margin = (r1 - r0 + 1) / (2 * zoom.context)
    inner = (
        r0 + margin if r0 > 0 else 0,
        c0 + margin if c0 > 0 else 0,
        r1 - margin if r1 < H - 1 else H - 1,
        c1 - margin if c1 < W - 1 else W - 1,
    )
    return ext[0] >= inner[0] and ext[1] >= inner[1] and ext[2] <= inner[2] and ext[3] <= inner[3]


def choose_roi(state: PropagationState, zoom: RoiZoom | None) -> None:
    """Keep ``state.roi`` while the key slices fit well inside it; otherwise
    choose it anew (None: the whole slice) and, when it changes, mark
    everything for recomputation (the frame the model looks at changed)."""
    ext = key_extent(state)
    if zoom is None or ext is None:
        new = None
    else:
        H, W = state.slice_shape
        if state.roi is not None and _fits_inside(ext, state.roi, zoom, (H, W)):
            return
        size = max(ext[2] - ext[0] + 1, ext[3] - ext[1] + 1)
        side = int(round(max(zoom.min_side, zoom.context * size)))
        if side > zoom.max_fraction * min(H, W):
            new = None
        else:
            cr, cc = (ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2
            r0 = int(np.clip(round(cr - side / 2), 0, H - side))
            c0 = int(np.clip(round(cc - side / 2), 0, W - side))
            new = (r0, c0, r0 + side - 1, c0 + side - 1)
    if new != state.roi:
        state.roi = new
        if state.results:
            state.mark_all()


def frame_of(state: PropagationState) -> Crop:
    """The frame the model looks at: the region of interest, or the whole slice."""
    return Crop.whole(state.slice_shape) if state.roi is None else Crop.from_box(state.roi)
