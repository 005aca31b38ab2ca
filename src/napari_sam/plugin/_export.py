"""Export a session's labels in the image's geometry: NIfTI/NRRD/MHA with a names sidecar,
a 3D Slicer ``.seg.nrrd`` or a DICOM SEG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import sidecar_path, write_labels

if TYPE_CHECKING:
    from ._session import SegmentSession

__all__ = ["export_labels"]


def export_labels(session: SegmentSession, path: str | Path) -> list[str]:
    """Save the session's label map to ``path``; returns the paths written."""
    s = session
    p = Path(path)
    data = np.array(s.model.labels)
    names = {o.id: o.name for o in s.model.objects}
    colors = {o.id: o.color for o in s.model.objects}
    if p.name.lower().endswith((".dcm", ".seg.nrrd")):  # one file: DICOM SEG or 3D Slicer
        from ._seg_io import write_segmentation

        notes: list[str] = []
        out = write_segmentation(
            p,
            data[0] if s.source.is_2d else data,
            s.source.geometry,
            names,
            colors,
            s.source_path(),
            model=getattr(s.backend, "name", None),
            notes=notes,
        )
        s.status.emit(f"saved {out}" + "".join(f"; {n}" for n in notes))
        return [out]
    out = write_labels(
        p,
        data,
        s.source.geometry,
        names=names,
        colors=colors,
        overwrite=True,
        inputs=(getattr(getattr(s.source.layer, "source", None), "path", None),),
    )
    s.status.emit(f"saved {out}")
    return [str(out), str(sidecar_path(out))]
