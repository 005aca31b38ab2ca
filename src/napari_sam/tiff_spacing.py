"""Voxel spacing of a TIFF stack from its ImageJ or OME metadata.

A plain multi-page TIFF has no spacing; ImageJ writes the z step as
``spacing=`` in its description and the in-plane pixel size as the
resolution tags (pixels per unit); OME-TIFF writes ``PhysicalSizeX/Y/Z``.
Returns (z, row, col) in the file's unit (usually micrometres), or None.
"""

from __future__ import annotations

from pathlib import Path


def _resolution(page, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
    return float(den) / float(num) if num else None


def tiff_spacing(path: str | Path) -> tuple[float, float, float] | None:
    """(z, row, col) voxel size of a TIFF stack from ImageJ or OME metadata, or None."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            if tif.is_ome and tif.ome_metadata:
                import re

                def size(axis: str) -> float | None:
                    m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
                    return float(m.group(1)) if m else None

                z, y, x = size("Z"), size("Y"), size("X")
                if x and y:
                    return (z or 1.0, y, x)
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            x, y = _resolution(page, "XResolution"), _resolution(page, "YResolution")
            z = ij.get("spacing")
            if z or (ij and x and y):
                return (float(z or 1.0), float(y or 1.0), float(x or 1.0))
    except (OSError, ValueError, KeyError, tifffile.TiffFileError):
        return None
    return None
