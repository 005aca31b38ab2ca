"""Write the files of one result as a set: all of them or none.

Every file a result consists of (the label map, its JSON sidecar, the PNG
overview, and any later format such as DICOM SEG) is described by an
:class:`OutputFile`: its target path, a function that writes it to a given
temporary path, and a function that verifies what was written. Then
:func:`write_outputs`:

1. checks every target against every input (same file after resolving
   symlinks and hard links: ``st_dev``/``st_ino``), against each other, and
   against existing files (which need ``overwrite``);
2. writes each file to a temporary file in its target folder, flushes and
   fsyncs it, and verifies it (re-read header/data, or byte count);
3. gives it the permissions the user's umask gives a new file;
4. only then renames all of them into place (an overwritten file is kept as
   a hard-linked backup until every rename succeeded, and restored if one
   fails), and fsyncs the folders.

On any failure nothing is left behind: no temporary file and no partial set.
A full disk or an I/O error becomes one :class:`OutputError` line naming the
output (exit code 1).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError

#: write(tmp_path): write the whole file at ``tmp_path`` (a fresh, empty file).
WriteFn = Callable[[Path], None]
#: verify(tmp_path): raise (any exception) if the file at ``tmp_path`` is not right.
VerifyFn = Callable[[Path], None]


@dataclass(frozen=True)
class OutputFile:
    """One file of a result. ``kind`` names it in messages ("label map", "sidecar", ...)."""

    path: Path
    write: WriteFn
    verify: VerifyFn | None = None
    kind: str = "output"


def full_suffix(path: Path) -> str:
    """``.nii.gz`` and ``.seg.nrrd`` count as one suffix; else the last one, lower case."""
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def current_umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)  # follows symlinks: a link to an input is that input
    except OSError:
        return None


def expand_inputs(inputs: Iterable[str | Path | None]) -> list[Path]:
    """The files behind the inputs: a folder (a DICOM series) stands for every file in it."""
    out: list[Path] = []
    for inp in inputs:
        if inp is None:
            continue
        p = Path(inp)
        if p.is_dir():
            out.extend(q for q in p.rglob("*") if q.is_file())
        elif p.exists():
            out.append(p)
    return out


def check_targets(
    paths: Sequence[str | Path], inputs: Iterable[str | Path | None] = (), overwrite: bool = False
) -> list[Path]:
    """Refuse (InputError) any target that is an input, repeats another target,
    is a folder, lies in a folder that cannot be written, or exists without
    ``overwrite``. Run before any work, and again just before writing."""
    targets = [Path(p) for p in paths]
    ids = {}
    for f in expand_inputs(inputs):
        st = _stat(f)
        if st is not None:
            ids[(st.st_dev, st.st_ino)] = f
    seen: dict[Path, Path] = {}
    for t in targets:
        st = _stat(t)
        if st is not None and (st.st_dev, st.st_ino) in ids:
            raise InputError(f"{t}: refusing to overwrite an input file ({ids[(st.st_dev, st.st_ino)]})")
        key = Path(os.path.abspath(t))
        if key in seen:
            raise InputError(f"{t}: the same file is named for two outputs")
        seen[key] = t
        if t.is_dir():
            raise InputError(f"{t}: is a folder; expected a file name")
        if t.exists() and not overwrite:
            raise InputError(f"{t}: output exists; pass --overwrite to replace it")
        parent = t.parent if str(t.parent) else Path(".")
        existing = next((a for a in (parent, *parent.parents) if a.exists()), None)
        if existing is not None and not existing.is_dir():
            raise InputError(f"{existing}: not a folder")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{t}: cannot write into {existing} (permission denied or read-only)")
    return targets


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{full_suffix(path)}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _write_one(out: OutputFile, mode: int) -> Path:
    tmp = _temp_beside(out.path)
    try:
        try:
            out.write(tmp)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - ITK raises RuntimeError on a short write
            raise OSError(
                errno.ENOSPC if _disk_full(tmp.parent) else errno.EIO, " ".join(str(exc).split())[-160:]
            ) from None
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        if out.verify is not None:
            try:
                out.verify(tmp)
            except OSError:
                raise
            except Exception as exc:
                raise OutputError(
                    f"{out.path}: the {out.kind} written does not read back correctly "
                    f"({str(exc)[:120]}); nothing written"
                ) from None
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _install(pairs: list[tuple[OutputFile, Path]]) -> None:
    """Rename each temp file over its target; on a failure undo the ones done."""
    done: list[tuple[Path, Path | None]] = []  # (target, backup of what it replaced)
    try:
        for out, tmp in pairs:
            backup = None
            if out.path.exists():
                backup = _temp_beside(out.path)
                backup.unlink()
                os.link(out.path, backup)
            os.replace(tmp, out.path)
            done.append((out.path, backup))
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)


def write_outputs(
    files: Sequence[OutputFile], inputs: Iterable[str | Path | None] = (), overwrite: bool = False
) -> list[Path]:
    """Write ``files`` as one set (see the module docstring); returns their paths.

    Raises InputError for a target that is an input, exists without
    ``overwrite`` or cannot be written; OutputError (one line naming the
    output) when writing, verifying or renaming fails. Nothing is left behind
    on failure, and existing files that were to be replaced are unchanged.
    """
    files = [OutputFile(Path(f.path), f.write, f.verify, f.kind) for f in files]
    check_targets([f.path for f in files], inputs, overwrite)
    mode = 0o666 & ~current_umask()
    written: list[tuple[OutputFile, Path]] = []
    current: OutputFile | None = None
    try:
        for f in files:
            current = f
            f.path.parent.mkdir(parents=True, exist_ok=True)
            written.append((f, _write_one(f, mode)))
        current = None
        _install(written)
    except OSError as exc:
        raise OutputError(_os_message(exc, current, files)) from None
    finally:
        for _, tmp in written:
            tmp.unlink(missing_ok=True)
    for folder in {f.path.parent for f in files}:
        _fsync_dir(folder)
    return [f.path for f in files]


def _disk_full(folder: Path) -> bool:
    """Whether ``folder``'s file system has (next to) no space left."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _os_message(exc: OSError, current: OutputFile | None, files: Sequence[OutputFile]) -> str:
    what = current or files[0]
    reason = exc.strerror or str(exc)
    if exc.errno is None and _disk_full(what.path.parent):  # e.g. tifffile's short-write OSError
        reason = "no space left on device"
    elif exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif exc.errno == errno.EIO:
        reason = "input/output error"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = "read-only or permission denied"
    return f"{what.path}: cannot write the {what.kind} ({reason}); nothing written"


