"""Volumes in, label maps out, with their physical geometry.

Arrays are (z, y, x) as SimpleITK and napari give them (2D images are
(1, y, x), RGB adds a trailing channel axis). Geometry is kept in ITK's
physical convention: ``spacing`` and ``origin`` as (x, y, z) in mm, and
``direction`` as the 3x3 matrix whose columns are the array axes x, y, z in
LPS physical space. Label maps are written in exactly the source geometry,
atomically, with a JSON sidecar naming each id.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from .errors import InputError

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
        return cls(tuple(map(float, d["spacing"])), tuple(map(float, d["origin"])),
                   tuple(map(float, d["direction"])))

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Geometry:
        dim = img.GetDimension()
        sp, org, dr = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
        if dim == 2:
            return cls((sp[0], sp[1], 1.0), (org[0], org[1], 0.0),
                       (dr[0], dr[1], 0.0, dr[2], dr[3], 0.0, 0.0, 0.0, 1.0))
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


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, dict[str, Any]]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    img = reader.Execute()
    meta: dict[str, Any] = {"dicom_files": len(files)}

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
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured)
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
            msg = msg[msg.rindex(marker):]
            break
    return msg[:160]


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (zero-filling): check the
    data the header promises is all there."""
    import gzip

    import nibabel as nib

    try:
        nii = nib.load(str(path))
        hdr = nii.header
    except Exception as exc:
        raise InputError(f"{path}: cannot read image (not a valid NIfTI header: {str(exc)[:120]})") from None
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


def read_image(path: str | Path) -> Volume:
    """Read NIfTI, NRRD, MHA/MHD, a DICOM series folder, or PNG/TIFF/JPEG.

    Returns a :class:`Volume` with (z, y, x) array, geometry and metadata.
    Raises InputError (one line) for a missing, unreadable, corrupt, 4D,
    empty or NaN-holding image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    meta: dict[str, Any] = {"path": str(path), "modality": None, "dicom_window": None}
    try:
        if path.is_dir():
            img, m = _read_dicom_series(path)
            meta.update(m)
        elif _suffix(path) in IMAGE_2D_SUFFIXES:
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
        raise InputError(f"{path}: cannot read image (truncated, corrupt or unsupported file: "
                         f"{_itk_reason(str(exc))})") from None

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
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{path}: unsupported voxel type {a.dtype}")
    if a.dtype == bool:
        vol.array = a.astype(np.uint8)
    return vol


def labels_to_sitk(labels: np.ndarray, geometry: Geometry) -> sitk.Image:
    """(z, y, x) integer labels -> sitk.Image with ``geometry``."""
    arr = np.asarray(labels)
    dtype = np.uint8 if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 else np.uint16
    if arr.max(initial=0) > 65535 or arr.min(initial=0) < 0:
        dtype = np.int32
    return geometry.apply_to(sitk.GetImageFromArray(arr.astype(dtype, copy=False)))


def _current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_target(path: Path) -> Path:
    """An empty temporary file beside ``path`` with the mode a new file gets (0666 less the umask;
    mkstemp's 0600 would survive the rename)."""
    suf = _suffix(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suf}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside ``path``, then rename over it."""
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sidecar_path(path: str | Path) -> Path:
    """``OUT.nii.gz`` -> ``OUT.json`` (the id -> name/colour map)."""
    path = Path(path)
    suf = _suffix(path)
    return path.with_name(path.name[: -len(suf)] + ".json") if suf else path.with_name(path.name + ".json")


def check_output_path(path: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Validate an output path before any work: suffix, folder, no clobbering of inputs."""
    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"{path}: output must end in one of {', '.join(LABEL_SUFFIXES)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path.parent}: not a folder")
    for inp in inputs:
        if Path(inp).exists() and path.exists() and path.resolve() == Path(inp).resolve():
            raise InputError(f"{path}: refusing to overwrite an input file")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists; pass --overwrite to replace it")
    return path


def write_labels(path: str | Path, labels: np.ndarray, geometry: Geometry,
                 names: Mapping[int, str] | None = None,
                 colors: Mapping[int, tuple[int, int, int]] | None = None, overwrite: bool = False,
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write a label map in ``geometry`` plus a JSON sidecar, atomically.

    labels: (z, y, x) integer array (z = 1 for a 2D image). ``.tif`` output
    writes the 2D (or 3D) array as TIFF; NIfTI/NRRD/MHA keep the geometry.
    Returns the path written. The sidecar ``OUT.json`` holds
    ``{"labels": {"1": {"name": ..., "color": [r, g, b]}}, "geometry": ...}``.
    """
    path = check_output_path(path, overwrite)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise InputError(f"labels of shape {labels.shape}: expected (z, y, x)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    try:
        if _suffix(path) in (".tif", ".tiff"):
            import tifffile

            data = labels[0] if labels.shape[0] == 1 else labels
            tifffile.imwrite(str(tmp), data.astype(np.uint16 if data.max(initial=0) > 255 else np.uint8))
        else:
            sitk.WriteImage(labels_to_sitk(labels, geometry), str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    ids = sorted(set(int(i) for i in (names or {}).keys()) | set(int(i) for i in np.unique(labels) if i))
    side = {
        "labels": {str(i): {"name": (names or {}).get(i, f"object_{i}"),
                            "color": list((colors or {}).get(i, default_color(i)))} for i in ids},
        "geometry": geometry.to_json(),
        "shape_zyx": list(labels.shape),
    }
    if extra:
        side.update(extra)
    atomic_write_text(sidecar_path(path), json.dumps(side, indent=2))
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
