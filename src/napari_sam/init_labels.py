"""Existing segmentations in: a label map, a DICOM SEG or a Slicer ``.seg.nrrd``
as objects to refine (``napari-sam segment IMAGE --init LABELS``).

:func:`read_segmentation` reads any of the three into a :class:`LabelSet`;
:func:`labels_on_image` puts it on the image's grid (nearest neighbour, in
physical space, when the grids differ, with a note saying so); and
:func:`init_objects` turns each label into an object whose slices holding it
are key slices (masks taken as they are, like masks the user painted),
combined with an optional prompts file:

1. every label becomes an object: id = label value, name and colour from
   the file;
2. an object of the prompts file with the same id corrects it: its prompts
   replace the label's mask on their slices (only negative clicks: the
   object is absent there, a stop slice), and its options (``propagate``,
   ``axis``, ``range``, ``window``, and ``name``/``color`` when given) apply;
3. objects of the prompts file with other ids are new objects;
4. an object with ``"propagate": true`` is propagated from all its key
   slices (the label's slices and the prompts): into gaps and outwards past
   the labelled extent until a stop rule or its range says stop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .io import Geometry, Volume, sidecar_path
from .labelset import LabelSet
from .prompts import ObjectPrompts, PromptsFile

#: how far (mm, and fraction for directions) two grids may differ and still count as the same grid
_TOL_MM = 1e-3


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_plain(path: Path) -> LabelSet:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read the label map (not a readable NIfTI/NRRD/MHA file)") from None
    if img.GetDimension() not in (2, 3) or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 2D or 3D scalar label map")
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 2:
        arr = arr[None]
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{path}: a label map holds whole numbers; this one has fractions")
        arr = arr.astype(np.int32)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
        raise InputError(f"{path}: label values must lie in 0..65535")
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int]] = {}
    side = sidecar_path(path)
    if side.is_file():  # our own sidecar, or a TotalSegmentator-style {"5": "liver"} map
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        table = data.get("labels", data) if isinstance(data, dict) else {}
        for k, v in table.items() if isinstance(table, dict) else []:
            if str(k).isdigit():
                names[int(k)] = str(v.get("name", f"object_{k}")) if isinstance(v, dict) else str(v)
                if isinstance(v, dict) and isinstance(v.get("color"), list):
                    rgb = tuple(int(c) for c in v["color"][:3])
                    colors[int(k)] = rgb  # type: ignore[assignment]
    return LabelSet(arr.astype(np.uint16), Geometry.from_sitk(img), names, colors, {"path": str(path)})


def read_segmentation(path: str | Path, image: Volume | None = None) -> LabelSet:
    """Read a DICOM SEG, a Slicer ``.seg.nrrd`` or a label map (NIfTI, NRRD,
    MHA; names from a JSON sidecar ``LABELS.json`` when there is one) into a
    :class:`LabelSet` (labels (z, y, x), ids, names, colours, its own grid).

    image: for a DICOM SEG of that very series, its frames are placed by
    their referenced SOP Instance UIDs.
    """
    from .dicom_seg import read_dicom_seg
    from .slicer_seg import is_slicer_seg, read_slicer_seg

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if is_slicer_seg(path):
        return read_slicer_seg(path)
    if _is_dicom_file(path):
        return read_dicom_seg(path, image)
    return _read_plain(path)


def _same_grid(a: Geometry, shape_a: tuple[int, ...], b: Geometry, shape_b: tuple[int, ...]) -> bool:
    return (
        tuple(shape_a) == tuple(shape_b)
        and np.allclose(a.spacing, b.spacing, atol=_TOL_MM)
        and np.allclose(a.origin, b.origin, atol=_TOL_MM)
        and np.allclose(a.direction, b.direction, atol=1e-5)
    )


def _check_series(labels: LabelSet, image: Volume, notes: list[str]) -> None:
    """A DICOM SEG must belong to the image's study; another series is resampled with a note."""
    from .dicom_seg import is_dicom_series, source_headers

    seg_study, seg_series = labels.metadata.get("study_uid"), labels.metadata.get("series_uid")
    if not seg_series:
        return
    where = labels.metadata.get("path", "the SEG")
    if not is_dicom_series(image):
        notes.append(f"{where}: DICOM SEG of series {seg_series} placed on a non-DICOM image by physical position")
        return
    ds0 = source_headers(image)[0][0]
    study, series = str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    if seg_study and seg_study != study:
        raise InputError(
            f"{where}: the SEG belongs to study {seg_study}, the image to study {study}; "
            "refusing to put another study's segmentation on this image"
        )
    if seg_series != series:
        notes.append(
            f"{where}: the SEG references series {seg_series}, the image is series {series} of the "
            "same study: resampled onto the image's grid by physical position (nearest neighbour)"
        )