def bytes_output(path: str | Path, data: bytes, kind: str) -> OutputFile:
    """An output whose whole content is known: written, then verified byte for byte."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    def verify(tmp: Path) -> None:
        size = tmp.stat().st_size
        if size != len(data):
            raise ValueError(f"{size} of {len(data)} bytes")
        if tmp.read_bytes() != data:
            raise ValueError("content differs")

    return OutputFile(Path(path), write, verify, kind)


def json_output(path: str | Path, obj: Any, kind: str = "sidecar") -> OutputFile:
    """A JSON document (indented, UTF-8), verified byte for byte."""
    return bytes_output(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"), kind)


LABEL_ID_MAX = 2**32 - 1


def validated_labels(labels: Any) -> np.ndarray:
    """A label array made safe to write, or InputError.

    labels: (z, y, x) (or (y, x), made (1, y, x)) of bool, integers, or floats
    holding whole numbers. Refused: NaN/inf, fractions, negative ids, ids above
    2**32 - 1, non-numeric types. Returns the smallest unsigned integer dtype
    that holds every id (uint8, uint16 or uint32), values unchanged.
    """
    arr = np.asarray(labels)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"labels of shape {arr.shape}: expected (z, y, x)")
    if arr.size == 0:
        raise InputError(f"labels of shape {arr.shape}: empty")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("labels hold NaN or infinite values; label ids must be whole numbers")
        if not np.all(arr == np.round(arr)):
            raise InputError("labels hold fractional values; label ids must be whole numbers")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels of type {arr.dtype}: expected integers")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InputError(f"labels hold a negative id ({lo:g}); ids must be 0 (background) or positive")
    if hi > LABEL_ID_MAX:
        raise InputError(f"labels hold id {hi:g}, above the largest storable id {LABEL_ID_MAX}")
    dtype = np.uint8 if hi < 2**8 else np.uint16 if hi < 2**16 else np.uint32
    return arr.astype(dtype, copy=False)


def _read_back_label_map(tmp: Path, expected: np.ndarray, geometry) -> None:
    import gzip

    import SimpleITK as sitk

    suf = full_suffix(tmp)
    if suf in (".tif", ".tiff"):
        import tifffile

        got = np.asarray(tifffile.imread(str(tmp)))
        want = expected[0] if expected.shape[0] == 1 else expected
    else:
        if suf.endswith(".gz"):
            with gzip.open(tmp, "rb") as fh:  # a truncated stream raises here
                while fh.read(1 << 22):
                    pass
        img = sitk.ReadImage(str(tmp))
        got, want = sitk.GetArrayFromImage(img), expected
        if not np.allclose(img.GetSpacing()[:3], geometry.spacing[: img.GetDimension()], rtol=1e-5):
            raise ValueError("spacing differs")
        if not np.allclose(img.GetOrigin()[:3], geometry.origin[: img.GetDimension()], atol=1e-4):
            raise ValueError("origin differs")
    if got.shape != want.shape or not np.array_equal(got, want):
        raise ValueError("voxel values differ from what was written")


def label_map_output(path: str | Path, labels: np.ndarray, geometry) -> OutputFile:
    """The label map file: ``labels`` already validated ((z, y, x) unsigned ints),
    written in ``geometry`` (NIfTI/NRRD/MHA) or as TIFF, verified by reading it back."""
    import SimpleITK as sitk

    path = Path(path)

    def write(tmp: Path) -> None:
        if full_suffix(path) in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(str(tmp), labels[0] if labels.shape[0] == 1 else labels)
        else:
            img = geometry.apply_to(sitk.GetImageFromArray(labels))
            sitk.WriteImage(img, str(tmp), useCompression=True)

    return OutputFile(path, write, lambda tmp: _read_back_label_map(tmp, labels, geometry), "label map")
