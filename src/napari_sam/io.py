"""Volumes in, label maps out, with their physical geometry.

Arrays are (z, y, x) as SimpleITK and napari give them (2D images are
(1, y, x), RGB adds a trailing channel axis). Geometry is kept in ITK's
physical convention: ``spacing`` and ``origin`` as (x, y, z) in mm, and
``direction`` as the 3x3 matrix whose columns are the array axes x, y, z in
LPS physical space. Label maps are written in exactly the source geometry,
atomically, with a JSON sidecar naming each id.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".tif", ".tiff")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (z, y, x) voxel grid (ITK convention, mm, LPS)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def scale_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order (z, y, x), as napari's layer ``scale``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def affine_zyx(self) -> np.ndarray:
        """4x4 affine from (z, y, x) indices to LPS (x, y, z) mm."""
        m = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a = np.eye(4)
        a[:3, :3] = m[:, ::-1]
        a[:3, 3] = self.origin
        return a

    def to_json(self) -> dict[str, Any]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Geometry:
        return cls(tuple(map(float, d["spacing"])), tuple(map(float, d["origin"])), tuple(map(float, d["direction"])))

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Geometry:
        dim = img.GetDimension()
        sp, org, dr = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
        if dim == 2:
            return cls(
                (sp[0], sp[1], 1.0), (org[0], org[1], 0.0), (dr[0], dr[1], 0.0, dr[2], dr[3], 0.0, 0.0, 0.0, 1.0)
            )
        return cls(tuple(sp), tuple(org), tuple(dr))

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


@dataclass
class Volume:
    """An image with its geometry and metadata.

    array: (z, y, x) or (z, y, x, 3) for RGB; the file's dtype.
    metadata: ``modality`` ("CT", "MR", ... or None), ``dicom_window``
        ((level, width) or None), ``path``, ``is_2d``, ``is_rgb``.
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return bool(self.metadata.get("is_2d", False))

    @property
    def is_rgb(self) -> bool:
        return bool(self.metadata.get("is_rgb", False))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[:3])  # type: ignore[return-value]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _first_value(text: str) -> float | None:
    try:
        return float(text.split("\\")[0].strip())
    except (ValueError, IndexError):
        return None


