"""What a negative click removes, on its slice and on the neighbouring ones
(see :mod:`napari_sam.corrections`): the geodesic :func:`carve`, the split of
a blob, lump or leak off the mask, and the removal that holds outwards."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..geometry import mask_iou
from ..propagation import PropagationState


def carve(
    mask: np.ndarray,
    positive: Sequence[Sequence[int]],
    negative: Sequence[Sequence[int]],
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The voxels of ``mask`` (z, y, x) bool that the ``negative`` seeds (z, y, x)
    claim against the ``positive`` ones. Each voxel goes to the seed set it is
    nearer to along paths inside the mask, a path costing 1 / depth per mm
    (depth: distance to the mask's boundary in mm, ``spacing_zyx``): crossing
    a thick part is cheap, a thin neck dear, so the split falls on the necks
    between them, and halfway through a blob without one. Voxels that no
    negative seed reaches are kept; with no positive seed, the negative seeds
    take their whole connected components. A negative seed outside the mask
    (its voxel already removed on its own slice) still claims the mask voxels
    touching it. Returns a bool volume of the voxels to remove."""
    from skimage.graph import MCP_Geometric

    out = np.zeros(mask.shape, bool)
    neg = [tuple(int(v) for v in p) for p in negative]
    if not neg or not mask.any():
        return out
    grown = mask.copy()
    for p in neg:
        grown[p] = True
    zz, yy, xx = np.nonzero(grown)
    lo = np.maximum([zz.min() - 1, yy.min() - 1, xx.min() - 1], 0)
    hi = np.minimum([zz.max() + 2, yy.max() + 2, xx.max() + 2], mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = grown[sl]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing_zyx)
    costs = np.where(sub, 1.0 / np.maximum(depth, min(spacing_zyx)), np.inf)

    def local(points):
        q = [tuple(int(v) - int(o) for v, o in zip(p, lo)) for p in points]
        return [p for p in q if all(0 <= a < n for a, n in zip(p, sub.shape)) and sub[p]]

    def reach(points) -> np.ndarray:
        starts = local(points)
        if not starts:
            return np.full(sub.shape, np.inf)
        cum, _ = MCP_Geometric(costs, sampling=tuple(float(s) for s in spacing_zyx)).find_costs(starts)
        return cum

    dn, dp = reach(neg), reach(positive)
    out[sl] = np.isfinite(dn) & (dn < dp)
    return out & mask


def _split_off(cur: np.ndarray, r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    """The region of the (rows, cols) mask ``cur`` that a negative click at
    (r, c) removes:

    - the click's connected component when the slice holds a larger one (a
      separate wrong blob);
    - else the part of the component on the click's side of the split towards
      the mask's thickest part (the 2D :func:`carve` between the click and
      the pixel deepest inside the mask, when that lies outside the click's
      own inscribed disk), when that part is under half of the component and
      hangs on the rest by a neck (:func:`_is_neck`): a lump or a leak into
      a neighbour;
    - else the click's inscribed disk (the largest disk around the click
      inside the mask): the click lies in the body of the mask, which has no
      part to split off there, and only the wrong region around the click
      goes. A click never empties a slice that holds more than its disk.
    """
    lab, n = ndimage.label(cur, np.ones((3, 3), bool))
    comp = lab == lab[r, c]
    if n > 1 and comp.sum() < np.bincount(lab.ravel())[1:].max():
        return comp
    depth = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=sp_rc)[1:-1, 1:-1]
    dist = _distance(cur.shape, r, c, sp_rc)
    core = np.unravel_index(int(np.argmax(depth)), depth.shape)
    if dist[core] > depth[r, c] + depth[core]:  # the thickest part lies outside the click's inscribed disk
        cut = carve(comp[None], [(0, *core)], [(0, r, c)], (1.0, *sp_rc))[0]
        cut[r, c] = True
        if 2 * cut.sum() < comp.sum() and _is_neck(comp, cut):
            return cut
    return comp & (dist <= depth[r, c])


