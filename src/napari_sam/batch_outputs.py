"""Writing one case's files (its segmentation + sidecar) all or nothing.

:func:`write_case_outputs` writes the segmentation in the format its name
asks for (a label map ``.nii.gz``/``.nii``/``.nrrd``/``.mha``/``.tif``, a 3D
Slicer ``.seg.nrrd`` or a DICOM SEG ``.dcm``, through the same
:class:`napari_sam.outputs.OutputFile` makers as ``napari-sam segment``) and
its JSON sidecar under temporary names in the output's folder, fsyncs them,
verifies each by reading it back, and only then renames them over their
final names (segmentation first, sidecar last: the sidecar's ``batch``
record, which holds the segmentation file's SHA-256, is what marks a case
finished). The one-file formats get the sidecar too (``case.seg.json``,
``case.json``): it holds the batch record. A worker killed at any point
leaves only ``.OUTPUT.*.partial*`` files, which :func:`remove_partials`
deletes before the case is run again.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, NapariSamError
from .export import output_kind
from .io import Geometry, Volume, sidecar_document, sidecar_path
from .outputs import OutputFile, full_suffix, label_map_output, validated_labels

PARTIAL = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def partial_names(output: Path) -> tuple[Path, Path]:
    """Fresh temporary names (label map, sidecar) for ``output``, in its folder."""
    token = secrets.token_hex(4)
    tmp = output.with_name(f".{output.name}.{token}{PARTIAL}{full_suffix(output)}")
    return tmp, sidecar_path(tmp)


def remove_partials(output: Path) -> int:
    """Delete temporary files a killed writer of ``output`` left behind; returns how many."""
    n = 0
    if output.parent.is_dir():
        for p in output.parent.glob(f".{output.name}.*{PARTIAL}*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _segmentation_file(
    tmp: Path,
    output: Path,
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str] | None,
    colors: Mapping[int, tuple[int, int, int]] | None,
    volume: Volume | None,
    model: str | None,
    algorithm_type: str,
) -> OutputFile:
    """The OutputFile writing ``output``'s format at ``tmp`` (as ``napari-sam segment`` writes it)."""
    kind = output_kind(output)
    if kind == "labels":
        return label_map_output(tmp, validated_labels(labels), geometry)
    if kind == "slicer_seg":
        from .slicer_seg import slicer_seg_output

        return slicer_seg_output(tmp, labels, geometry, names, colors)
    if volume is None:
        raise InputError(f"{output}: a DICOM SEG output needs its DICOM source series")
    from .dicom_seg import dicom_seg_output

    return dicom_seg_output(tmp, labels, volume, names, colors, model, algorithm_type)


def _verify(out: OutputFile, final: Path) -> None:
    """Read the written file back (the OutputFile's own check); NapariSamError when it differs."""
    if out.verify is None:
        return
    try:
        out.verify(out.path)
    except Exception as exc:  # noqa: BLE001 - any failure to read back is a bad write
        reason = " ".join(str(exc).split())[:120]
        raise NapariSamError(f"{final}: the written {out.kind} does not read back as computed ({reason})") from None


def write_case_outputs(
    output: Path,
    labels: np.ndarray,
    geometry: Geometry,
    names: Mapping[int, str] | None,
    colors: Mapping[int, tuple[int, int, int]] | None,
    extra: dict[str, Any],
    batch_record: dict[str, Any],
    volume: Volume | None = None,
    model: str | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
) -> str:
    """Write ``output`` and its sidecar atomically and verified; returns the output file's SHA-256.

    labels: (z, y, x) integer array on ``geometry``'s grid; extra: sidecar
    fields (as :func:`napari_sam.io.write_labels`); batch_record: the
    ``batch`` sidecar entry (inputs, settings), completed here with
    ``output_sha256``. volume, model, algorithm_type: for a DICOM SEG (its
    source series, the algorithm's name and type). Raises NapariSamError
    when a file does not read back as written, InputError for a DICOM SEG
    of an image that is not a DICOM series.
    """
    from .batch_manifest import file_sha256

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp, tmp_side = partial_names(output)
    try:
        main = _segmentation_file(tmp, output, labels, geometry, names, colors, volume, model, algorithm_type)
        main.write(tmp)
        digest = file_sha256(tmp)
        side = sidecar_document(validated_labels(labels), geometry, names, colors, extra)
        side["batch"] = {**batch_record, "output_sha256": digest}
        text = json.dumps(side, indent=2) + "\n"
        tmp_side.write_text(text, encoding="utf-8")
        mode = 0o666 & ~_umask()
        for p in (tmp, tmp_side):
            os.chmod(p, mode)
            _fsync(p)
        _verify(main, output)
        if tmp_side.read_text(encoding="utf-8") != text or file_sha256(tmp) != digest:
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