def _read_dicom_series(folder: Path, series: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    from .dicom_series import check_series, choose_series

    reader = sitk.ImageSeriesReader()
    with _native_stderr_captured():  # ITK/GDCM warnings: our checks say it once, in our words
        uid, files = choose_series(folder, series)
        check_series(files)
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        img = reader.Execute()
    meta: dict[str, Any] = {"dicom_files": len(files), "series_uid": uid}

    def tag(key: str) -> str | None:
        return reader.GetMetaData(0, key).strip() if reader.HasMetaDataKey(0, key) else None

    meta["modality"] = tag("0008|0060") or None
    meta["dicom_file_names"] = list(files)  # in the volume's slice order (DICOM SEG export)
    meta["study_uid"], meta["series_uid"] = tag("0020|000d"), tag("0020|000e")
    c, w = tag("0028|1050"), tag("0028|1051")
    if c and w and _first_value(c) is not None and _first_value(w):
        meta["dicom_window"] = (_first_value(c), _first_value(w))
    return img, meta


def _read_2d(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    suf = _suffix(path)
    if suf in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(str(path))
    else:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    arr = np.asarray(arr)
    rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4
    if rgb:
        arr = arr[..., :3][None]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise InputError(f"{path}: {arr.ndim}D image (shape {arr.shape}); expected a 2D or 3D image")
    return arr, {"is_2d": arr.shape[0] == 1, "is_rgb": rgb}


class _Captured:
    def __init__(self, fh) -> None:
        self._fh = fh

    def read(self) -> str:
        self._fh.seek(0)
        return self._fh.read().decode(errors="replace")


@contextmanager
def _native_stderr_captured():
    """Capture what C++ libraries (ITK's MetaImage) print straight to fd 2, so
    that a user sees our one-line error rather than their dump."""
    fd = 2  # C++ libraries write to fd 2 whatever sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all
        with tempfile.TemporaryFile() as fh:
            yield _Captured(fh)
        return
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as fh:
        try:
            sys.stderr.flush()
            os.dup2(fh.fileno(), fd)
            yield _Captured(fh)
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _itk_reason(message: str) -> str:
    """The informative tail of an ITK exception text, on one line."""
    msg = " ".join(message.split())
    for marker in ("data not read completely", "Reason:", "ITK ERROR:", "Description:"):
        if marker in msg:
            msg = msg[msg.rindex(marker) :]
            break
    return msg[:160]


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (zero-filling): check the
    data the header promises is all there."""
    import gzip

    import nibabel as nib

    log = logging.getLogger("nibabel")
    level = log.level
    try:
        log.setLevel(logging.CRITICAL)  # nibabel logs its own repairs (e.g. zero pixdim): we say it ourselves
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nii = nib.load(str(path))
        hdr = nii.header
    except Exception as exc:
        raise InputError(f"{path}: cannot read image (not a valid NIfTI header: {str(exc)[:120]})") from None
    finally:
        log.setLevel(level)
    pixdim = _raw_pixdim(path, len(hdr.get_data_shape()))
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise InputError(
            f"{path}: voxel spacing {tuple(float(v) for v in pixdim)} in the header: must be positive numbers"
        )
    if 0 in hdr.get_data_shape():
        raise InputError(f"{path}: empty image (shape {hdr.get_data_shape()}: an axis of length 0)")
    _check_not_sheared(path, nii.affine)
    expected = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
    if _suffix(path) == ".nii":
        actual = path.stat().st_size
    else:
        actual = 0
        try:
            with gzip.open(path, "rb") as fh:
                while block := fh.read(1 << 22):
                    actual += len(block)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise InputError(f"{path}: cannot read image (truncated or corrupt file: {exc})") from None
    if actual < expected:
        raise InputError(f"{path}: cannot read image (truncated or corrupt file: {actual} of {expected} bytes)")
    if np.issubdtype(hdr.get_data_dtype(), np.floating) and len(hdr.get_data_shape()) <= 3:
        # ITK's NIfTI reader turns NaN into 0: look at the stored values themselves
        raw = np.asanyarray(nii.dataobj.get_unscaled())
        if not np.all(np.isfinite(raw)):
            raise InputError(f"{path}: image contains NaN or infinite values")


def _raw_pixdim(path: Path, ndim: int) -> np.ndarray:
    """The header's spacing as stored (nibabel repairs zeros to 1 on load)."""
    import gzip

    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(348)
    endian = "<" if int.from_bytes(head[:4], "little") == 348 else ">"
    return np.frombuffer(head[76:108], dtype=f"{endian}f4")[1 : 1 + min(ndim, 3)].astype(np.float64)


def _check_not_sheared(path: Path, affine: np.ndarray) -> None:
    """ITK silently straightens a sheared NIfTI grid; refuse it instead."""
    m = np.asarray(affine, np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms <= 0):
        raise InputError(f"{path}: voxel spacing is zero or not a number")
    unit = m / norms
    gram = unit.T @ unit
    if np.abs(gram - np.eye(3)).max() > 1e-4:
        raise InputError(
            f"{path}: sheared voxel grid (axes not perpendicular); napari-sam would have to "
            "straighten it, which moves the voxels: resample it onto a perpendicular grid first"
        )


def read_image(path: str | Path, series: str | None = None) -> Volume:
    """Read NIfTI, NRRD, MHA/MHD, a DICOM series folder, or PNG/TIFF/JPEG.

    Returns a :class:`Volume` with (z, y, x) array, geometry and metadata.
    Raises InputError (one line) for a missing, unreadable, corrupt, 4D,
    empty, sheared or NaN-holding image, and for an irregular DICOM series or
    a folder of several series unless ``series`` (a SeriesInstanceUID) picks one.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    meta: dict[str, Any] = {"path": str(path), "modality": None, "dicom_window": None}
    try:
        if path.is_dir():
            img, m = _read_dicom_series(path, series)
            meta.update(m)
        elif _suffix(path) in IMAGE_2D_SUFFIXES:
            with _native_stderr_captured():  # libpng/libtiff print their own errors
                arr, m = _read_2d(path)
            meta.update(m)
            return _checked(Volume(arr, Geometry(), meta), path)
        else:
            if not os.access(path, os.R_OK):
                raise InputError(f"{path}: file is not readable (permission denied)")
            if _suffix(path) in (".nii", ".nii.gz"):
                _check_nifti_complete(path)
            with _native_stderr_captured() as native:
                try:
                    img = sitk.ReadImage(str(path))
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc} {native.read()}") from None
            if _suffix(path) == ".dcm" or img.HasMetaDataKey("0008|0060"):
                meta["modality"] = img.GetMetaData("0008|0060").strip() if img.HasMetaDataKey("0008|0060") else None
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{path}: file is not readable (permission denied)") from None
    except Exception as exc:  # SimpleITK raises RuntimeError with a multi-line ITK dump
        raise InputError(
            f"{path}: cannot read image (truncated, corrupt or unsupported file: {_itk_reason(str(exc))})"
        ) from None

    dim = img.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"{path}: {dim}D image (size {img.GetSize()}); expected a 2D or 3D image")
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp not in (1, 3, 4):
        raise InputError(f"{path}: {ncomp} components per voxel; expected scalar or RGB")
    arr = sitk.GetArrayFromImage(img)
    if ncomp > 1:
        arr = arr[..., :3]
    if dim == 2:
        arr = arr[None]
    meta["is_2d"] = dim == 2
    meta["is_rgb"] = ncomp > 1
    return _checked(Volume(arr, Geometry.from_sitk(img), meta), path)


def _checked(vol: Volume, path: Path) -> Volume:
    a = vol.array
    if a.size == 0 or min(a.shape[:3]) == 0:
        raise InputError(f"{path}: empty image (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise InputError(f"{path}: image contains NaN or infinite values")
    sp = np.asarray(vol.geometry.spacing, np.float64)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{path}: voxel spacing {tuple(float(v) for v in sp)} mm: must be positive")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{path}: unsupported voxel type {a.dtype}")
    if a.dtype == bool:
        vol.array = a.astype(np.uint8)
    log.info(
        "read %s: (z, y, x) %s %s, spacing (z, y, x) %s mm, modality %s",
        path,
        vol.array.shape,
        vol.array.dtype,
        tuple(round(float(v), 4) for v in vol.geometry.scale_zyx),
        vol.metadata.get("modality"),
    )
    return vol


def labels_to_sitk(labels: np.ndarray, geometry: Geometry) -> sitk.Image:
    """(z, y, x) integer labels -> sitk.Image with ``geometry``."""
    arr = np.asarray(labels)
    dtype = np.uint8 if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 else np.uint16
    if arr.max(initial=0) > 65535 or arr.min(initial=0) < 0:
        dtype = np.int32
    return geometry.apply_to(sitk.GetImageFromArray(arr.astype(dtype, copy=False)))


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside ``path``, verify it, then rename over it."""
    from .outputs import bytes_output, write_outputs

    write_outputs([bytes_output(path, text.encode("utf-8"), "text file")], overwrite=True)


def sidecar_path(path: str | Path) -> Path:
    """``OUT.nii.gz`` -> ``OUT.json`` (the id -> name/colour map)."""
    path = Path(path)
    suf = _suffix(path)
    return path.with_name(path.name[: -len(suf)] + ".json") if suf else path.with_name(path.name + ".json")


def check_output_path(
    path: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = (), also: tuple[str | Path, ...] = ()
) -> Path:
    """Validate an output path before any work: suffix, folder, no clobbering of
    inputs (symlinks and hard links resolved; a folder input counts with all its
    files); the label map's sidecar and the paths in ``also`` (e.g. an overview)
    are checked with it, and an existing one needs ``overwrite``."""
    from .outputs import check_targets

    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"{path}: output must end in one of {', '.join(LABEL_SUFFIXES)}")
    check_targets([path, sidecar_path(path), *also], inputs, overwrite)
    return path


def sidecar_document(
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar JSON of a (z, y, x) label map: id -> name/colour, geometry, shape."""
    ids = sorted(set(int(i) for i in (names or {}).keys()) | set(int(i) for i in np.unique(labels) if i))
    side = {
        "labels": {
            str(i): {
                "name": (names or {}).get(i, f"object_{i}"),
                "color": list((colors or {}).get(i, default_color(i))),
            }
            for i in ids
        },
        "geometry": geometry.to_json(),
        "shape_zyx": list(labels.shape),
    }
    if extra:
        side.update(extra)
    return side


def write_labels(
    path: str | Path,
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
    inputs: tuple[str | Path, ...] = (),
    more: tuple = (),
) -> Path:
    """Write a label map in ``geometry`` plus a JSON sidecar, as one set.

    labels: (z, y, x) whole numbers 0..2**32-1 (z = 1 for a 2D image); NaN,
    fractions, negative or larger ids raise InputError before anything is
    written. ``.tif`` output writes the 2D (or 3D) array as TIFF;
    NIfTI/NRRD/MHA keep the geometry. The sidecar ``OUT.json`` holds
    ``{"labels": {"1": {"name": ..., "color": [r, g, b]}}, "geometry": ...}``.
    ``more``: further :class:`napari_sam.outputs.OutputFile` s written in the
    same set (e.g. the overview). Files are written by
    :func:`napari_sam.outputs.write_outputs`: checked against ``inputs``,
    verified, renamed together or not at all. Returns the label map's path.
    """
    from .outputs import json_output, label_map_output, validated_labels, write_outputs

    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"{path}: output must end in one of {', '.join(LABEL_SUFFIXES)}")
    labels = validated_labels(labels)
    side = sidecar_document(labels, geometry, names, colors, extra)
    files = [label_map_output(path, labels, geometry), json_output(sidecar_path(path), side), *more]
    write_outputs(files, inputs=inputs, overwrite=overwrite)
    return path


def default_color(label_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per id (golden-angle hues)."""
    import colorsys

    h = (label_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def read_labels_aligned(path: str | Path, reference: Volume) -> np.ndarray:
    """Read a label volume and resample it onto ``reference``'s grid by physical geometry.

    Nearest-neighbour; voxels outside the label volume become 0. Needed when
    the labels are stored on another grid (flipped axes, other origin).
    Returns (z, y, x) integer array of ``reference.shape``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        lab = sitk.ReadImage(str(path))
    except Exception:
        raise InputError(f"{path}: cannot read label image") from None
    ref = reference.geometry.apply_to(sitk.Image(*reversed(reference.shape), sitk.sitkUInt8))
    out = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    return sitk.GetArrayFromImage(out)