def _is_neck(comp: np.ndarray, cut: np.ndarray) -> bool:
    """Whether ``cut`` hangs on the rest of ``comp`` by a neck: the line they
    share is shorter than the side of a square of ``cut``'s area (a lump or a
    leak, not a slice through the body of a blob without one, whose cut line
    is about twice that)."""
    rest = comp & ~cut
    line = cut & ndimage.binary_dilation(rest, np.ones((3, 3), bool))
    return float(line.sum()) < float(np.sqrt(cut.sum()))


def _distance(shape: tuple[int, int], r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return np.hypot((rr - r) * sp_rc[0], (cc - c) * sp_rc[1])


def _removed_region(state: PropagationState, index: int, r: int, c: int, sp_rc: tuple[float, float]) -> np.ndarray:
    """The region of slice ``index``'s mask that a negative click at (r, c)
    removes (:func:`_split_off`; nothing when the click is outside the mask)."""
    cur = state.mask_slice(index)
    if not cur[r, c]:
        return np.zeros_like(cur)
    return _split_off(cur, r, c, sp_rc)


def _hold_removal(
    state: PropagationState,
    index: int,
    removed: np.ndarray,
    sp_rc: tuple[float, float],
    affected: tuple[int, int],
    min_iou: float,
    ball: int = 0,
) -> None:
    """Make a removal hold on the neighbouring slices: outwards from slice
    ``index``, while the mask of the next (propagated) slice still overlaps
    the region removed on the slice before, that slice's mask is split (the
    2D :func:`carve`) between the pixels lying under the region removed on
    the slice before and those lying under what was kept there; the removed
    side goes too, as long as it continues the region removed on the slice
    before (IoU at least ``min_iou``: the propagation's own continuity
    threshold, ``StopRules.min_iou``). When the click kept more of its slice
    than it removed (a leak or a lump cut off the body), a neighbour's cut may
    not be larger than the region removed on the click's slice: the click's
    evidence is that region, and a cut that outgrows it is the split eating
    into the kept body as that body slides under the removed footprint (an
    oblique rib lost slice by slice behind a leak removed on one slice). When
    the click removed most of its slice (a run past the object's end, a wrong
    object), the cut may grow as the wrong region does; and so it may within
    ``ball`` slices of the click: the click lies at the deepest point of the
    wrong region, so that region holds the ball around it as deep as the
    click lies in the removed region (:func:`ball_slices`), which reaches
    those slices."""
    keys = set(state.key_slices)
    # a leak or lump cut off a body the click kept: the cut may not outgrow it; a slice that was mostly wrong: it may
    limit = int(removed.sum()) if removed.sum() < state.mask_slice(index).sum() else removed.size
    for d in (-1, 1):
        prev, j = removed, index + d
        while affected[0] <= j <= affected[1] and j not in keys and prev.any():
            cur, kept = state.mask_slice(j), state.mask_slice(j - d)
            neg, pos = cur & prev, cur & kept & ~prev
            if not neg.any() or not pos.any():
                break
            cut = carve(cur[None], _points(pos), _points(neg), (1.0, *sp_rc))[0]
            if not cut.any() or mask_iou(cut, prev) < min_iou or (cut.sum() > limit and abs(j - index) > ball):
                break
            state.results[j] = cur & ~cut
            prev, j = cut, j + d


def ball_slices(region: np.ndarray, r: int, c: int, sp_rc: tuple[float, float], sp_axis: float) -> int:
    """Slices (``sp_axis`` mm apart) within the depth (mm) of click (r, c) in ``region``,
    the (rows, cols) bool region the click added or removed on its slice."""
    if not region[r, c]:
        return 0
    return int(ndimage.distance_transform_edt(np.pad(region, 1), sampling=sp_rc)[r + 1, c + 1] // sp_axis)


def _points(m: np.ndarray) -> list[tuple[int, int, int]]:
    return [(0, int(a), int(b)) for a, b in np.argwhere(m)]
