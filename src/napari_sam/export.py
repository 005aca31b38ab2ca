"""Where a result goes, by the output's name: a label map with a JSON sidecar
(``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.tif``), a 3D Slicer
segmentation (``.seg.nrrd``, one file) or a DICOM SEG (``.dcm``, one file,
for DICOM input only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InputError
from .io import Volume, check_output_path, write_labels


def output_kind(path: str | Path) -> str:
    """ "dicom_seg" (``.dcm``), "slicer_seg" (``.seg.nrrd``) or "labels" (anything else)."""
    name = str(path).lower()
    if name.endswith(".dcm"):
        return "dicom_seg"
    return "slicer_seg" if name.endswith(".seg.nrrd") else "labels"


def check_result_path(
    path: str | Path, overwrite: bool = False, inputs: tuple[Any, ...] = ()
) -> Path:
    """Validate an output path before any work (suffix, folder, no clobbering of inputs or
    existing files); see :func:`napari_sam.io.check_output_path`."""
    path = Path(path)
    if output_kind(path) != "dicom_seg":
        return check_output_path(path, overwrite, inputs)
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path.parent}: not a folder")
    for inp in inputs:
        if (
            inp is not None
            and Path(inp).exists()
            and path.exists()
            and path.resolve() == Path(inp).resolve()
        ):
            raise InputError(f"{path}: refusing to overwrite an input file")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists; pass --overwrite to replace it")
    return path


def check_result_for(path: str | Path, volume: Volume) -> None:
    """Refuse, before any work, a DICOM SEG output for an image that is not a DICOM series."""
    if output_kind(path) == "dicom_seg":
        from .dicom_seg import check_dicom_source

        check_dicom_source(volume, path)


def write_result(
    path: str | Path,
    labels: np.ndarray,
    volume: Volume,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model: str | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
    seg_encoding: str = "BINARY",
) -> Path:
    """Write a (z, y, x) label map segmented on ``volume`` in the format ``path`` names, atomically.

    extra: goes into the JSON sidecar of a plain label map (the one-file
    formats have none). notes: gets one line per thing the user should know
    (e.g. source UIDs a DICOM SEG had to fill). seg_encoding: "BINARY" or
    "LABELMAP" for a DICOM SEG. Returns the path written.
    """
    kind = output_kind(path)
    if kind == "dicom_seg":
        from .dicom_seg import write_dicom_seg

        return write_dicom_seg(
            path,
            labels,
            volume,
            names,
            colors,
            model=model,
            overwrite=overwrite,
            algorithm_type=algorithm_type,
            notes=notes,
            encoding=seg_encoding,
        )
    if kind == "slicer_seg":
        from .slicer_seg import write_slicer_seg

        return write_slicer_seg(path, labels, volume.geometry, names, colors, overwrite=overwrite)
    return write_labels(
        path, labels, volume.geometry, names, colors, overwrite=overwrite, extra=extra
    )
