"""What one mutation of an annotation changed: the :class:`ChangeSet` a front applies to its layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChangeSet"]

_EMPTY_INDEX = (np.zeros(0, np.intp),) * 3


@dataclass(frozen=True)
class ChangeSet:
    """What one mutation of an :class:`~napari_sam.annotation.Annotation` changed.

    shape: (z, y, x) of the label map;
    objects: ids of the objects whose record changed (key slices, results,
        name, colour; added or removed);
    index: (z, y, x) integer index arrays of the label-map voxels that
        changed; values: their new labels (uint16), in the same order. A
        front writes them with ``layer.data[index] = values``;
    table: True when the list of objects, a name, a colour or the current
        object changed (a front refreshes its object list);
    what: a short description ("commit slice 12 of liver").
    """

    shape: tuple[int, int, int]
    objects: frozenset[int] = frozenset()
    index: tuple[np.ndarray, np.ndarray, np.ndarray] = field(default=_EMPTY_INDEX)
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    table: bool = False
    what: str = ""

    @classmethod
    def between(cls, old: np.ndarray, new: np.ndarray, objects=(), table: bool = False, what: str = "") -> ChangeSet:
        """The change from label map ``old`` to ``new`` (both (z, y, x), same shape)."""
        idx = np.nonzero(old != new)
        return cls(
            tuple(old.shape),
            frozenset(int(o) for o in objects),
            idx,  # type: ignore[arg-type]
            new[idx].astype(np.uint16),
            table,
            what,
        )

    @property
    def n_voxels(self) -> int:
        """Number of label-map voxels that changed."""
        return int(self.values.size)

    @property
    def empty(self) -> bool:
        """Nothing changed: no voxel, no object, no table entry."""
        return self.n_voxels == 0 and not self.objects and not self.table

    def slices(self, axis: int = 0) -> list[int]:
        """Sorted indices along ``axis`` of the planes holding a changed voxel."""
        return sorted(int(v) for v in np.unique(self.index[axis]))

    def then(self, later: ChangeSet) -> ChangeSet:
        """This change followed by ``later``: one change set (``later``'s values win)."""
        if self.n_voxels == 0:
            index, values = later.index, later.values
        elif later.n_voxels == 0:
            index, values = self.index, self.values
        else:
            flat = np.concatenate(
                [np.ravel_multi_index(self.index, self.shape), np.ravel_multi_index(later.index, self.shape)]
            )
            vals = np.concatenate([self.values, later.values])
            # keep the last write of each voxel
            uniq, first_in_reversed = np.unique(flat[::-1], return_index=True)
            values = vals[::-1][first_in_reversed]
            index = np.unravel_index(uniq, self.shape)
        what = "; ".join(w for w in (self.what, later.what) if w)
        return ChangeSet(
            self.shape,
            self.objects | later.objects,
            tuple(index),  # type: ignore[arg-type]
            values,
            self.table or later.table,
            what,
        )
