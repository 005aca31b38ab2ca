"""Sample data contributions, generated on the fly (nothing to download).

- :func:`make_ct_phantom`: an abdominal CT-like phantom in Hounsfield units,
  anisotropic voxels (1.2 x 1.2 x 3.0 mm), with liver, spleen, kidneys, aorta
  and a vertebra whose cross-sections change from slice to slice, so that
  box prompts, propagation and stop rules can be tried at once.
- :func:`make_rgb_cells`: an RGB image of stained nuclei on a tissue-like
  background (for the 2D RGB path).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..io import Geometry, Volume
from ._reader import LayerData, volume_to_layer_data

#: structure name -> label id in :func:`ct_phantom_arrays`'s truth
PHANTOM_STRUCTURES = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "aorta": 5, "vertebra": 6}


def _ellipsoid(
    shape: tuple[int, int, int], center: tuple[float, float, float], radii: tuple[float, float, float]
) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2
    ) <= 1.0


def ct_phantom_arrays(shape: tuple[int, int, int] = (32, 160, 192), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's (z, y, x) int16 HU volume and its (z, y, x) uint8 truth labels
    (ids in :data:`PHANTOM_STRUCTURES`)."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    truth = np.zeros(shape, np.uint8)
    zz = np.arange(nz)[:, None, None]
    body = _ellipsoid((1, ny, nx), (0, ny * 0.52, nx * 0.5), (1, ny * 0.40, nx * 0.46))[0][None].repeat(nz, 0)
    inner = _ellipsoid((1, ny, nx), (0, ny * 0.52, nx * 0.5), (1, ny * 0.36, nx * 0.42))[0][None].repeat(nz, 0)
    hu[body] = -90.0  # subcutaneous fat
    hu[inner] = 35.0  # muscle / soft tissue
    # organs: (name, centre z/y/x as fractions, radii z/y/x as fractions, HU)
    organs = [
        ("liver", (0.40, 0.45, 0.30), (0.42, 0.22, 0.17), 65.0),
        ("spleen", (0.35, 0.45, 0.75), (0.25, 0.12, 0.08), 50.0),
        ("kidney_right", (0.72, 0.62, 0.33), (0.22, 0.09, 0.06), 160.0),
        ("kidney_left", (0.68, 0.62, 0.67), (0.22, 0.09, 0.06), 160.0),
    ]
    for name, c, r, value in organs:
        m = _ellipsoid(shape, (c[0] * nz, c[1] * ny, c[2] * nx), (r[0] * nz, r[1] * ny, r[2] * nx)) & inner
        hu[m] = value
        truth[m] = PHANTOM_STRUCTURES[name]
    # aorta: a vertical cylinder in front of the spine, slightly wandering
    y, x = np.ogrid[:ny, :nx]
    for z in range(nz):
        cy, cx = ny * 0.60, nx * 0.52 + 2.0 * np.sin(z / 6.0)
        aorta = (y - cy) ** 2 + (x - cx) ** 2 <= (nx * 0.035) ** 2
        hu[z][aorta] = 210.0
        truth[z][aorta] = PHANTOM_STRUCTURES["aorta"]
        spine_c = (ny * 0.75, nx * 0.5)
        cortex = (y - spine_c[0]) ** 2 + (x - spine_c[1]) ** 2 <= (nx * 0.07) ** 2
        marrow = (y - spine_c[0]) ** 2 + (x - spine_c[1]) ** 2 <= (nx * 0.05) ** 2
        hu[z][cortex] = 750.0
        hu[z][marrow] = 260.0
        truth[z][cortex] = PHANTOM_STRUCTURES["vertebra"]
    # smooth edges a little (partial volume), then scanner noise
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.8, 0.8))
    hu += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    hu[~body] = -1000.0 + rng.normal(0.0, 5.0, size=int((~body).sum())).astype(np.float32)
    del zz
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), truth


def make_ct_phantom() -> list[LayerData]:
    """npe2 sample data: the CT phantom as an image layer (scale = spacing)."""
    hu, _ = ct_phantom_arrays()
    geom = Geometry(spacing=(1.2, 1.2, 3.0), origin=(-115.0, -96.0, 0.0))
    vol = Volume(hu, geom, {"modality": "CT", "is_2d": False, "is_rgb": False})
    return [volume_to_layer_data(vol, name="CT phantom")]


def rgb_cells_array(shape: tuple[int, int] = (256, 256), n_cells: int = 28, seed: int = 1) -> np.ndarray:
    """(y, x, 3) uint8 RGB image of hematoxylin-like nuclei on an eosin-like background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.ogrid[:h, :w]
    nuclei = np.zeros(shape, np.float32)
    for _ in range(n_cells):
        cy, cx = rng.uniform(15, h - 15), rng.uniform(15, w - 15)
        ry, rx = rng.uniform(6, 13), rng.uniform(6, 13)
        t = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = dy * np.cos(t) + dx * np.sin(t)
        v = -dy * np.sin(t) + dx * np.cos(t)
        nuclei = np.maximum(nuclei, ((u / ry) ** 2 + (v / rx) ** 2 <= 1.0).astype(np.float32))
    nuclei = ndimage.gaussian_filter(nuclei, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    bg = np.array([236, 196, 214], np.float32)
    fg = np.array([92, 60, 150], np.float32)
    img = bg[None, None] * (1 - nuclei[..., None]) + fg[None, None] * nuclei[..., None]
    img += 10.0 * texture[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_rgb_cells() -> list[LayerData]:
    """npe2 sample data: a 2D RGB image of stained nuclei."""
    vol = Volume(rgb_cells_array()[None], Geometry(spacing=(0.5, 0.5, 1.0)), {"is_2d": True, "is_rgb": True})
    return [volume_to_layer_data(vol, name="RGB cells")]
