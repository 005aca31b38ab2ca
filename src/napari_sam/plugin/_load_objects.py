"""*Load labels as objects*: an existing segmentation (label map, DICOM SEG,
Slicer ``.seg.nrrd``) into the widget's session, to correct and re-propagate.

The file is put on the image's grid (:func:`napari_sam.init_labels.labels_on_image`:
nearest neighbour in physical space when the grids differ); each label
becomes an object with its name and colour, painted into the labels layer
(one undo step), and every slice holding it is a key slice the user
accepted (as for a labels layer adopted at Start). A label whose id is taken
by an existing object gets the next free id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..annotation import Annotation, ChangeSet
from ..io import Volume


def _image_volume(session: Any) -> Volume:
    """The session's image as a core Volume; a DICOM folder source names its files
    (so a DICOM SEG of this series is placed by its referenced SOP Instance UIDs)."""
    src = session.source
    meta: dict[str, Any] = {"path": session.source_path()}
    p = Path(meta["path"]) if meta["path"] else None
    if p is not None and (p.is_dir() or p.suffix.lower() == ".dcm"):
        import SimpleITK as sitk

        folder = str(p if p.is_dir() else p.parent)
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, s) for s in ids), key=len, default=())
        if len(files) == src.shape[0]:
            meta["dicom_file_names"] = list(files)
    return Volume(src.volume, src.geometry, meta)


def add_label_map(
    model: Annotation,
    labels: np.ndarray,
    names: dict[int, str] | None = None,
    colors: dict[int, tuple[int, int, int]] | None = None,
    what: str = "load labels",
    keep_ids: bool = False,
) -> tuple[ChangeSet, list[int]]:
    """Add each label of the (z, y, x) ``labels`` (and each named id, even without
    pixels) to ``model`` as an object whose slices (along axis 0) are accepted key
    slices, in one undoable step. A label whose id is taken gets the next free id
    (``keep_ids``: taken ids are left out). Returns (the change set, the new ids)."""
    names, colors = names or {}, colors or {}
    present = [int(v) for v in np.unique(labels) if v]
    new_ids: list[int] = []
    with model.batch(what) as step:
        for i in sorted(set(present) | {k for k in names if 1 <= k <= 65535}):
            if i in model and keep_ids:
                continue
            oid = i if i not in model else model.next_id()
            model.add_object(names.get(i), colors.get(i), object_id=oid)
            new_ids.append(oid)
            if i in present:
                mask = labels == i
                model.load_masks(oid, {int(z): mask[z] for z in np.flatnonzero(mask.any(axis=(1, 2)))})
    return step.changes, new_ids


def load_labels_as_objects(session: Any, path: str | Path) -> tuple[list[int], list[str]]:
    """Read ``path`` onto the session's image and add each label as an object.

    Returns (the new object ids, notes for the user, e.g. "resampled").
    Raises InputError (one line) for an unreadable file or one of another study.
    """
    from ..init_labels import labels_on_image, read_segmentation

    image = _image_volume(session)
    notes: list[str] = []
    ls = labels_on_image(read_segmentation(path, image), image, notes)
    lab = np.asarray(ls.labels)
    present = [int(v) for v in np.unique(lab) if v]
    if not present:
        notes.append(f"{path}: no labelled voxel on this image")
        return [], notes
    names = {i: ls.name(i) for i in present}
    colors = {i: ls.color(i) for i in present}
    changes, new_ids = add_label_map(session.model, lab, names, colors, "load labels")
    session.model.select(new_ids[0])
    session.apply(changes)
    session.objects.store_in(session.labels)
    session.objects_changed.emit()
    return new_ids, notes