def labels_on_image(labels: LabelSet, image: Volume, notes: list[str] | None = None) -> LabelSet:
    """``labels`` on ``image``'s grid: unchanged when the grids match, else
    resampled by physical position (nearest neighbour; outside -> 0).

    notes: gets a line when resampling happened. Raises InputError when a
    DICOM SEG belongs to another study, or when no labelled voxel lands on
    the image.
    """
    notes = notes if notes is not None else []
    _check_series(labels, image, notes)
    lab = np.asarray(labels.labels)
    if _same_grid(labels.geometry, lab.shape, image.geometry, image.shape):
        return LabelSet(
            lab.astype(np.uint16, copy=False),
            image.geometry,
            dict(labels.names),
            dict(labels.colors),
            dict(labels.metadata),
        )
    src = labels.geometry.apply_to(sitk.GetImageFromArray(lab.astype(np.uint16, copy=False)))
    ref = image.geometry.apply_to(sitk.Image(*reversed(image.shape), sitk.sitkUInt16))
    out = sitk.GetArrayFromImage(
        sitk.Resample(src, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    )
    if lab.any() and not out.any():
        raise InputError(
            f"{labels.metadata.get('path', 'the labels')}: no labelled voxel lies inside the image "
            "(different physical space: another patient or frame of reference?)"
        )
    notes.append(
        f"{labels.metadata.get('path', 'labels')}: grid {lab.shape[::-1]} (x, y, z) differs "
        f"from the image's {image.shape[::-1]}: resampled onto the image's grid "
        "(nearest neighbour, physical space)"
    )
    return LabelSet(out, image.geometry, dict(labels.names), dict(labels.colors), dict(labels.metadata))


def _slices_of(mask: np.ndarray, axis: int) -> dict[int, np.ndarray]:
    """slice index -> (rows, cols) bool mask, for each slice along ``axis`` holding the object."""
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return {int(z): np.take(mask, z, axis=axis).copy() for z in present}


def init_objects(
    labels: LabelSet, prompts: PromptsFile | None = None
) -> tuple[PromptsFile, dict[int, dict[int, np.ndarray]]]:
    """Combine labels on the image grid with an optional prompts file (rules: module docstring).

    Returns (prompts, masks): the objects to segment, and id -> {slice ->
    (rows, cols) bool mask along the object's axis} for the key slices
    taken from the labels (slices the prompts file prompts are left out:
    the prompt wins there).
    """
    given = {o.id: o for o in (prompts.objects if prompts else [])}
    objects: list[ObjectPrompts] = []
    masks: dict[int, dict[int, np.ndarray]] = {}
    lab = np.asarray(labels.labels)
    for i in sorted(int(v) for v in np.unique(lab) if v):  # named labels absent from the image are left out
        obj = given.pop(i, None)
        if obj is None:
            obj = ObjectPrompts(id=i, name=labels.name(i), prompts=[], color=labels.color(i))
        else:
            if obj.name == f"object_{i}":
                obj.name = labels.name(i)
            if obj.color is None:
                obj.color = labels.color(i)
        prompted = {p.slice if p.slice is not None else 0 for p in obj.prompts}
        masks[i] = {z: m for z, m in _slices_of(lab == i, obj.axis).items() if z not in prompted}
        objects.append(obj)
    objects += [o for o in (prompts.objects if prompts else []) if o.id in given]
    if not objects:
        raise InputError(
            f"{labels.metadata.get('path', 'the labels')}: no labelled voxel and no prompts: nothing to segment"
        )
    for o in objects:
        if not o.prompts and not masks.get(o.id):
            raise InputError(f"object {o.id} ({o.name}): no prompts and no labelled voxel on the image")
    return PromptsFile(objects=objects, window=prompts.window if prompts else None), masks


def init_summary(labels: LabelSet) -> dict[str, Any]:
    """A JSON-able line for the sidecar: where the initial labels came from and their objects."""
    return {"path": labels.metadata.get("path"), "objects": {str(i): labels.name(i) for i in labels.ids()}}
