"""Several objects in one label map: the one rule that resolves overlaps.

When several objects claim a voxel, :func:`resolve_overlaps` gives it to the
object most likely to own it, judged per voxel:

1. a voxel on one of an object's *key slices* (slices the user prompted,
   painted or corrected) goes to that object before any propagated claim:
   the user's own slices are never painted over by another object; where
   two objects' key slices contest a voxel (two boxes drawn on the same
   slice, one object inside or against the other), the object whose mask is
   smaller on that slice wins: a box around a small object is the more
   specific statement, so a large neighbour's key mask that spills over it
   never costs it its key slice, and the large one loses only the spill;
2. an object's propagated mask that *coincides* on a slice with another
   object's mask (each lies mostly, more than half, inside the other) is,
   with it, the model's one answer to two prompts: one propagation has reached its neighbour, the next
   instance of a repeated structure (a vertebra, a rib). The slice goes to
   the object whose nearest key slice is nearer (mm along the axis: the
   user's statement about the structure there is the nearer one); the
   other drops that slice altogether. Key slices are never dropped; at
   equal distances both keep the slice and rule 4 splits it. On the shared
   CT, T11's propagation ran over T12 (nearly the same mask, slice after
   slice) and rule 4 alone gave T11 half of each slice: T12 lost 0.086
   Dice in the joint map; with this rule nothing (docs/propagation.md,
   "Joint-map loss");
3. a propagated mask lying mostly inside another object's mask on a slice,
   and not the other way round, is the more specific answer there (the
   reasoning of rule 1): it wins its voxels against every mask containing
   it (its claim is its relative depth plus the number of masks on that
   slice that contain it). On the shared MR the liver's runaway mask holds
   the right kidney's and the gallbladder's on their propagated slices, and
   the colon's whole-abdomen answer the small bowel's: rule 4 alone gave
   their rims to the container;
4. otherwise, the object whose mask holds the voxel *relatively* deepest
   on that slice wins: each slice's mask is the model's answer to one prompt
   there, and its logits rise from the mask's edge towards its centre; the
   depth of a voxel (distance in mm, physical in-plane spacing, to the edge
   of the object's mask on that slice) divided by the deepest voxel of that
   mask puts a small organ and a large neighbour on the same 0..1 scale,
   from edge to centre. Absolute depth (the rule before) let any large mask
   win, a runaway one included: on the shared MR the liver, propagated to
   twice its volume, took the gallbladder and the inferior vena cava, and a
   colon mask answered with the whole abdomen took every organ under it
   (joint-map loss 0.048; 0.007 with the relative depth; see
   docs/propagation.md);
5. ties go to the object listed first.

Rules 2 and 3 compare whole slice masks of objects along the same axis,
before any voxel is painted; only masks whose bounding boxes meet are
compared, and only on slices that are not the object's key slices.

The annotation model (:class:`napari_sam.annotation.Annotation`) paints its
label map through this function after every change, and both the napari
widget and the CLI (:func:`napari_sam.segmentation.segment_volume`, a replay
of the prompts file through the model) use that model: one rule, and the
result does not depend on the order the objects were computed in (only
exact ties do). While a propagation runs, the widget shows each finished
slice at once in the voxels that are free or the object's own; the finished
run is painted by this rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ObjectMasks", "as_mask", "resolve_overlaps", "resolve_overlaps_into", "KEY_SLICE_PRIORITY"]

#: priority that makes a key-slice claim beat any propagated one (relative depth <= 1 plus at most
#: one per other object); a key slice's claim is this less the object's area (mm^2) on that slice
KEY_SLICE_PRIORITY = 1.0e9

#: a mask "lies mostly inside" another when more than this fraction of its voxels do: a majority,
#: not a tuned constant (0.4 to 0.75 give the same joint-map figures on the shared CT and MR,
#: docs/propagation.md)
MOSTLY = 0.5


@dataclass
class ObjectMasks:
    """One object's masks before painting: ``masks`` slice -> (rows, cols) bool
    along ``axis`` (a plain array, or any mask with ``crop``/``offset`` such as
    :class:`napari_sam.box_batches.CroppedMask`); ``key_slices``: the slices the
    user prompted."""

    id: int
    axis: int
    masks: dict[int, Any]
    key_slices: set[int]

    def volume(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The object as a (z, y, x) bool volume of ``shape``."""
        out = np.zeros(shape, bool)
        for z, m in self.masks.items():
            out[_plane(self.axis, z)] = as_mask(m)
        return out

    def boxed(self, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """(bounding-box slices in (z, y, x), the object's bool volume inside
        them), allocated at the box's size only; None when the object is empty."""
        planes = {z: _crop_of(m) for z, m in self.masks.items()}
        planes = {z: c for z, c in planes.items() if c is not None}
        if not planes:
            return None
        r0 = min(o[0] for _, o in planes.values())
        c0 = min(o[1] for _, o in planes.values())
        r1 = max(o[0] + c.shape[0] for c, o in planes.values())
        c1 = max(o[1] + c.shape[1] for c, o in planes.values())
        z0, z1 = min(planes), max(planes) + 1
        sub = np.zeros((z1 - z0, r1 - r0, c1 - c0), bool)
        for z, (crop, (r, c)) in planes.items():
            sub[z - z0, r - r0 : r - r0 + crop.shape[0], c - c0 : c - c0 + crop.shape[1]] = crop
        in_plane = [a for a in range(3) if a != self.axis]
        box: list[slice] = [slice(None)] * 3
        box[self.axis] = slice(z0, z1)
        box[in_plane[0]] = slice(r0, r1)
        box[in_plane[1]] = slice(c0, c1)
        # sub is (axis, rows, cols); put it in (z, y, x) order
        order = np.argsort([self.axis] + in_plane)
        return tuple(box), np.transpose(sub, order)


def as_mask(mask: Any) -> np.ndarray:
    """A slice mask as a (rows, cols) bool array (a compact
    :class:`~napari_sam.box_batches.CroppedMask` is expanded)."""
    return mask.full() if hasattr(mask, "full") else np.asarray(mask, bool)


def _crop_of(mask: Any) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(crop, (r0, c0)) of a non-empty plane mask, None when empty."""
    if hasattr(mask, "crop") and hasattr(mask, "offset"):
        crop, off = np.asarray(mask.crop, bool), tuple(mask.offset)
    else:
        crop, off = np.asarray(mask, bool), (0, 0)
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(crop.any(axis=0))
    return (crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], (off[0] + int(rows[0]), off[1] + int(cols[0])))


def _plane(axis: int, index: int) -> tuple:
    sl: list = [slice(None)] * 3
    sl[axis] = index
    return tuple(sl)


def _depth(sub: np.ndarray, spacing_zyx: Sequence[float], axis: int = 0) -> np.ndarray:
    """Relative depth in [0, 1] of every voxel of a (z, y, x) bool box: per plane
    along ``axis``, the distance (mm) to the plane mask's edge over the largest
    such distance in that plane (0 outside the mask)."""
    planes = np.moveaxis(sub, axis, 0)
    in_plane = [s for a, s in enumerate(spacing_zyx) if a != axis]
    out = np.zeros(planes.shape, np.float32)
    for k, plane in enumerate(planes):
        if plane.any():
            d = ndimage.distance_transform_edt(np.pad(plane, 1), sampling=in_plane)[1:-1, 1:-1]
            out[k] = d / d.max()
    return np.moveaxis(out, 0, axis)


def _overlap(a: tuple[np.ndarray, tuple[int, int]], b: tuple[np.ndarray, tuple[int, int]]) -> int:
    """Voxels two cropped plane masks ((crop, (r0, c0)) each) share."""
    (ca, (ra, ka)), (cb, (rb, kb)) = a, b
    r0, r1 = max(ra, rb), min(ra + ca.shape[0], rb + cb.shape[0])
    c0, c1 = max(ka, kb), min(ka + ca.shape[1], kb + cb.shape[1])
    if r0 >= r1 or c0 >= c1:
        return 0
    return int(np.count_nonzero(ca[r0 - ra : r1 - ra, c0 - ka : c1 - ka] & cb[r0 - rb : r1 - rb, c0 - kb : c1 - kb]))


def _key_distance(obj: ObjectMasks, index: int, spacing_zyx: Sequence[float]) -> float:
    """Distance (mm along the object's axis) from slice ``index`` to the object's nearest key slice."""
    if not obj.key_slices:
        return float("inf")
    return min(abs(index - k) for k in obj.key_slices) * float(spacing_zyx[obj.axis])


def _contacts(objects: Sequence[ObjectMasks]) -> list[tuple[int, int, int, bool, bool]]:
    """(a, b, slice, a mostly inside b, b mostly inside a) for every propagated (non-key) slice
    mask of object a that shares voxels with object b's mask on that slice (same axis); a and b
    index ``objects``. Work: only masks whose bounding boxes meet are compared."""
    propagated = {(o.axis, z) for o in objects for z in o.masks if z not in o.key_slices}
    planes: dict[tuple[int, int], list[tuple[int, tuple[np.ndarray, tuple[int, int]], int]]] = {}
    for i, obj in enumerate(objects):
        for z, m in obj.masks.items():
            if (obj.axis, z) in propagated and (c := _crop_of(m)) is not None:
                planes.setdefault((obj.axis, z), []).append((i, c, int(np.count_nonzero(c[0]))))
    out = []
    for (_, z), entries in planes.items():
        if len(entries) < 2:
            continue
        boxes = np.array([(o[0], o[1], o[0] + c.shape[0], o[1] + c.shape[1]) for _, (c, o), _ in entries])
        for ea, (a, ca, na) in enumerate(entries):
            if z in objects[a].key_slices:
                continue
            r0, c0, r1, c1 = boxes[ea]
            meet = (boxes[:, 0] < r1) & (boxes[:, 2] > r0) & (boxes[:, 1] < c1) & (boxes[:, 3] > c0)
            for eb in np.flatnonzero(meet):
                b, cb, nb = entries[eb]
                if b != a and (shared := _overlap(ca, cb)):
                    out.append((a, b, z, shared > MOSTLY * na, shared > MOSTLY * nb))
    return out


def _jumps_and_nesting(
    objects: Sequence[ObjectMasks], spacing_zyx: Sequence[float]
) -> tuple[list[ObjectMasks], dict[tuple[int, int], int]]:
    """Rules 2 and 3 of the module: (the objects less the slices each drops because another
    object's coinciding mask there is nearer its key slice, {(object index, slice): how many
    other masks on that slice contain the object's mask})."""
    contacts = _contacts(objects)
    dropped = {
        (a, z)
        for a, b, z, a_in_b, b_in_a in contacts
        if a_in_b and b_in_a and _key_distance(objects[b], z, spacing_zyx) < _key_distance(objects[a], z, spacing_zyx)
    }
    nesting: dict[tuple[int, int], int] = {}
    for a, b, z, a_in_b, b_in_a in contacts:
        if a_in_b and not b_in_a and (a, z) not in dropped and (b, z) not in dropped:
            nesting[(a, z)] = nesting.get((a, z), 0) + 1
    dropping = {a for a, _ in dropped}
    kept = [
        ObjectMasks(o.id, o.axis, {z: m for z, m in o.masks.items() if (i, z) not in dropped}, o.key_slices)
        if i in dropping
        else o
        for i, o in enumerate(objects)
    ]
    return kept, nesting


def resolve_overlaps(
    shape: tuple[int, int, int], objects: Sequence[ObjectMasks], spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Paint ``objects`` into one (z, y, x) uint16 label map of ``shape``,
    resolving overlaps per voxel by the rules of this module (key slices first,
    then coinciding and nested masks, then the relatively deepest claim on the slice, distances in mm with
    ``spacing_zyx`` = (z, y, x); ties to the object listed first). Work and memory per object are those of its
    bounding box, not of the whole volume."""
    labels = np.zeros(shape, np.uint16)
    resolve_overlaps_into(labels, np.full(shape, -1.0, np.float32), objects, spacing_zyx)
    return labels


def resolve_overlaps_into(
    labels: Any, best: Any, objects: Sequence[ObjectMasks], spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
) -> None:
    """:func:`resolve_overlaps` painting into array-likes that may live on disk.

    labels: (z, y, x) integer array-like holding 0; best: float32 array-like of
    the same shape holding -1 (each voxel's winning claim so far). Any object
    with numpy-style region reads and writes (``a[sl]``, ``a[sl] = v``) works,
    e.g. a zarr array: each object reads and writes only its bounding box, so
    a label map larger than memory is painted chunk by chunk.
    """
    shape = tuple(labels.shape)
    kept, nesting = _jumps_and_nesting(objects, spacing_zyx)
    for i, obj in enumerate(kept):
        boxed = obj.boxed(shape)  # type: ignore[arg-type]
        if boxed is None:
            continue
        sl, inside = boxed
        depth = _depth(inside, spacing_zyx, obj.axis)
        lo = sl[obj.axis]
        px_mm2 = float(np.prod([s for a, s in enumerate(spacing_zyx) if a != obj.axis]))
        for k in range(lo.start, lo.stop):
            plane = _plane(obj.axis, k - lo.start)
            if k in obj.key_slices and k in obj.masks:
                depth[plane] = KEY_SLICE_PRIORITY - float(inside[plane].sum()) * px_mm2
            elif (i, k) in nesting:
                depth[plane] += nesting[(i, k)]
        region, claim = np.array(labels[sl]), np.array(best[sl], np.float32)
        win = inside & (depth > claim)
        region[win] = obj.id
        claim[win] = depth[win]
        labels[sl] = region
        best[sl] = claim
