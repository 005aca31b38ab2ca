"""Where a result goes, by the output's name: a label map with a JSON sidecar
(``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.tif``), a 3D Slicer
segmentation (``.seg.nrrd``, one file) or a DICOM SEG (``.dcm``, one file,
for DICOM input only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .io import Volume, check_output_path, write_labels


def output_kind(path: str | Path) -> str:
    """ "dicom_seg" (``.dcm``), "slicer_seg" (``.seg.nrrd``) or "labels" (anything else)."""
    name = str(path).lower()
    if name.endswith(".dcm"):
        return "dicom_seg"
    return "slicer_seg" if name.endswith(".seg.nrrd") else "labels"


def check_result_path(
    path: str | Path, overwrite: bool = False, inputs: tuple[Any, ...] = (), also: tuple[Any, ...] = ()
) -> Path:
    """Validate an output path (and the paths in ``also``, e.g. an overview) before any
    work: suffix, folder, no clobbering of inputs (symlinks and hard links resolved)
    or existing files; see :func:`napari_sam.outputs.check_targets`."""
    from .outputs import check_targets

    path = Path(path)
    if output_kind(path) != "dicom_seg":
        return check_output_path(path, overwrite, inputs, also=also)
    check_targets([path, *also], inputs, overwrite)
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
    inputs: tuple[Any, ...] = (),
    more: tuple[Any, ...] = (),
) -> Path:
    """Write a (z, y, x) label map segmented on ``volume`` in the format ``path`` names, atomically.

    extra: goes into the JSON sidecar of a plain label map (the one-file
    formats have none). notes: gets one line per thing the user should know
    (e.g. source UIDs a DICOM SEG had to fill). seg_encoding: "BINARY" or
    "LABELMAP" for a DICOM SEG. inputs: files no output may replace. more:
    further :class:`napari_sam.outputs.OutputFile` s of the result (e.g. the
    overview), written with it as one set: all land or none. Returns the
    path written.
    """
    from .outputs import write_outputs

    kind = output_kind(path)
    if kind == "labels":
        return write_labels(
            path, labels, volume.geometry, names, colors, overwrite=overwrite, extra=extra, inputs=inputs, more=more
        )
    if kind == "dicom_seg":
        from .dicom_seg import dicom_seg_output

        main = dicom_seg_output(path, labels, volume, names, colors, model, algorithm_type, notes, seg_encoding)
    else:
        from .slicer_seg import slicer_seg_output

        main = slicer_seg_output(path, labels, volume.geometry, names, colors)
    write_outputs([main, *more], inputs, overwrite)  # the segmentation and its overview land together
    return main.path
