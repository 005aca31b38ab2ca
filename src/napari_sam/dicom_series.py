"""Choose and check a DICOM series before reading it as a volume.

A folder may hold several series, and a series may be irregular: a slice
missing, duplicated or shifted, a file that cannot be read, slices of other
sizes or orientations. ITK reads all of these as a uniform grid (with at most
a two-line warning), so prompt slice indices would point at other anatomy.
Here every such series is refused with one line saying what and where.

Positions are in mm (LPS, DICOM's ImagePositionPatient); a slice's place in
the stack is its position projected on the normal of its orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

#: relative tolerance on the spacing between neighbouring slices
SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class SliceHeader:
    """What one file of a series says about its place: position (x, y, z) mm,
    orientation (row dir, col dir), size (rows, cols), and whether its pixel
    data is all there (uncompressed data shorter than promised is not)."""

    path: Path
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    size: tuple[int, int]


def _numbers(text: str | None, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in (text or "").split("\\"))
    except ValueError:
        return None
    return vals if len(vals) == n and all(np.isfinite(vals)) else None


def _transfer_syntax(path: Path) -> str | None:
    """The TransferSyntaxUID (0002,0010) from the file meta header, None if not found."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    at = head.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return None
    n = int.from_bytes(head[at + 6 : at + 8], "little")
    return head[at + 8 : at + 8 + n].decode("ascii", "replace").rstrip("\0 ")


def _uncompressed(syntax: str | None) -> bool:
    return syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def read_header(path: Path) -> SliceHeader:
    """The header of one slice file; InputError when it cannot be read or lacks
    position/orientation, or its (uncompressed) pixel data is truncated."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.LoadPrivateTagsOff()
    try:
        r.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: unreadable DICOM slice (corrupt or not DICOM)") from None

    def tag(key: str) -> str | None:
        return r.GetMetaData(key).strip() if r.HasMetaDataKey(key) else None

    pos, ori = _numbers(tag("0020|0032"), 3), _numbers(tag("0020|0037"), 6)
    if pos is None or ori is None:
        raise InputError(f"{path}: DICOM slice without a readable position or orientation")
    size = tuple(int(v) for v in r.GetSize()[:2])
    bits = int(tag("0028|0100") or 16)
    samples = int(tag("0028|0002") or 1)
    if _uncompressed(_transfer_syntax(path)):
        need = size[0] * size[1] * samples * max(1, bits // 8)
        if path.stat().st_size < need:
            raise InputError(
                f"{path}: truncated DICOM slice ({path.stat().st_size} bytes, its pixels alone need {need})"
            )
    return SliceHeader(path, pos, ori, size)  # type: ignore[arg-type]


def list_series(folder: Path) -> dict[str, list[str]]:
    """Series UID -> its files (GDCM's order) for every series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    return {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))}


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def choose_series(folder: Path, series: str | None = None) -> tuple[str, list[str]]:
    """(UID, files) of the one series to read: the only one, or ``series``.

    Several series without ``series`` -> InputError listing them; a file with
    a DICOM preamble that belongs to no series -> InputError naming it.
    """
    all_series = list_series(folder)
    if not all_series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    if series is not None:
        if series not in all_series:
            raise InputError(
                f"{folder}: no series {series!r} here; series: "
                + "; ".join(f"{u} ({len(f)} files)" for u, f in all_series.items())
            )
        uid = series
    elif len(all_series) > 1:
        raise InputError(
            f"{folder}: {len(all_series)} DICOM series in this folder; pick one with --series UID: "
            + "; ".join(f"{u} ({len(f)} files)" for u, f in all_series.items())
        )
    else:
        uid = next(iter(all_series))
    used = {Path(f).resolve() for files in all_series.values() for f in files}
    stray = sorted(p for p in folder.iterdir() if p.is_file() and p.resolve() not in used and _looks_like_dicom(p))
    if stray:
        raise InputError(
            f"{stray[0]}: unreadable DICOM slice (corrupt or truncated; {len(stray)} such file(s) in {folder})"
        )
    return uid, all_series[uid]


def check_series(files: list[str]) -> None:
    """Check a series' slices form one uniform grid (files in any order).

    Raises InputError (what and where) for mixed sizes or orientations,
    duplicate positions, slices off the stack's axis, or uneven spacing
    (a missing or shifted slice).
    """
    heads = [read_header(Path(f)) for f in files]
    first = heads[0]
    for h in heads[1:]:
        if h.size != first.size:
            raise InputError(f"{h.path}: slice of size {h.size} in a series of {first.size} slices")
        if not np.allclose(h.orientation, first.orientation, atol=1e-4):
            raise InputError(f"{h.path}: slice orientation differs from the rest of the series")
    if len(heads) < 2:
        return
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    pos = np.asarray([h.position for h in heads])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    heads = [heads[i] for i in order]
    along, pos = along[order], pos[order]
    steps = np.diff(along)
    for k, s in enumerate(steps):
        if s < 1e-4:
            raise InputError(
                f"{heads[k + 1].path}: duplicate slice position {_fmt(pos[k + 1])} (same as {heads[k].path.name})"
            )
    off = pos - pos[0] - np.outer(along - along[0], normal)
    if np.abs(off).max() > 1e-2 * max(1.0, float(np.median(steps))):
        k = int(np.abs(off).max(axis=1).argmax())
        raise InputError(f"{heads[k].path}: slice position {_fmt(pos[k])} is off the stack's axis (sheared series)")
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if bad.size:
        k = int(bad[0])
        what = "missing slice(s)" if steps[k] > step else "shifted slice"
        raise InputError(
            f"{heads[k + 1].path}: irregular series: {steps[k]:.4g} mm from the slice before "
            f"({heads[k].path.name}) where the series' spacing is {step:.4g} mm ({what})"
        )


def _fmt(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in p) + ")"
