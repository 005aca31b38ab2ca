"""Seeded synthetic nuclei stacks with ground truth, for tests and benchmarks.

:func:`nuclei_stack` draws ellipsoids of varied size and orientation (some
touching their neighbours) in physical units, renders them on an anisotropic
voxel grid, and images them like a widefield/confocal microscope: uneven
background, nuclei at a given contrast over it, per-nucleus brightness and
texture, an anisotropic Gaussian blur (the PSF is longer along z), Poisson
(shot) noise on the counts and Gaussian read noise. The same seed gives the
same stack, bit for bit.

Arrays are (z, row, col); spacing is (z, row, col) in micrometres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError
from .label_ops import drop_small


@dataclass(frozen=True)
class SyntheticStack:
    """image: (z, row, col) uint16 counts; labels: (z, row, col) int32 ground
    truth, ids 1..N (0 background); spacing: (z, row, col) micrometres;
    contrast: mean nucleus counts / mean background counts (as requested)."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    contrast: float


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3D rotation matrix (uniform over orientations)."""
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _place(
    rng: np.random.Generator, extent: np.ndarray, n: int, radius: tuple[float, float], touch: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centres and semi-axes (micrometres) of up to n ellipsoids; about
    ``touch`` of them are put against an earlier one (surfaces in contact).
    Neighbours are looked up in a hash grid of cells one diameter wide."""
    cell = 2.0 * 1.25 * radius[1]
    grid: dict[tuple[int, int, int], list[int]] = {}
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n * 30):
        if len(out) >= n:
            break
        axes = rng.uniform(*radius) * rng.uniform(0.75, 1.25, size=3)
        if out and rng.random() < touch:
            c0, a0 = out[int(rng.integers(len(out)))]
            v = rng.normal(size=3)
            centre = c0 + v / np.linalg.norm(v) * (0.92 * (a0.mean() + axes.mean()))
        else:
            centre = rng.uniform(0, 1, size=3) * extent
        if np.any(centre < 0) or np.any(centre > extent):
            continue
        key = tuple(int(v) for v in centre // cell)
        near = [
            j
            for dz in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            for j in grid.get((key[0] + dz, key[1] + dy, key[2] + dx), ())
        ]
        if any(np.sqrt(((out[j][0] - centre) ** 2).sum()) < 0.9 * (out[j][1].mean() + axes.mean()) for j in near):
            continue
        grid.setdefault(key, []).append(len(out))
        out.append((centre, axes))
    return out


def _render(
    shape: tuple[int, int, int], spacing: np.ndarray, objects: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Label map: each voxel goes to the ellipsoid in which its normalised
    distance is smallest (below 1), so touching nuclei share a flat border."""
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, 1.0, np.float32)
    for i, (centre, axes, rot) in enumerate(objects, start=1):
        lo = np.maximum(0, np.floor((centre - axes.max()) / spacing).astype(int))
        hi = np.minimum(shape, np.ceil((centre + axes.max()) / spacing).astype(int) + 1)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(lo[k], hi[k]) * spacing[k] - centre[k] for k in range(3)], indexing="ij")
        local = np.einsum("ij,j...->i...", rot.T, np.stack(grids))
        d = np.sqrt(sum((local[k] / axes[k]) ** 2 for k in range(3))).astype(np.float32)
        sl = tuple(slice(lo[k], hi[k]) for k in range(3))
        win = d < best[sl]
        best[sl][win] = d[win]
        labels[sl][win] = i
    return labels


def nuclei_stack(
    shape: tuple[int, int, int] = (31, 61, 57),
    spacing: tuple[float, float, float] = (1.0, 0.25, 0.25),
    n_nuclei: int | None = None,
    radius_um: tuple[float, float] = (1.4, 2.0),
    contrast: float = 1.3,
    background: float = 178.0,
    touching: float = 0.35,
    read_noise: float = 4.0,
    seed: int = 0,
) -> SyntheticStack:
    """A synthetic 3D nuclei stack with its ground truth.

    shape: (z, row, col) voxels; spacing: (z, row, col) micrometres (z is
    typically 3-5x the in-plane spacing); n_nuclei: how many to place (None:
    about 30 % of the volume filled); radius_um: range of the mean semi-axis,
    micrometres (each axis varies by +-25 %, random orientation);
    contrast: mean nucleus / background counts (1.3 = faint, 3 = strong);
    background: mean background counts; touching: fraction of nuclei placed
    against a neighbour; read_noise: Gaussian noise sigma, counts; seed:
    the random seed. Returns a :class:`SyntheticStack`.
    """
    if len(shape) != 3 or min(shape) < 4:
        raise InputError(f"shape {shape}: expected (z, row, col), each at least 4")
    if contrast <= 1.0:
        raise InputError(f"contrast {contrast}: expected > 1 (nuclei brighter than the background)")
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    extent = np.asarray(shape) * sp
    r_mean = float(np.mean(radius_um))
    if n_nuclei is None:
        n_nuclei = max(1, int(0.3 * np.prod(extent) / (4.0 / 3.0 * np.pi * r_mean**3)))
    placed = _place(rng, extent, n_nuclei, radius_um, touching)
    objects = [(c, a, _rotation(rng)) for c, a in placed]
    labels = _render(shape, sp, objects)
    min_vox = max(4, int(0.15 * 4.0 / 3.0 * np.pi * r_mean**3 / np.prod(sp)))
    labels = drop_small(labels, min_vox)
    n = int(labels.max())
    # brightness: background with a smooth gradient and blotches, nuclei at `contrast` with texture
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    uneven = 1.0 + 0.15 * xx - 0.1 * yy + 0.05 * zz
    blotch = ndimage.gaussian_filter(rng.normal(size=shape), sigma=[max(1.0, 15.0 / s) for s in sp])
    uneven *= 1.0 + 0.05 * blotch / max(1e-6, float(blotch.std()))
    per_nucleus = np.concatenate([[0.0], rng.uniform(0.8, 1.2, size=n)])
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=[max(0.5, 0.3 / s) for s in sp])
    texture *= 0.15 / max(1e-6, float(texture.std()))
    excess = (contrast - 1.0) * per_nucleus[labels] * (1.0 + texture) * (labels > 0)
    truth = background * uneven * (1.0 + excess)
    psf = [0.25 / s for s in sp]  # micrometres -> voxels; sigma_z = sigma_xy in µm, so more slices blur less
    psf[0] = 0.6 / sp[0]
    blurred = ndimage.gaussian_filter(truth, psf)
    counts = rng.poisson(np.maximum(blurred, 0)).astype(np.float64) + rng.normal(0.0, read_noise, size=shape)
    image = np.clip(np.round(counts), 0, 65535).astype(np.uint16)
    return SyntheticStack(image=image, labels=labels, spacing=tuple(float(s) for s in sp), contrast=float(contrast))


def nuclei_image(
    shape: tuple[int, int] = (256, 256), pixel_um: float = 0.5, contrast: float = 2.0, seed: int = 0, **kw
) -> SyntheticStack:
    """A 2D synthetic nuclei image: the middle slice of a thin
    :func:`nuclei_stack` whose nuclei are centred on it (image and labels
    are (1, row, col))."""
    depth = 2.0 * float(np.mean(kw.get("radius_um", (3.0, 4.5))))
    kw.setdefault("radius_um", (3.0, 4.5))
    st = nuclei_stack((5,) + tuple(shape), (depth / 10.0,) + (pixel_um,) * 2, contrast=contrast, seed=seed, **kw)
    return SyntheticStack(
        image=st.image[2:3], labels=drop_small(st.labels[2:3], 4), spacing=st.spacing, contrast=st.contrast
    )


def blob_boxes(n: int, z: int = 5, size: int = 256, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Many single-slice box objects: a (z, size, size) float32 volume of bright discs
    (40 per slice) on noise, and a prompts-file document of ``n`` boxes of 6-24 px
    spread over the slices in turn (window -50..350). Seeded: the same every time."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 20, (z, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(z):
        for r, c in rng.integers(20, size - 20, (40, 2)):
            vol[k][(yy - r) ** 2 + (xx - c) ** 2 < 64] += 300
    objs = []
    for i in range(n):
        r, c = rng.integers(0, size - 24, 2)
        h, w = rng.integers(6, 24, 2)
        box = [int(r), int(c), int(r + h), int(c + w)]
        objs.append({"id": i + 1, "prompts": [{"slice": int(i % z), "box": box}]})
    return vol, {"objects": objs, "window": [-50, 350]}
