"""A PNG overview of a segmentation: the labelled slices, windowed, with
each object's colour blended in and its outline drawn."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .intensity import Window, resolve_window
from .io import Volume, default_color
from .outputs import OutputFile, bytes_output, write_outputs


def render_slice(
    image01: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], alpha: float = 0.4
) -> np.ndarray:
    """(H, W) or (H, W, 3) image in [0, 1] + (H, W) labels -> (H, W, 3) uint8."""
    rgb = np.repeat(image01[..., None], 3, axis=2) if image01.ndim == 2 else image01.copy()
    rgb = rgb.astype(np.float32)
    for lid in np.unique(labels):
        if lid == 0:
            continue
        m = labels == lid
        col = np.asarray(colors.get(int(lid)) or default_color(int(lid)), np.float32) / 255.0
        rgb[m] = (1 - alpha) * rgb[m] + alpha * col
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = col
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def render_overview(
    volume: Volume,
    labels: np.ndarray,
    colors: dict[int, tuple[int, int, int]] | None = None,
    window: Window | None = None,
    max_tiles: int = 12,
    tile: int = 256,
) -> np.ndarray:
    """A grid of up to ``max_tiles`` labelled slices (axis 0), (H, W, 3) uint8,
    each tile ``tile`` pixels on its longer physical side."""
    from PIL import Image

    win = window or resolve_window(
        volume.array, None, volume.metadata.get("modality"), volume.metadata.get("dicom_window")
    )
    zs = [z for z in range(labels.shape[0]) if labels[z].any()] or [labels.shape[0] // 2]
    if len(zs) > max_tiles:
        zs = [zs[i] for i in np.linspace(0, len(zs) - 1, max_tiles).round().astype(int)]
    tiles = []
    for z in zs:
        im = render_slice(win.apply(volume.array[z]), labels[z], colors or {})
        h, w = im.shape[:2]
        sy, sx = volume.geometry.spacing[1], volume.geometry.spacing[0]
        scale = tile / max(h * sy, w * sx)
        tiles.append(
            np.asarray(
                Image.fromarray(im).resize((max(1, int(w * sx * scale)), max(1, int(h * sy * scale))), Image.BILINEAR)
            )
        )
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    canvas = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * tile : r * tile + t.shape[0], c * tile : c * tile + t.shape[1]] = t
    return canvas


def overview_output(
    path: str | Path,
    volume: Volume,
    labels: np.ndarray,
    colors: dict[int, tuple[int, int, int]] | None = None,
    window: Window | None = None,
) -> OutputFile:
    """The overview PNG as an :class:`OutputFile` (encoded in memory, verified byte for byte)."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: the overview must end in .png")
    buf = io.BytesIO()
    Image.fromarray(render_overview(volume, labels, colors, window)).save(buf, format="PNG")
    return bytes_output(path, buf.getvalue(), "overview")


def write_overview(
    path: str | Path,
    volume: Volume,
    labels: np.ndarray,
    colors: dict[int, tuple[int, int, int]] | None = None,
    window: Window | None = None,
    overwrite: bool = True,
    inputs: tuple[str | Path, ...] = (),
) -> Path:
    """Write the overview PNG alone (checked against ``inputs``, verified, atomic)."""
    write_outputs([overview_output(path, volume, labels, colors, window)], inputs=inputs, overwrite=overwrite)
    return Path(path)
