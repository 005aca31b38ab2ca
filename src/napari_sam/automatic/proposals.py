"""Prompts for automatic mode from cheap image structure, and the object scale.

- :func:`estimate_polarity`, :func:`estimate_object_diameter`,
  :func:`refine_diameter`: bright or dark objects, and their typical diameter;
- :func:`blob_regions` (nuclei, cells, particles): local threshold and a
  watershed on the distance transform that splits touching blobs;
- :func:`intensity_region_boxes` (CT, MR): Felzenszwalb's regions at two scales;
- :func:`point_grid` (SAM's grid, point-capable models) and :func:`box_grid`
  (for comparison).

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive; images
float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..geometry import box_iou
from ..label_ops import relabel_sequential


def gray_image(image01: np.ndarray) -> np.ndarray:
    image01 = np.asarray(image01, np.float32)
    if image01.ndim == 3:
        if image01.shape[2] != 3:
            raise InputError(f"image of shape {image01.shape}: expected (H, W) or (H, W, 3)")
        return image01.mean(axis=2)
    if image01.ndim != 2:
        raise InputError(f"image of shape {image01.shape}: expected (H, W) or (H, W, 3)")
    return image01


def estimate_polarity(gray: np.ndarray) -> str:
    """ "bright" when the image is mostly dark with bright objects (right-skewed
    histogram: fluorescence), "dark" for dark objects on a bright background."""
    sample = gray[:: max(1, gray.shape[0] // 256), :: max(1, gray.shape[1] // 256)]
    mean, median = float(sample.mean()), float(np.median(sample))
    return "bright" if mean >= median else "dark"


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def estimate_object_diameter(
    image01: np.ndarray, polarity: str = "auto", min_diameter: float = 4.0, max_diameter: float | None = None
) -> float:
    """Typical diameter (pixels) of the blob-like objects of an image.

    The scale-normalised Laplacian of Gaussian of a disc of diameter d peaks
    at sigma = d / (2 sqrt 2); the scale with the strongest peaks (mean of
    the 50 strongest local maxima) gives d. Large scales are computed on a
    downsampled image (a pyramid), so this costs a fraction of a second.
    """
    gray = gray_image(image01)
    if polarity == "auto":
        polarity = estimate_polarity(gray)
    img = gray if polarity == "bright" else 1.0 - gray
    if max_diameter is None:
        max_diameter = min(img.shape) / 3.0
    best_d, best_r = min_diameter, -np.inf
    d = min_diameter
    while d <= max_diameter:
        sigma = d / (2.0 * np.sqrt(2.0))
        f = max(1, int(2 ** np.floor(np.log2(max(sigma / 2.0, 1.0)))))
        small = _downsample(img, f)
        s = sigma / f
        if min(small.shape) < 4 * s:
            break
        log = -(s * s) * ndimage.gaussian_laplace(small, s)
        mx = ndimage.maximum_filter(log, size=int(2 * s) + 1)
        peaks = log[(log == mx) & (log > 0)]
        if peaks.size:
            r = float(np.sort(peaks)[-50:].mean())
            if r > best_r:
                best_r, best_d = r, d
        d *= 2**0.25
    return float(best_d)


def refine_diameter(image01: np.ndarray, diameter: float, polarity: str) -> float:
    """A sharper object diameter: the median equivalent diameter of the blobs
    found with ``diameter`` (the LoG estimate is biased when an image holds
    few objects; the blobs' own size is not)."""
    regions = blob_regions(image01, diameter, polarity)
    sizes = np.bincount(regions.ravel())[1:]
    sizes = sizes[sizes >= 0.2 * np.pi * (diameter / 2.0) ** 2]
    if sizes.size < 3:
        return float(diameter)
    return float(2.0 * np.sqrt(np.median(sizes) / np.pi))


@dataclass(frozen=True)
class Proposals:
    """Prompts for automatic mode, in slice pixels.

    boxes: (N, 4) float32 (r0, c0, r1, c1) inclusive, or None;
    points: (N, 2) float32 (row, col), or None (one point per prompt);
    regions: (H, W) int32 label map the boxes came from (structure
        proposals; region i + 1 for box i), or None.
    """

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    regions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes) if self.boxes is not None else (len(self.points) if self.points is not None else 0)

    @property
    def kind(self) -> str:
        return "boxes" if self.boxes is not None else "points"


