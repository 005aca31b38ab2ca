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

from ..io import Volume


def _image_volume(session: Any) -> Volume:
    """The session's image as a core Volume; a DICOM folder source names its files
    (so a DICOM SEG of this series is placed by its referenced SOP Instance UIDs)."""
    src = session.source
    meta: dict[str, Any] = {"path": session._source_path()}
    p = Path(meta["path"]) if meta["path"] else None
    if p is not None and (p.is_dir() or p.suffix.lower() == ".dcm"):
        import SimpleITK as sitk

        folder = str(p if p.is_dir() else p.parent)
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        files = max(
            (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, s) for s in ids),
            key=len,
            default=(),
        )
        if len(files) == src.shape[0]:
            meta["dicom_file_names"] = list(files)
    return Volume(src.volume, src.geometry, meta)


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
    before = session.objects.snapshot()
    taken = {o.id for o in session.objects}
    new_ids, paint = [], np.zeros(lab.shape, np.uint16)
    for i in present:
        oid = i if i not in taken else session.objects.next_id()
        obj = session.objects.add(ls.name(i), object_id=oid, color=ls.color(i))
        taken.add(oid)
        new_ids.append(oid)
        mask = lab == i
        paint[mask] = oid
        if not session.source.is_2d:
            obj.state = session._adopted_state(mask)
    layer_paint = paint[0] if session.source.is_2d else paint
    idx = np.nonzero(layer_paint)
    session._write(
        lambda: session.labels.data_setitem(idx, layer_paint[idx]), before, "load labels"
    )
    session.objects.current_id = new_ids[0]
    session.objects.store_in(session.labels)
    session.objects_changed.emit()
    return new_ids, notes
