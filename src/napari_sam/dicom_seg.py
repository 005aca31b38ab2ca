"""DICOM Segmentation objects (SEG) out and in, with highdicom.

Out: a label map segmented on a DICOM series becomes one SEG file that
references the series (Study, Series and each frame's SOP Instance UID), one
segment per object with its name, recommended display colour (CIELab), the
algorithm (napari-sam, its version, the model) and a SNOMED CT category and
type (:mod:`napari_sam.anatomy_codes`). Encoding: BINARY by default (one
bit per voxel, one frame per slice and segment, empty frames left out;
segments numbered 1..N), which every SEG-aware viewer and validator reads;
LABELMAP on request where the installed highdicom has it (the 2024 Label Map
Segmentation SOP class: one frame per slice, pixel value = object id; the
dicom3tools validator of Debian 12 does not know it yet).

In: any SEG (LABELMAP or BINARY) becomes a :class:`LabelSet` on the SEG's own
grid, with names and colours; :mod:`napari_sam.init_labels` resamples it onto
an image.

Arrays are (z, row, col); z follows the source series' slice order as read
by :func:`napari_sam.io.read_image` (SimpleITK's, by position).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .anatomy_codes import code_for_name
from .errors import InputError
from .io import Geometry, Volume, default_color
from .labelset import LabelSet
from .outputs import OutputFile, write_outputs

SEG_SUFFIX = ".dcm"
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_series(volume: Volume) -> bool:
    """Whether ``volume`` was read from a DICOM series (so a SEG can reference it)."""
    return bool(volume.metadata.get("dicom_file_names"))


def check_dicom_source(volume: Volume, out: str | Path) -> None:
    """Raise InputError (one line, why) when ``volume`` is not a DICOM series."""
    if not is_dicom_series(volume):
        src = volume.metadata.get("path", "the input")
        raise InputError(
            f"{out}: DICOM SEG output needs a DICOM series as input (a valid SEG references the "
            f"source images' Study, Series and SOP Instance UIDs); {src} is not one: write "
            ".nii.gz, .nrrd, .mha or .seg.nrrd instead"
        )


def _segmentation_type(hd, encoding: str) -> Any:
    """BINARY, or LABELMAP when asked for and the installed highdicom has it."""
    values = hd.seg.SegmentationTypeValues
    if encoding.upper() not in ("BINARY", "LABELMAP"):
        raise InputError(f"DICOM SEG encoding {encoding!r}: expected BINARY or LABELMAP")
    if encoding.upper() == "LABELMAP" and not hasattr(values, "LABELMAP"):
        raise InputError(f"this highdicom ({hd.__version__}) cannot write LABELMAP DICOM SEG; use BINARY")
    return getattr(values, encoding.upper())


def _renumbered(labels: np.ndarray, ids: list[int], names: dict, colors: dict, notes: list[str]):
    """BINARY needs segment numbers 1..N: map the ids onto them (names and colours follow)."""
    if ids == list(range(1, len(ids) + 1)):
        return labels, ids, names, colors
    lut = np.zeros(max(ids) + 1, np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1)
    notes.append(
        "BINARY DICOM SEG numbers segments 1..N: object ids "
        + ", ".join(f"{i}->{n}" for n, i in enumerate(ids, 1) if i != n)
    )
    new_names = {n: names[i] for n, i in enumerate(ids, 1) if i in names}
    new_colors = {n: colors[i] for n, i in enumerate(ids, 1) if i in colors}
    return lut[labels], list(range(1, len(ids) + 1)), new_names, new_colors


def _fill_uid(datasets: list, attr: str, notes: list[str]) -> None:
    """Give every dataset the series' ``attr`` (Study/Series Instance UID): the
    one value the others carry, else a UID derived from the frames' SOP
    Instance UIDs (the same for the same series, so SEGs of it still match)."""
    from pydicom.uid import generate_uid

    values = {str(ds.get(attr, "") or "") for ds in datasets} - {""}
    if len(values) > 1:
        raise InputError(f"the DICOM files hold {len(values)} different {attr}s; expected one series")
    if values and all(ds.get(attr) for ds in datasets):
        return
    uid = (
        values.pop()
        if values
        else generate_uid(
            entropy_srcs=[attr, str(datasets[0].get("FrameOfReferenceUID", ""))]
            + sorted(str(ds.SOPInstanceUID) for ds in datasets)
        )
    )
    for ds in datasets:
        setattr(ds, attr, uid)
    if not values:
        notes.append(
            f"the source series has no {attr} (anonymised?); the SEG references {uid}, "
            "derived from "
            "its images' SOP Instance UIDs, which a PACS will not link to the original study"
        )


def source_headers(volume: Volume) -> tuple[list, list[str]]:
    """The source series' DICOM headers (pydicom datasets, no pixels) in slice
    order, with missing SOP Instance/Class UIDs taken from each file's meta
    header and missing Study/Series UIDs filled (:func:`_fill_uid`), and the
    notes saying what was filled. The files are not changed."""
    import pydicom

    datasets, notes = [], []
    for f in volume.metadata["dicom_file_names"]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
            ("SOPClassUID", "MediaStorageSOPClassUID"),
        ):
            if not ds.get(attr):
                value = meta.get(meta_attr) if meta is not None else None
                if not value:
                    raise InputError(f"{f}: no {attr}; a DICOM SEG cannot reference this image")
                setattr(ds, attr, value)
        datasets.append(ds)
    _fill_uid(datasets, "StudyInstanceUID", notes)
    _fill_uid(datasets, "SeriesInstanceUID", notes)
    return datasets, notes


def _source_datasets(volume: Volume, labels: np.ndarray) -> tuple[list, list[str]]:
    datasets, notes = source_headers(volume)
    if len(datasets) != labels.shape[0]:
        raise InputError(f"label map has {labels.shape[0]} slice(s) but the DICOM series {len(datasets)}")
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if (rows, cols) != tuple(labels.shape[1:]):
        raise InputError(f"label map slices are {labels.shape[1:]} but the DICOM images {(rows, cols)}")
    return datasets, notes


def _segment_descriptions(
    hd,
    ids: list[int],
    names: Mapping[int, str],
    colors: Mapping[int, tuple[int, int, int]],
    model: str | None,
    algorithm_type: str,
):
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-sam",
        version=__version__,
        family=codes.cid7162.ArtificialIntelligence,
        source="napari-sam",
        parameters={"model": model} if model else None,
    )
    out = []
    for i in ids:
        name = names.get(i) or f"object_{i}"
        code = code_for_name(name)
        rgb = tuple(int(v) for v in (colors.get(i) or default_color(i))[:3])
        out.append(
            hd.seg.SegmentDescription(
                segment_number=i,
                segment_label=name[:64],
                segmented_property_category=hd.sr.CodedConcept(code.category[0], code.scheme, code.category[1]),
                segmented_property_type=hd.sr.CodedConcept(code.type[0], code.scheme, code.type[1]),
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    return out


def _segments_of(
    labels: np.ndarray, names: Mapping[int, str] | None, colors: Mapping[int, tuple[int, int, int]] | None
):
    """The segment numbers (ids in the labels or named), each with a name and a colour.
    Raises InputError when there is none or one is outside 1..65535."""
    names, colors = dict(names or {}), dict(colors or {})
    ids = sorted({int(i) for i in np.unique(labels) if i} | {int(i) for i in names})
    if not ids:
        raise InputError("the segmentation is empty: a DICOM SEG needs at least one segment")
    if ids[0] < 1 or ids[-1] > 65535:
        raise InputError(f"object ids {ids[0]}..{ids[-1]}: a DICOM SEG segment number must be in 1..65535")
    names = {i: names.get(i) or f"object_{i}" for i in ids}
    colors = {i: tuple(colors.get(i) or default_color(i))[:3] for i in ids}
    return ids, names, colors


def build_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model: str | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
    encoding: str = "BINARY",
):
    """The highdicom ``Segmentation`` for a (z, row, col) label map segmented on ``volume``.

    ids are segment numbers (1..65535). encoding: "BINARY" (one bit per
    voxel per segment frame; read by every SEG-aware viewer and validator)
    numbers segments 1..N (other ids are mapped onto them, with a note);
    "LABELMAP" (one frame per slice, the 2024 Label Map Segmentation SOP
    class) keeps the ids.
    algorithm_type: "SEMIAUTOMATIC" (prompted) or "AUTOMATIC".
    Returns (segmentation, notes): notes say which missing source UIDs were
    filled and which ids were renumbered.
    """
    import highdicom as hd

    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    datasets, notes = _source_datasets(volume, labels)
    ids, names, colors = _segments_of(labels, names, colors)
    seg_type = _segmentation_type(hd, encoding)
    if seg_type.value == "BINARY":
        labels, ids, names, colors = _renumbered(labels, ids, names, colors, notes)
    pixels = labels.astype(np.uint8 if ids[-1] < 256 else np.uint16)
    ds0 = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=_segment_descriptions(hd, ids, names, colors, model, algorithm_type),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(ds0, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-sam",
        manufacturer_model_name=f"napari-sam {model}" if model else "napari-sam",
        software_versions=__version__,
        device_serial_number="1",
        series_description="napari-sam segmentation",
        content_label="NAPARI_SAM",
        content_description=f"napari-sam segmentation ({model or 'SAM'})",
        omit_empty_frames=True,
    )
    return seg, notes


def dicom_seg_output(
    path: str | Path,
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model: str | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
    notes: list[str] | None = None,
    encoding: str = "BINARY",
) -> OutputFile:
    """``labels`` (z, row, col; ids as segment numbers) as one DICOM SEG file at
    ``path``: the :class:`~napari_sam.outputs.OutputFile` that writes it and
    verifies it voxel for voxel, for :func:`~napari_sam.outputs.write_outputs`.

    ``volume`` must have been read from a DICOM series (InputError
    otherwise). notes: a list that gets one line per source UID that had to
    be filled (an anonymised series); print them for the user.
    """
    path = Path(path)
    check_dicom_source(volume, path)
    seg, filled = build_dicom_seg(labels, volume, names, colors, model, algorithm_type, encoding)
    if notes is not None:
        notes.extend(filled)
    expected = np.asarray(labels).reshape((-1,) + tuple(np.shape(labels)[-2:]))
    ids = sorted({int(i) for i in np.unique(expected) if i} | {int(i) for i in (names or {})})
    if seg.SegmentationType == "BINARY" and ids != list(range(1, len(ids) + 1)):
        expected = _renumbered(expected, ids, {}, {}, [])[0]

    def verify(tmp: Path) -> None:
        back = read_dicom_seg(tmp, volume)
        if back.labels.shape != expected.shape or not np.array_equal(back.labels, expected):
            raise ValueError("the DICOM SEG read back differs from the label map")

    return OutputFile(path, lambda tmp: seg.save_as(str(tmp)), verify, "DICOM SEG")


def write_dicom_seg(
    path: str | Path,
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model: str | None = None,
    overwrite: bool = False,
    algorithm_type: str = "SEMIAUTOMATIC",
    notes: list[str] | None = None,
    encoding: str = "BINARY",
) -> Path:
    """Write :func:`dicom_seg_output` atomically (temporary file beside it,
    fsync, read back and compared voxel for voxel, rename). Returns ``path``."""
    out = dicom_seg_output(path, labels, volume, names, colors, model, algorithm_type, notes, encoding)
    write_outputs([out], overwrite=overwrite)
    return out.path


def _segment_info(seg) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    names, colors = {}, {}
    for n in seg.segment_numbers:
        desc = seg.get_segment_description(n)
        names[int(n)] = str(desc.segment_label)
        lab = getattr(desc, "RecommendedDisplayCIELabValue", None)
        if lab is not None:
            import highdicom as hd

            colors[int(n)] = tuple(int(v) for v in hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True))
        else:
            colors[int(n)] = default_color(int(n))
    return names, colors


def _geometry_from_affine(affine: np.ndarray) -> Geometry:
    """highdicom's 4x4 affine ((slice, row, col) index -> LPS mm) -> our Geometry."""
    cols = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]  # x (col), y (row), z (slice) axes
    spacing = tuple(float(np.linalg.norm(c)) for c in cols)
    direction = np.stack([c / s for c, s in zip(cols, spacing)], axis=1)
    return Geometry(spacing, tuple(float(v) for v in affine[:3, 3]), tuple(float(v) for v in direction.ravel()))