def _boxes_of_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) inclusive boxes of the objects of a label map, and their ids."""
    boxes, ids = [], []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        boxes.append((sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1))
        ids.append(i)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ids, np.int32)


def _split_touching(fg: np.ndarray, depth: float, smooth: float) -> np.ndarray:
    """Split a foreground mask into objects by a watershed on its distance transform.

    Markers are the h-maxima of the (smoothed) distance transform with
    h = ``depth`` pixels: two touching convex objects are split where the
    neck between them is at least ``depth`` pixels narrower than both, while
    an elongated object (a single ridge) stays whole.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndimage.distance_transform_edt(fg)
    if smooth > 0:
        dist = ndimage.gaussian_filter(dist, smooth)
    markers, _ = ndimage.label(h_maxima(dist, max(depth, 1e-3)) & fg)
    # components without a marker (thin, flat) become one object each
    cc, n = ndimage.label(fg)
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(cc[markers > 0]))
    if missing.size:
        extra = np.isin(cc, missing)
        markers[extra] = cc[extra] + markers.max()
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def blob_regions(image01: np.ndarray, diameter: float, polarity: str = "bright") -> np.ndarray:
    """Blob-like objects (nuclei, cells) as an (H, W) int32 label map.

    Smooth at a twentieth of the diameter, keep what stands above its local
    background (a Gaussian local mean at a third of the diameter, plus twice
    the noise level: a band-pass at the objects' scale, robust to uneven
    illumination), open, fill holes, and split touching blobs with a
    watershed on the distance transform (h-maxima of depth diameter / 20).
    """
    gray = gray_image(image01)
    img = gray if polarity == "bright" else 1.0 - gray
    s = ndimage.gaussian_filter(img, max(0.7, diameter / 20.0))
    local = ndimage.gaussian_filter(s, max(2.0, 0.35 * diameter))
    noise = 1.4826 * float(np.median(np.abs(s - ndimage.gaussian_filter(s, 2.0))))
    fg = s > local + max(2.0 * noise, 0.01)
    fg = ndimage.binary_opening(fg, iterations=max(1, int(round(diameter / 16))))
    fg = ndimage.binary_fill_holes(fg)
    return _split_touching(fg, depth=0.05 * diameter, smooth=max(1.0, diameter / 20.0))


def intensity_region_boxes(
    image01: np.ndarray, diameter: float, min_size: int, max_size: int, scales: tuple[float, ...] = (4.0, 8.0)
) -> np.ndarray:
    """Box proposals for regions of similar intensity (organs in a windowed CT
    slice, tissues in MR), (N, 4) float32 inclusive boxes.

    Felzenszwalb's graph segmentation of the (median-filtered) image at
    ``scales`` times the diameter gives a small hierarchy of regions: a large
    organ is proposed whole at the coarse scale and in parts at the fine one
    (the model and NMS pick the answer). Regions that touch the image border
    and are darker than the image's median (air around a body, background)
    are not proposed. Boxes of ``min_size`` .. ``max_size`` pixel regions,
    near-identical boxes (IoU > 0.9) given once.
    """
    from skimage.segmentation import felzenszwalb

    gray = gray_image(image01)
    s = ndimage.median_filter(gray, size=5)
    dark = float(np.median(s))
    boxes: list[np.ndarray] = []
    for k in scales:
        lab = felzenszwalb(s, scale=float(k * diameter), sigma=1.0, min_size=max(16, min_size // 2)) + 1
        sizes = np.bincount(lab.ravel())
        means = np.bincount(lab.ravel(), weights=s.ravel()) / np.maximum(sizes, 1)
        edge = np.zeros(len(sizes), bool)
        edge[np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))] = True
        keep = (sizes >= max(1, min_size)) & (sizes <= max_size) & ~(edge & (np.asarray(means) <= dark))
        keep[0] = False
        b, _ = _boxes_of_labels(np.where(keep[lab], lab, 0))
        boxes.append(b)
    allb = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    out: list[np.ndarray] = []
    for b in allb[np.argsort(-(allb[:, 2] - allb[:, 0] + 1) * (allb[:, 3] - allb[:, 1] + 1))]:
        if all(box_iou(b, o) <= 0.9 for o in out):
            out.append(b)
    return np.asarray(out, np.float32).reshape(-1, 4)


def structure_proposals(
    image01: np.ndarray, kind: str, diameter: float, polarity: str, min_size: int, max_size: int
) -> Proposals:
    """Box proposals from image structure: "blobs" (one per blob, with the
    blob label map) or "regions" (a two-scale hierarchy of intensity regions)."""
    if kind == "regions":
        return Proposals(boxes=intensity_region_boxes(image01, diameter, min_size, max_size))
    regions = blob_regions(image01, diameter, polarity)
    sizes = np.bincount(regions.ravel())
    bad = (sizes < max(1, min_size)) | (sizes > max_size)
    bad[0] = False
    regions = relabel_sequential(np.where(bad[regions], 0, regions))
    boxes, _ = _boxes_of_labels(regions)
    return Proposals(boxes=boxes, regions=regions)


def point_grid(shape: tuple[int, int], points_per_side: int) -> np.ndarray:
    """(n * n, 2) (row, col) points at the centres of an n x n grid of cells (SAM's grid)."""
    H, W = shape
    off = 0.5 / points_per_side
    r = (np.linspace(off, 1 - off, points_per_side) * H).astype(np.float32)
    c = (np.linspace(off, 1 - off, points_per_side) * W).astype(np.float32)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def box_grid(shape: tuple[int, int], sides: tuple[float, ...]) -> np.ndarray:
    """(N, 4) boxes of each side in ``sides`` (pixels) on a grid of stride side / 2."""
    H, W = shape
    out = []
    for side in sides:
        side = max(2.0, float(side))
        stride = side / 2.0
        for r in np.arange(0, max(1.0, H - side + stride), stride):
            for c in np.arange(0, max(1.0, W - side + stride), stride):
                out.append((r, c, min(H - 1.0, r + side - 1), min(W - 1.0, c + side - 1)))
    return np.asarray(out, np.float32).reshape(-1, 4)
