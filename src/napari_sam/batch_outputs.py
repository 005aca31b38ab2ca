"""Writing one case's files (label map + sidecar) all or nothing.

:func:`write_case_outputs` writes both files under temporary names in the
output's folder, fsyncs them, reads the label map back and compares it with
what was meant, and only then renames them over their final names (label
map first, sidecar last: the sidecar's ``batch`` record, which holds the
label file's SHA-256, is what marks a case finished). A worker killed at any
point leaves only ``.OUTPUT.*.partial*`` files, which :func:`remove_partials`
deletes before the case is run again.

This is deliberately one small function with a plain signature so that it
can be swapped for the project's general atomic multi-file result writer.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import NapariSamError
from .io import Geometry, _suffix, atomic_write_text, sidecar_path, write_labels

PARTIAL = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _read_back(path: Path) -> np.ndarray:
    """A written label map as a (z, y, x) array."""
    if _suffix(path) in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(str(path))
    else:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return arr[None] if arr.ndim == 2 else arr


def partial_names(output: Path) -> tuple[Path, Path]:
    """Fresh temporary names (label map, sidecar) for ``output``, in its folder."""
    token = secrets.token_hex(4)
    tmp = output.with_name(f".{output.name}.{token}{PARTIAL}{_suffix(output)}")
    return tmp, sidecar_path(tmp)


def remove_partials(output: Path) -> int:
    """Delete temporary files a killed writer of ``output`` left behind; returns how many."""
    n = 0
    if output.parent.is_dir():
        for p in output.parent.glob(f".{output.name}.*{PARTIAL}*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_case_outputs(output: Path, labels: np.ndarray, geometry: Geometry, names: Mapping[int, str] | None,
                       colors: Mapping[int, tuple[int, int, int]] | None, extra: dict[str, Any],
                       batch_record: dict[str, Any]) -> str:
    """Write ``output`` and its sidecar atomically and verified; returns the label file's SHA-256.

    labels: (z, y, x) integer array on ``geometry``'s grid; extra: sidecar
    fields (as :func:`napari_sam.io.write_labels`); batch_record: the
    ``batch`` sidecar entry (inputs, settings), completed here with
    ``output_sha256``. Raises NapariSamError when the read-back differs.
    """
    from .batch_manifest import file_sha256

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp, tmp_side = partial_names(output)
    try:
        write_labels(tmp, labels, geometry, names, colors, overwrite=True, extra=extra)
        side = json.loads(tmp_side.read_text(encoding="utf-8"))
        digest = file_sha256(tmp)
        side["batch"] = {**batch_record, "output_sha256": digest}
        atomic_write_text(tmp_side, json.dumps(side, indent=2))
        mode = 0o666 & ~_umask()
        for p in (tmp, tmp_side):
            os.chmod(p, mode)
            _fsync(p)
        back = _read_back(tmp)
        want = labels[None] if labels.ndim == 2 else labels
        if back.shape != want.shape or not np.array_equal(back, want):
            raise NapariSamError(f"{output}: the written label map does not read back as computed")
        if json.loads(tmp_side.read_text(encoding="utf-8"))["batch"]["output_sha256"] != digest:
            raise NapariSamError(f"{sidecar_path(output)}: the written sidecar does not read back")
        os.replace(tmp, output)
        os.replace(tmp_side, sidecar_path(output))
        dir_fd = os.open(output.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return digest
