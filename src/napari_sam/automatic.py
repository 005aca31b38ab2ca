"""Automatic segmentation ("segment everything"): every object, no prompt.

The pipeline, for one 2D image (a slice, a tile-able micrograph)::

    proposals -> views and embeddings -> batched decoding -> filtering
      -> non-maximum suppression -> overlap resolution -> instance labels

Proposals. The embedded LiteMedSAM only understands boxes, and its decoder
costs tens of milliseconds per prompt on a CPU, so a dense box grid (SAM's
approach with points) would take minutes. Instead the default proposals
come from cheap image structure (:func:`structure_proposals`):

- ``"blobs"`` (microscopy: nuclei, cells, particles): the typical object
  diameter is estimated from the scale-normalised Laplacian of Gaussian,
  objects are separated from the background by a local threshold, and
  touching objects are split by a watershed on the distance transform. Each
  region's box is one prompt;
- ``"regions"`` (CT, MR, anything without a background): Felzenszwalb's
  graph segmentation at two scales (a small hierarchy: organs whole and in
  parts); each region large enough is one prompt, and each good mask that
  leaves its box is asked again with its own box (``refine_rounds``).

Point-capable models (SAM, MobileSAM, micro-sam) use a regular point grid,
three candidate masks per point, as SAM's automatic mask generator does
(``proposals="point-grid"``). A multi-scale box grid (``"box-grid"``) is
there for comparison (see docs/automatic.md for the measurements).

Views. Each proposal is decoded on the embedding of the tile that holds it
(:mod:`napari_sam.tiling`; a slice up to the tile shape is one tile), or, with
``zoom``, on a crop around it (:mod:`napari_sam.zoom`). Embeddings are kept
in an LRU so that re-running with other thresholds costs no encoder run.

Filtering. A candidate mask is kept when the model's predicted IoU is at
least ``quality_threshold``, its *stability* (IoU of the masks thresholded at
``-stability_offset`` and ``+stability_offset`` logits) at least
``stability_threshold``, its area at least ``min_size``, and, for box
prompts, its bounding box agrees with the prompt box (``box_agreement``): a
box model answers a box holding one object with a mask that fills it.

Overlaps. Duplicates are removed by greedy mask NMS (highest score first);
pixels still claimed by several masks go to the mask with the highest logit
there, which draws the border between touching objects where the model is
least sure. Each object keeps its largest connected part.

Volumes (:meth:`AutomaticSegmenter.segment_volume`): every slice is segmented,
then objects of neighbouring slices are linked by overlap (IoU of at least
``link_iou``; one-to-one), so that each 3D object has one id.

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive; images
are float32 in [0, 1] (use :mod:`napari_sam.intensity` to window raw data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Generator, Iterator

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .cache import content_hash
from .label_ops import relabel_sequential
from .errors import InputError, NapariSamError
from .models.base import Backend, Embedding
from .tiling import DEFAULT_HALO, DEFAULT_TILE_SHAPE, TileGrid
from .zoom import Crop, CropEmbeddings, ZoomSettings, extent_boxes, zoom_crop

PROPOSAL_KINDS = ("auto", "blobs", "regions", "point-grid", "box-grid", "blobs+box-grid", "regions+box-grid")


class Cancelled(NapariSamError):
    """Raised inside a run when its ``should_stop`` callback says so."""


@dataclass(frozen=True)
class AutoSettings:
    """What users tune in automatic mode. Defaults suit fluorescence
    microscopy; :meth:`for_ct` gives the CT defaults.

    proposals: "auto" (point grid for point-capable models, as SAM's
        generator; "blobs" for box-only models), "blobs", "regions",
        "point-grid", "box-grid", or structure plus grid ("blobs+box-grid",
        "regions+box-grid").
    object_diameter: typical object diameter in pixels; None estimates it.
    polarity: "bright" objects on a dark background, "dark" on bright, or "auto".
    points_per_side: density of the point grid (point-grid) per tile side.
    box_grid_sides: box sides of the box grid as multiples of the object
        diameter; the grid's stride is half a side.
    quality_threshold: minimum predicted IoU of a kept mask (0..1).
    stability_threshold: minimum stability score of a kept mask (0..1).
    stability_offset: logit offset of the stability score.
    box_agreement: minimum IoU between a mask's bounding box and its prompt box.
    box_clip_margin: a box prompt's mask is cut at the box grown by this
        fraction of its side (at least 1 px); None keeps masks whole. At the
        whole-slice scale the model's masks of small objects bleed past the box.
    nms_iou: masks overlapping a better one by more than this are duplicates.
    min_size: smallest object kept, pixels; None: a fifth of the typical
        object's area for blobs, 200 px for regions.
    max_size_fraction: largest object kept, as a fraction of the image.
    tile_shape, halo: tiling of images larger than a tile (pixels).
    zoom: decode each proposal on a crop around it (better outlines of small
        objects, one encoder run per crop); None decodes on the tiles.
    refine_rounds: rounds of re-prompting with the bounding box of each good
        mask that does not fit its prompt box (a box model answers a tight box
        best); each round costs up to one more decode per proposal.
    batch_size: prompts per decoder call.
    link_iou: volumes: minimum IoU linking objects of neighbouring slices.
    keep_unanswered: blob proposals: a blob that no kept mask covers (the
        model's answer failed the filters) is kept as the blob itself, ranked
        below every model mask.
    """

    proposals: str = "auto"
    object_diameter: float | None = None
    polarity: str = "auto"
    points_per_side: int = 32
    box_grid_sides: tuple[float, ...] = (1.0, 2.0)
    quality_threshold: float = 0.5
    stability_threshold: float = 0.6
    stability_offset: float = 1.0
    box_agreement: float = 0.6
    box_clip_margin: float | None = 0.05
    nms_iou: float = 0.5
    min_size: int | None = None
    max_size_fraction: float = 0.5
    tile_shape: tuple[int, int] = DEFAULT_TILE_SHAPE
    halo: int = DEFAULT_HALO
    zoom: ZoomSettings | None = None
    refine_rounds: int = 0
    batch_size: int = 16
    link_iou: float = 0.3
    keep_unanswered: bool = False

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSAL_KINDS:
            raise InputError(f"proposals {self.proposals!r}: expected one of {', '.join(PROPOSAL_KINDS)}")
        if self.polarity not in ("auto", "bright", "dark"):
            raise InputError(f"polarity {self.polarity!r}: expected auto, bright or dark")
        for name in ("quality_threshold", "stability_threshold", "box_agreement", "nms_iou", "link_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name.replace('_', ' ')} {v}: expected a number between 0 and 1")
        if self.object_diameter is not None and not 2.0 <= self.object_diameter <= 10000:
            raise InputError(f"object diameter {self.object_diameter}: expected 2..10000 pixels")
        if self.min_size is not None and self.min_size < 0:
            raise InputError(f"min size {self.min_size}: expected >= 0 pixels")
        if not 0.0 < self.max_size_fraction <= 1.0:
            raise InputError(f"max size fraction {self.max_size_fraction}: expected 0 < f <= 1")
        if self.points_per_side < 1 or self.points_per_side > 128:
            raise InputError(f"points per side {self.points_per_side}: expected 1..128")
        if not 0 <= self.refine_rounds <= 5:
            raise InputError(f"refine rounds {self.refine_rounds}: expected 0..5")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: expected >= 1")
        if self.box_clip_margin is not None and not 0.0 <= self.box_clip_margin <= 2.0:
            raise InputError(f"box clip margin {self.box_clip_margin}: expected 0..2 (fraction of the box side)")
        if self.stability_offset <= 0:
            raise InputError(f"stability offset {self.stability_offset}: expected > 0")
        if not self.box_grid_sides or min(self.box_grid_sides) <= 0:
            raise InputError(f"box grid sides {self.box_grid_sides}: expected positive multiples of the diameter")
        TileGrid((max(self.tile_shape) + 1,) * 2, self.tile_shape, self.halo)  # validates tile and halo

    @classmethod
    def for_microscopy(cls, **overrides) -> AutoSettings:
        """Nuclei, cells, particles: blobs on a background (box-only models),
        a point grid for point-capable models."""
        return cls(**{"proposals": "auto", "keep_unanswered": True, **overrides})

    @classmethod
    def for_ct(cls, **overrides) -> AutoSettings:
        """CT and MR slices (windowed): organs and tissues as intensity regions."""
        base = {"proposals": "regions", "quality_threshold": 0.6, "stability_threshold": 0.7,
                "box_agreement": 0.6, "min_size": 200, "nms_iou": 0.5, "max_size_fraction": 0.5,
                "box_clip_margin": None, "refine_rounds": 1}
        return cls(**{**base, **overrides})

    def with_(self, **changes) -> AutoSettings:
        return replace(self, **changes)


#: progress callback: (done, total, stage message)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run, yielded by the ``iter_*`` generators."""

    done: int
    total: int
    stage: str


# --------------------------------------------------------------------------- image structure
def _gray(image01: np.ndarray) -> np.ndarray:
    image01 = np.asarray(image01, np.float32)
    if image01.ndim == 3:
        if image01.shape[2] != 3:
            raise InputError(f"image of shape {image01.shape}: expected (H, W) or (H, W, 3)")
        return image01.mean(axis=2)
    if image01.ndim != 2:
        raise InputError(f"image of shape {image01.shape}: expected (H, W) or (H, W, 3)")
    return image01


def estimate_polarity(gray: np.ndarray) -> str:
    """"bright" when the image is mostly dark with bright objects (right-skewed
    histogram: fluorescence), "dark" for dark objects on a bright background."""
    sample = gray[:: max(1, gray.shape[0] // 256), :: max(1, gray.shape[1] // 256)]
    mean, median = float(sample.mean()), float(np.median(sample))
    return "bright" if mean >= median else "dark"


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def estimate_object_diameter(image01: np.ndarray, polarity: str = "auto",
                             min_diameter: float = 4.0, max_diameter: float | None = None) -> float:
    """Typical diameter (pixels) of the blob-like objects of an image.

    The scale-normalised Laplacian of Gaussian of a disc of diameter d peaks
    at sigma = d / (2 sqrt 2); the scale with the strongest peaks (mean of
    the 50 strongest local maxima) gives d. Large scales are computed on a
    downsampled image (a pyramid), so this costs a fraction of a second.
    """
    gray = _gray(image01)
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
        d *= 2 ** 0.25
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
    gray = _gray(image01)
    img = gray if polarity == "bright" else 1.0 - gray
    s = ndimage.gaussian_filter(img, max(0.7, diameter / 20.0))
    local = ndimage.gaussian_filter(s, max(2.0, 0.35 * diameter))
    noise = 1.4826 * float(np.median(np.abs(s - ndimage.gaussian_filter(s, 2.0))))
    fg = s > local + max(2.0 * noise, 0.01)
    fg = ndimage.binary_opening(fg, iterations=max(1, int(round(diameter / 16))))
    fg = ndimage.binary_fill_holes(fg)
    return _split_touching(fg, depth=0.05 * diameter, smooth=max(1.0, diameter / 20.0))


def intensity_region_boxes(image01: np.ndarray, diameter: float, min_size: int, max_size: int,
                           scales: tuple[float, ...] = (4.0, 8.0)) -> np.ndarray:
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

    gray = _gray(image01)
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
        if all(_box_iou(b, o) <= 0.9 for o in out):
            out.append(b)
    return np.asarray(out, np.float32).reshape(-1, 4)


def structure_proposals(image01: np.ndarray, kind: str, diameter: float, polarity: str,
                        min_size: int, max_size: int) -> Proposals:
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


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    """One decoded mask, stored as a logit patch on the slice grid.

    top, left: the patch's first pixel in the slice; logits: (h, w) float32;
    score: predicted IoU; stability: stability score; box_iou: IoU between
    the mask's bounding box and the prompt box (1 for point prompts);
    prompt: index of the proposal that produced it.
    """

    top: int
    left: int
    logits: np.ndarray
    score: float
    stability: float
    box_iou: float
    prompt: int
    _mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = self.logits > 0
        return self._mask

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def rank(self) -> float:
        return self.score + self.stability + self.box_iou

    def slices(self) -> tuple[slice, slice]:
        h, w = self.logits.shape
        return slice(self.top, self.top + h), slice(self.left, self.left + w)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, r1 - r0 + 1) * max(0.0, c1 - c0 + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return float(inter / (area_a + area_b - inter))


def _candidates_from_logits(logits: np.ndarray, scores: np.ndarray, view: Crop, prompt_ids: list[int],
                            prompt_boxes: np.ndarray | None, offset: float, clip_margin: float | None,
                            slice_shape: tuple[int, int]) -> list[Candidate]:
    """Turn a view's logit maps into candidates: clip each to its prompt box
    (plus a margin), drop masks cut by an inner edge of the view, cut the
    logits down to a patch around the mask and score its stability there.

    logits: (B, K, h, w) on the view's pixels; scores: (B, K);
    prompt_boxes: (B, 4) in slice pixels, or None for point prompts.
    """
    out = []
    h, w = logits.shape[-2:]
    for j in range(logits.shape[0]):
        clip = None
        if prompt_boxes is not None and clip_margin is not None:
            b = view.box_to_crop(prompt_boxes[j])
            mr = max(1.0, clip_margin * (b[2] - b[0] + 1))
            mc = max(1.0, clip_margin * (b[3] - b[1] + 1))
            clip = (max(0, int(np.floor(b[0] - mr))), max(0, int(np.floor(b[1] - mc))),
                    min(h, int(np.ceil(b[2] + mr)) + 1), min(w, int(np.ceil(b[3] + mc)) + 1))
        for k in range(logits.shape[1]):
            lg = logits[j, k]
            if clip is not None:  # a box prompt says where the object is: nothing outside the box
                lg = np.full((h, w), -2.0 * offset - 1.0, np.float32)
                sl = (slice(clip[0], clip[2]), slice(clip[1], clip[3]))
                lg[sl] = logits[j, k][sl]
            loose = lg > -offset
            rows = np.flatnonzero(loose.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(loose.any(axis=0))
            r0, r1 = max(0, rows[0] - 2), min(h, rows[-1] + 3)
            c0, c1 = max(0, cols[0] - 2), min(w, cols[-1] + 3)
            patch = np.ascontiguousarray(lg[r0:r1, c0:c1], dtype=np.float32)
            m = patch > 0
            if not m.any():
                continue
            full_box_view = Crop(view.top + int(r0), view.left + int(c0), patch.shape[0], patch.shape[1])
            if _reaches_inner_edge(m, full_box_view, view, slice_shape):
                continue  # cut by the view's edge: another view holds the object whole
            n_lo = int(loose[r0:r1, c0:c1].sum())
            stab = float((patch > offset).sum()) / n_lo if n_lo else 0.0
            mr_ = np.flatnonzero(m.any(axis=1))
            mc_ = np.flatnonzero(m.any(axis=0))
            mbox = np.array([mr_[0] + r0, mc_[0] + c0, mr_[-1] + r0, mc_[-1] + c0], np.float32) \
                + np.tile(view.offset, 2)
            biou = _box_iou(mbox, prompt_boxes[j]) if prompt_boxes is not None else 1.0
            out.append(Candidate(top=view.top + int(r0), left=view.left + int(c0), logits=patch,
                                 score=float(scores[j, k]), stability=stab, box_iou=biou, prompt=prompt_ids[j]))
    return out


def _reaches_inner_edge(mask: np.ndarray, patch: Crop, view: Crop, slice_shape: tuple[int, int]) -> bool:
    """Whether a patch mask touches an edge of its view that lies inside the slice."""
    H, W = slice_shape
    if view.top > 0 and patch.top == view.top and mask[0].any():
        return True
    if view.left > 0 and patch.left == view.left and mask[:, 0].any():
        return True
    if view.top + view.height < H and patch.top + patch.height == view.top + view.height and mask[-1].any():
        return True
    return bool(view.left + view.width < W and patch.left + patch.width == view.left + view.width
                and mask[:, -1].any())


def mask_iou(a: Candidate, b: Candidate) -> float:
    """IoU of two candidates' masks (computed on their overlapping patches)."""
    inter = _intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def filter_candidates(cands: list[Candidate], settings: AutoSettings, min_size: int, max_size: int) -> list[Candidate]:
    """Keep candidates passing the quality, stability, box-agreement and size thresholds."""
    return [c for c in cands
            if c.score >= settings.quality_threshold and c.stability >= settings.stability_threshold
            and c.box_iou >= settings.box_agreement and min_size <= c.area <= max_size]


def unanswered_regions(regions: np.ndarray, kept: list[Candidate], covered: float = 0.5) -> list[Candidate]:
    """The structure regions (label map, region i + 1 from proposal i) that
    less than ``covered`` of is under the kept masks, as candidates ranked
    below any model mask (score, stability and box agreement 0)."""
    cover = np.zeros(regions.shape, bool)
    for c in kept:
        cover[c.slices()] |= c.mask
    out = []
    for i, sl in enumerate(ndimage.find_objects(regions)):
        if sl is None:
            continue
        region = regions[sl] == i + 1
        if cover[sl][region].mean() >= covered:
            continue
        out.append(Candidate(top=sl[0].start, left=sl[1].start, logits=np.where(region, 1.0, -1.0).astype(np.float32),
                             score=0.0, stability=0.0, box_iou=0.0, prompt=i))
    return out


def non_max_suppression(cands: list[Candidate], iou_threshold: float, part_fraction: float = 0.8,
                        group_fraction: float = 0.6) -> list[Candidate]:
    """Greedy mask NMS over candidates, best rank first.

    A candidate is dropped when its mask overlaps a kept one with IoU above
    ``iou_threshold`` (a duplicate), when ``part_fraction`` of it lies inside
    a kept mask (a part of a better object), or when it holds two or more
    kept masks, each with ``group_fraction`` of its area inside it (a group
    of better objects: two touching nuclei, several organs in one box).
    """
    order = sorted(cands, key=lambda c: -c.rank)
    kept: list[Candidate] = []
    for c in order:
        rs, cs = c.slices()
        drop, inside_c = False, 0
        for k in kept:
            kr, kc = k.slices()
            if rs.start >= kr.stop or kr.start >= rs.stop or cs.start >= kc.stop or kc.start >= cs.stop:
                continue
            inter = _intersection(c, k)
            union = c.area + k.area - inter
            if (union and inter / union > iou_threshold) or inter >= part_fraction * c.area:
                drop = True
                break
            if inter >= group_fraction * k.area:
                inside_c += 1
                if inside_c >= 2:
                    drop = True
                    break
        if not drop:
            kept.append(c)
    return kept


def _intersection(a: Candidate, b: Candidate) -> int:
    (ar, ac), (br, bc) = a.slices(), b.slices()
    r0, r1 = max(ar.start, br.start), min(ar.stop, br.stop)
    c0, c1 = max(ac.start, bc.start), min(ac.stop, bc.stop)
    if r0 >= r1 or c0 >= c1:
        return 0
    return int(np.logical_and(a.mask[r0 - ar.start: r1 - ar.start, c0 - ac.start: c1 - ac.start],
                              b.mask[r0 - br.start: r1 - br.start, c0 - bc.start: c1 - bc.start]).sum())


def resolve_overlaps(cands: list[Candidate], shape: tuple[int, int], min_size: int) -> tuple[np.ndarray, list[float]]:
    """Paint candidates into one (H, W) int32 instance map.

    A pixel claimed by several masks (after NMS: only along the borders of
    touching objects) goes to the one with the highest logit there, so the
    border falls where the model is least sure. Each object then keeps its
    largest connected part, with holes filled, and is dropped when smaller
    than ``min_size``. Ids are 1..N in the order of ``cands``. Returns the
    labels and each kept id's score.
    """
    H, W = shape
    best = np.zeros((H, W), np.float32)  # logit of the current owner (> 0 where owned)
    owner = np.zeros((H, W), np.int32)
    for i, c in enumerate(cands, start=1):
        sl = c.slices()
        win = (c.logits > 0) & (c.logits > best[sl])
        owner[sl][win] = i
        best[sl][win] = c.logits[win]
    labels = np.zeros((H, W), np.int32)
    scores: list[float] = []
    objs = ndimage.find_objects(owner)
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        m = owner[sl] == i
        cc, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(cc.ravel())[1:]
            m = cc == (int(np.argmax(sizes)) + 1)
        m = ndimage.binary_fill_holes(m) & ((owner[sl] == i) | (owner[sl] == 0))
        if m.sum() < max(1, min_size):
            continue
        scores.append(cands[i - 1].score)
        labels[sl][m] = len(scores)
    return labels, scores


# --------------------------------------------------------------------------- volumes
def link_slices(labels: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Give objects of neighbouring slices one id where they overlap.

    labels: (z, y, x) int, ids independent per slice. Objects of slices z and
    z + 1 are matched one-to-one (Hungarian on IoU) where their IoU is at
    least ``min_iou``; matched chains share an id. Returns (z, y, x) int32
    with ids 1..N.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels of shape {labels.shape}: expected (z, y, x)")
    from .evaluation import iou_matrix

    out = np.zeros(labels.shape, np.int32)
    next_id = 1
    prev_map: dict[int, int] = {}
    for z in range(labels.shape[0]):
        ids = np.unique(labels[z])
        ids = ids[ids != 0]
        cur_map: dict[int, int] = {}
        if z > 0 and prev_map and ids.size:
            p_ids, r_ids, iou = iou_matrix(labels[z], labels[z - 1])
            if iou.size:
                rows, cols = linear_sum_assignment(-iou)
                for r, c in zip(rows, cols):
                    if iou[r, c] >= min_iou and int(r_ids[c]) in prev_map:
                        cur_map[int(p_ids[r])] = prev_map[int(r_ids[c])]
        for i in ids:
            if int(i) not in cur_map:
                cur_map[int(i)] = next_id
                next_id += 1
        lut = np.zeros(int(labels[z].max(initial=0)) + 1, np.int32)
        for k, v in cur_map.items():
            lut[k] = v
        out[z] = lut[labels[z]]
        prev_map = cur_map
    return relabel_sequential(out)


# --------------------------------------------------------------------------- the segmenter
@dataclass
class AutoResult:
    """labels: (H, W) int32 instance map (or (z, H, W) for volumes), ids 1..N;
    scores: predicted IoU per id (index id - 1; 2D only); proposals: number
    of prompts decoded; timings: seconds per stage; diameter: the object
    diameter used (pixels); encoder_calls: encoder runs this call needed."""

    labels: np.ndarray
    scores: list[float]
    proposals: int
    timings: dict[str, float]
    diameter: float
    encoder_calls: int = 0
    candidates: int = 0


class AutomaticSegmenter:
    """Segment every object of an image with a promptable model.

    backend: a loaded model; settings: :class:`AutoSettings` (defaults for
    microscopy; :meth:`AutoSettings.for_ct` for CT).
    embeddings: a shared :class:`CropEmbeddings` (tiles and zoom crops are
    cached there; re-running with other thresholds costs no encoder run).
    """

    def __init__(self, backend: Backend, settings: AutoSettings | None = None,
                 embeddings: CropEmbeddings | None = None) -> None:
        self.backend = backend
        self.settings = settings or AutoSettings()
        self.embeddings = embeddings if embeddings is not None else CropEmbeddings(backend, max_in_memory=64)

    # ------------------------------------------------------------------ helpers
    def proposal_kind(self) -> str:
        kind = self.settings.proposals
        if kind == "auto":
            return "point-grid" if self.backend.supports_points else "blobs"
        if kind == "point-grid" and not self.backend.supports_points:
            raise InputError(f"proposals 'point-grid': model {self.backend.name!r} takes boxes only; "
                             "use 'blobs', 'regions' or 'box-grid'")
        return kind

    def _min_size(self, kind: str, diameter: float) -> int:
        if self.settings.min_size is not None:
            return int(self.settings.min_size)
        if kind.startswith("regions"):
            return 200
        return max(4, int(0.2 * np.pi * (diameter / 2.0) ** 2))

    # ------------------------------------------------------------------ 2D
    def segment(self, image01: np.ndarray, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, image_key: str | None = None) -> AutoResult:
        """Segment one 2D image; image01: (H, W) or (H, W, 3) float32 in [0, 1].

        progress: called with (done, total, stage); should_stop: polled between
        steps, raises :class:`Cancelled` when it returns True.
        """
        return _drive(self.iter_segment(image01, image_key=image_key), progress, should_stop)

    def iter_segment(self, image01: np.ndarray,
                     image_key: str | None = None) -> Generator[ProgressEvent, None, AutoResult]:
        """:meth:`segment` as a generator of :class:`ProgressEvent` (for
        napari's thread_worker: abortable between steps); returns the
        :class:`AutoResult`."""
        st = self.settings
        image01 = np.asarray(image01, np.float32)
        gray = _gray(image01)
        if min(gray.shape) < 8:
            raise InputError(f"image of shape {gray.shape}: too small for automatic segmentation")
        H, W = gray.shape
        timings: dict[str, float] = {}
        enc0 = self.embeddings.encoder_calls
        t0 = time.perf_counter()
        yield ProgressEvent(0, 1, "proposals")
        kind = self.proposal_kind()
        polarity = estimate_polarity(gray) if st.polarity == "auto" else st.polarity
        diameter = st.object_diameter
        if diameter is None:
            if kind.startswith("regions"):
                diameter = max(8.0, min(H, W) / 16.0)
            else:
                diameter = refine_diameter(gray, estimate_object_diameter(gray, polarity), polarity)
        min_size = self._min_size(kind, diameter)
        max_size = int(st.max_size_fraction * H * W)
        grid = TileGrid((H, W), st.tile_shape, st.halo)
        structure: Proposals | None = None
        if kind != "point-grid":
            parts = []
            if kind.split("+")[0] in ("blobs", "regions"):
                structure = structure_proposals(gray, kind.split("+")[0], diameter, polarity, min_size, max_size)
                parts.append(structure.boxes)
            if kind.endswith("box-grid"):
                parts.append(box_grid((H, W), tuple(s * diameter for s in st.box_grid_sides)))
            props = Proposals(boxes=np.concatenate(parts))
        else:
            pts = np.concatenate([point_grid(t.shape, st.points_per_side) + t.offset for t in grid.tiles])
            props = Proposals(points=pts)
        timings["proposals"] = time.perf_counter() - t0
        if image_key is None:
            image_key = content_hash(image01)
        clock = {"encoder": 0.0, "decoder": 0.0}
        cands: list[Candidate] = yield from self._decode_all(image01, image_key, props, grid, clock, "")
        boxes = props.boxes
        round_start = 0
        for rnd in range(st.refine_rounds if props.boxes is not None else 0):
            # a box model answers a tight box best: re-ask with the box of each good mask that left its box
            new_boxes = []
            for c in cands:
                if c.prompt < round_start or c.score < st.quality_threshold or c.box_iou >= 0.9:
                    continue
                mr = np.flatnonzero(c.mask.any(axis=1))
                mc = np.flatnonzero(c.mask.any(axis=0))
                new_boxes.append((mr[0] + c.top, mc[0] + c.left, mr[-1] + c.top, mc[-1] + c.left))
            if not new_boxes:
                break
            first = round_start = len(boxes)
            boxes = np.concatenate([boxes, np.asarray(new_boxes, np.float32)])
            more = Proposals(boxes=boxes)
            cands += yield from self._decode_all(image01, image_key, more, grid, clock,
                                                 f"refining ({rnd + 1}) ", only=range(first, len(boxes)))
        timings.update(clock)
        t = time.perf_counter()
        n_cands = len(cands)
        kept = filter_candidates(cands, st, min_size, max_size)
        if st.keep_unanswered and structure is not None and structure.regions is not None:
            kept += unanswered_regions(structure.regions, kept)
        kept = non_max_suppression(kept, st.nms_iou)
        labels, scores = resolve_overlaps(kept, (H, W), min_size)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        yield ProgressEvent(1, 1, "done")
        return AutoResult(labels=labels, scores=scores, proposals=len(boxes) if boxes is not None else len(props),
                          timings=timings, diameter=float(diameter),
                          encoder_calls=self.embeddings.encoder_calls - enc0, candidates=n_cands)

    def _views(self, props: Proposals, grid: TileGrid, only) -> dict[Crop, list[int]]:
        """Which embedding each prompt is decoded on: its tile, or its zoom crop."""
        st = self.settings
        views: dict[Crop, list[int]] = {}
        tiles = grid.tiles
        for i in (only if only is not None else range(len(props))):
            if props.boxes is not None:
                box = props.boxes[i]
                crop = zoom_crop(box, grid.shape, st.zoom) if st.zoom is not None else None
                view = crop if crop is not None else tiles[grid.tile_for_box(box)]
            else:
                view = tiles[grid.owner(*props.points[i])]
            views.setdefault(view, []).append(i)
        return views

    def _decode_all(self, image01: np.ndarray, image_key: str, props: Proposals, grid: TileGrid,
                    clock: dict[str, float], label: str, only=None) -> Generator[ProgressEvent, None, list[Candidate]]:
        st = self.settings
        views = self._views(props, grid, only)
        n_steps = len(views) + sum(int(np.ceil(len(v) / st.batch_size)) for v in views.values())
        step = 0
        n_prompts = sum(len(v) for v in views.values())
        done_prompts = 0
        cands: list[Candidate] = []
        for k, (view, idx) in enumerate(views.items()):
            t = time.perf_counter()
            emb = self.embeddings.get(image01, view, image_key)
            clock["encoder"] += time.perf_counter() - t
            step += 1
            yield ProgressEvent(step, n_steps, f"{label}embedding {k + 1}/{len(views)}")
            for b0 in range(0, len(idx), st.batch_size):
                t = time.perf_counter()
                batch = idx[b0: b0 + st.batch_size]
                cands += self._decode(emb, view, props, batch, grid.shape)
                clock["decoder"] += time.perf_counter() - t
                step += 1
                done_prompts += len(batch)
                yield ProgressEvent(step, n_steps, f"{label}decoding {done_prompts}/{n_prompts} prompts")
        return cands

    @torch.inference_mode()
    def _decode(self, emb: Embedding, view: Crop, props: Proposals, batch: list[int],
                shape: tuple[int, int]) -> list[Candidate]:
        st = self.settings
        if props.boxes is not None:
            boxes_slice = props.boxes[batch]
            boxes_view = view.box_to_crop(boxes_slice)
            boxes_view[:, [0, 2]] = np.clip(boxes_view[:, [0, 2]], 0, view.height - 1)
            boxes_view[:, [1, 3]] = np.clip(boxes_view[:, [1, 3]], 0, view.width - 1)
            low, scores = self.backend.decode_low_res(emb, boxes_rc=extent_boxes(boxes_view, emb))
            prompt_boxes = boxes_slice
        else:
            pts = view.points_to_crop(props.points[batch])[:, None, :]
            low, scores = self.backend.decode_low_res(emb, points_rc=pts, point_labels=np.ones(pts.shape[:2], np.int64),
                                                      multimask=True)
            prompt_boxes = None
        logits = self.backend.upsample(low, emb).float().cpu().numpy()
        return _candidates_from_logits(logits, scores.float().cpu().numpy(), view, batch, prompt_boxes,
                                       st.stability_offset, st.box_clip_margin, shape)

    # ------------------------------------------------------------------ 3D
    def iter_segment_volume(self, volume01: Callable[[int], np.ndarray] | np.ndarray, n_slices: int | None = None,
                            volume_key: str | None = None) -> Generator[ProgressEvent, None, AutoResult]:
        """Segment every slice of a volume and link objects across slices.

        volume01: (z, H, W[, 3]) float32 in [0, 1], or a function z -> that
        slice (windowing lazily); n_slices: needed with a function.
        Yields a :class:`ProgressEvent` per slice; returns an AutoResult
        with (z, H, W) labels in which each 3D object has one id.
        """
        get = volume01 if callable(volume01) else (lambda z: np.asarray(volume01[z], np.float32))
        n = n_slices if n_slices is not None else (len(volume01) if not callable(volume01) else None)
        if n is None:
            raise InputError("n_slices is needed when the volume is given as a function")
        per_slice, timings = [], {}
        proposals = cands = enc = 0
        diam = 0.0
        for z in range(n):
            key = f"{volume_key}|z={z}" if volume_key is not None else None
            res = yield from _forward(self.iter_segment(get(z), image_key=key), z, n)
            per_slice.append(res.labels)
            proposals += res.proposals
            cands += res.candidates
            enc += res.encoder_calls
            diam = res.diameter
            for k, v in res.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            yield ProgressEvent(z + 1, n, f"slice {z + 1}/{n}")
        t = time.perf_counter()
        labels = link_slices(np.stack(per_slice), self.settings.link_iou)
        timings["linking"] = time.perf_counter() - t
        return AutoResult(labels=labels, scores=[], proposals=proposals, timings=timings, diameter=diam,
                          encoder_calls=enc, candidates=cands)

    def segment_volume(self, volume01, n_slices: int | None = None, progress: Progress | None = None,
                       should_stop: Callable[[], bool] | None = None, volume_key: str | None = None) -> AutoResult:
        """:meth:`iter_segment_volume`, driven to the end (see :meth:`segment`)."""
        return _drive(self.iter_segment_volume(volume01, n_slices, volume_key), progress, should_stop)


def _drive(gen: Generator[ProgressEvent, None, AutoResult], progress: Progress | None,
           should_stop: Callable[[], bool] | None) -> AutoResult:
    """Run an ``iter_*`` generator to its result, reporting progress and
    raising :class:`Cancelled` when ``should_stop()`` says so."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(ev.done, ev.total, ev.stage)
        if should_stop is not None and should_stop():
            gen.close()
            raise Cancelled("automatic segmentation cancelled")


def _forward(gen: Generator[ProgressEvent, None, AutoResult], z: int, n: int
             ) -> Generator[ProgressEvent, None, AutoResult]:
    """Re-yield a slice's events as (z, n) progress with the slice's stage in the message."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        yield ProgressEvent(z, n, f"slice {z + 1}/{n}: {ev.stage}")