def _volume_array(seg) -> tuple[np.ndarray, Geometry]:
    vol = seg.get_volume(combine_segments=True, relabel=False, skip_overlap_checks=True)
    arr = np.asarray(vol.array)
    affine = np.asarray(vol.affine, dtype=np.float64)
    if arr.ndim == 4:  # a trailing channel axis of one
        arr = arr[..., 0]
    # highdicom may order the slice axis either way; make its step along +normal of the rows/cols
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    if np.dot(affine[:3, 0], normal) < 0 and arr.shape[0] > 1:
        arr = arr[::-1]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (arr.shape[0] - 1)
        affine[:3, 0] = -affine[:3, 0]
    return arr, _geometry_from_affine(affine)


def read_dicom_seg(path: str | Path, volume: Volume | None = None) -> LabelSet:
    """Read a DICOM SEG file into a :class:`LabelSet` (labels (z, row, col), ids = segment numbers).

    With ``volume`` (a DICOM series every frame of the SEG refers to), the
    label map is on the volume's grid, frame by frame through the referenced
    SOP Instance UIDs; otherwise on the SEG's own grid (its frames' plane
    positions). Overlapping segments (other tools' BINARY SEGs): the highest
    segment number wins a voxel. metadata: ``study_uid``, ``series_uid`` (referenced),
    ``referenced_sop_uids``, ``segmentation_type``.
    """
    import highdicom as hd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # not DICOM, or not a SEG
        raise InputError(f"{path}: not a readable DICOM SEG ({str(exc).splitlines()[0][:120]})") from None
    refs = seg.get_source_image_uids()
    meta: dict[str, Any] = {
        "study_uid": str(seg.StudyInstanceUID),
        "series_uid": str(refs[0][1]) if refs else None,
        "referenced_sop_uids": [str(r[2]) for r in refs],
        "segmentation_type": str(seg.SegmentationType),
        "path": str(path),
    }
    names, colors = _segment_info(seg)
    own = _sop_uids(volume) if volume is not None and is_dicom_series(volume) else None
    if own is not None and set(meta["referenced_sop_uids"]) <= set(own):
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=own,
            combine_segments=True,
            relabel=False,
            skip_overlap_checks=True,
            assert_missing_frames_are_empty=True,
        )
        return LabelSet(np.asarray(arr), volume.geometry, names, colors, meta)
    try:
        arr, geom = _volume_array(seg)
    except Exception as exc:
        raise InputError(f"{path}: the SEG's frames do not form a regular volume ({str(exc)[:120]})") from None
    return LabelSet(arr, geom, names, colors, meta)


def _sop_uids(volume: Volume) -> list[str]:
    """SOP Instance UIDs of the volume's DICOM files, in slice order."""
    return [str(ds.SOPInstanceUID) for ds in source_headers(volume)[0]]
