"""Automatic 3D instance segmentation of stacks (nuclei, cells): proposals made in 3D.

Two designs were measured (docs/automatic.md): segmenting every slice in 2D
and linking the answers across slices (:meth:`AutomaticSegmenter.segment_volume`),
and making the proposals in 3D. Slice-wise answers fragment a nucleus into
1-2 slice pieces at low contrast (each slice is thresholded alone, on a
few noisy pixels) and cost one encoder run plus one decode per object per
slice. The 3D design, chosen here, sees each nucleus whole:

1. **Scale.** The typical nucleus diameter is estimated in-plane (scale-
   normalised LoG on the brightest slices) and turned into micrometres with
   the voxel spacing; every filter below is given in physical units, so an
   anisotropic stack (z spacing 3-5x the in-plane spacing) is filtered as a
   physical volume.
2. **Foreground.** Smooth at an eighth of the diameter, subtract the local
   background (a Gaussian at two diameters: uneven illumination cancels),
   threshold (Otsu) and clean up (fill holes per slice, drop specks).
3. **Instances.** The physical distance transform (``sampling=spacing``) of
   the foreground, smoothed, has one maximum per convex nucleus; its
   h-maxima are the seeds of a watershed that splits touching nuclei along
   their necks. One 3D object is one id by construction: nothing to link,
   so no object is fragmented across slices, and two touching nuclei are
   two seeds, so they are not merged.
4. **The model** (opt-in, ``use_model``; measured to lower F1 on the
   synthetic stacks, so off by default) checks each object on its central
   slice (largest cross-section): its box is the prompt. An object whose answer does not cover
   its cross-section (IoU below ``model_iou``) and whose contrast is weak is
   debris or noise and is dropped. Crops around 16 objects are packed into
   one mosaic at the model's input size, so one encoder run serves 16
   objects, and the number of prompts is capped (``max_prompts``, the
   faintest objects first).

Arrays are (z, row, col); spacing (z, row, col) in any unit (micrometres);
images float32 in [0, 1] (window raw data with :mod:`napari_sam.intensity`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..embeddings import CropEmbeddings
from ..errors import InputError
from ..io import Geometry
from ..jobs import Cancel, Job, Progress, ProgressCallback, drive
from ..label_ops import drop_small, relabel_sequential
from ..models.base import Backend
from ..tiff_spacing import tiff_spacing
from .proposals import estimate_object_diameter, refine_diameter
from .segmenter import AutoResult


@dataclass(frozen=True)
class Stack3DSettings:
    """What users tune in 3D automatic mode.

    spacing: (z, row, col) voxel size (any unit, e.g. micrometres); None: isotropic.
    object_diameter: typical in-plane nucleus diameter in pixels; None estimates it.
    polarity: "bright" objects on a dark background, or "dark".
    split_depth: seeds are h-maxima of this height of the watershed relief
        (distance transform + brightness, each scaled to 0..1; larger: fewer splits).
    min_size_fraction: smallest object kept, as a fraction of the typical nucleus volume.
    use_model: check each object with the model on its central slice (off by
        default: measured, it dropped true faint nuclei; docs/automatic.md).
    model_iou: an object whose model answer overlaps its central cross-section
        by less than this (IoU) is dropped when its contrast is also weak.
    max_prompts: cap on model prompts (least certain objects first); 0: none.
    batch_size: prompts per decoder call.
    """

    spacing: tuple[float, float, float] | None = None
    object_diameter: float | None = None
    polarity: str = "bright"
    split_depth: float = 0.03
    min_size_fraction: float = 0.15
    use_model: bool = False
    model_iou: float = 0.3
    max_prompts: int = 2000
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError(f"spacing {self.spacing}: expected three positive numbers (z, row, col)")
        if self.polarity not in ("bright", "dark"):
            raise InputError(f"polarity {self.polarity!r}: expected bright or dark")
        if self.object_diameter is not None and not 2.0 <= self.object_diameter <= 10000:
            raise InputError(f"object diameter {self.object_diameter}: expected 2..10000 pixels")
        if not 0.0 <= self.model_iou <= 1.0:
            raise InputError(f"model iou {self.model_iou}: expected 0..1")
        if not 0.0 < self.split_depth < 1.0:
            raise InputError(f"split depth {self.split_depth}: expected 0..1 (fraction of the diameter)")
        if self.max_prompts < 0 or self.batch_size < 1:
            raise InputError("max prompts must be >= 0 and batch size >= 1")


def stack_diameter(volume01: np.ndarray, polarity: str = "bright") -> float:
    """Typical in-plane object diameter (pixels) of a (z, row, col) stack: on
    the three slices with the most structure, the LoG estimate sharpened by
    the blobs' median size (:func:`napari_sam.automatic.refine_diameter`;
    cross-sections off a nucleus' centre make it err small, which splits
    touching nuclei rather than merging them); the median of the three."""
    spread = volume01.reshape(len(volume01), -1).std(axis=1)
    out = []
    for z in np.argsort(spread)[-3:]:
        d = estimate_object_diameter(volume01[z], polarity, max_diameter=min(volume01.shape[1:]) / 2)
        out.append(refine_diameter(volume01[z], d, polarity))
    return float(np.median(out))


def _sigmas(spacing: np.ndarray, length: float) -> list[float]:
    """Gaussian sigmas in voxels for a physical length (at least 0.5 voxel where it matters)."""
    return [float(length / s) if length / s >= 0.3 else 0.0 for s in spacing]


def _background_surface(s: np.ndarray, rounds: int = 3) -> np.ndarray:
    """A smooth (quadratic) background surface fitted to the background voxels
    of a stack: uneven illumination, whatever the field of view's size.
    Fitted on a subsample, then on the voxels below the previous fit (nuclei
    are brighter than the surface), ``rounds`` times."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in s.shape]
    step = tuple(max(1, n // 48) for n in s.shape)
    sub = s[tuple(slice(None, None, k) for k in step)]
    g = np.meshgrid(*[a[::k] for a, k in zip(axes, step)], indexing="ij")
    z, y, x = (v.ravel() for v in g)
    A = np.stack([np.ones_like(z), z, y, x, z * z, y * y, x * x, z * y, z * x, y * x], axis=1)
    v = sub.ravel()
    keep = np.ones(v.shape, bool)
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(A[keep], v[keep], rcond=None)
        keep = v <= A @ coef
    Z, Y, X = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = coef.astype(np.float32)
    return (
        c[0]
        + c[1] * Z
        + c[2] * Y
        + c[3] * X
        + c[4] * Z * Z
        + c[5] * Y * Y
        + c[6] * X * X
        + c[7] * Z * Y
        + c[8] * Z * X
        + c[9] * Y * X
    )


def foreground_3d(
    volume01: np.ndarray, spacing: np.ndarray, diameter_phys: float, polarity: str = "bright"
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask (z, row, col) bool and the flattened smooth image
    (signal minus local background) of a stack; lengths in spacing units."""
    img = volume01 if polarity == "bright" else 1.0 - volume01
    from skimage.filters import threshold_otsu

    s = ndimage.gaussian_filter(img.astype(np.float32), _sigmas(spacing, diameter_phys / 8.0))
    flat = s - _background_surface(s)
    flat -= ndimage.gaussian_filter(flat, _sigmas(spacing, 4.0 * diameter_phys), mode="nearest")
    fg = flat > threshold_otsu(flat)
    for z in range(len(fg)):
        fg[z] = ndimage.binary_fill_holes(fg[z])
    return fg, flat


def split_instances_3d(
    fg: np.ndarray, flat: np.ndarray, spacing: np.ndarray, diameter_phys: float, depth: float, min_voxels: int
) -> np.ndarray:
    """Split a (z, row, col) foreground into objects with a seeded watershed.

    The relief is the physical distance transform (``sampling=spacing``: a
    nucleus is round in micrometres, not in voxels) plus the smoothed
    brightness, each scaled to [0, 1]: touching nuclei are separated by a
    neck (distance) and by the dimmer gap between them (brightness). Seeds
    are its h-maxima of height ``depth``. Returns int32 ids 1..N.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndimage.distance_transform_edt(fg, sampling=spacing).astype(np.float32)
    dist = ndimage.gaussian_filter(dist, _sigmas(spacing, diameter_phys / 12.0))
    bright = ndimage.gaussian_filter(flat, _sigmas(spacing, diameter_phys / 6.0))
    lo, hi = float(bright[fg].min()), float(bright[fg].max())
    relief = dist / max(float(dist.max()), 1e-6) + (bright - lo) / max(hi - lo, 1e-6)
    markers, _ = ndimage.label(h_maxima(relief, depth) & fg)
    labels = watershed(-relief, markers, mask=fg).astype(np.int32)
    return drop_small(labels, min_voxels)


def _central_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """For each object: the slice of its largest cross-section, its box there
    (r0, c0, r1, c1 inclusive) and its bounding slices. Returns (z (N,),
    boxes (N, 4), slices)."""
    objs = ndimage.find_objects(labels)
    zs, boxes = np.zeros(len(objs), int), np.zeros((len(objs), 4), np.float32)
    for i, sl in enumerate(objs):
        if sl is None:
            continue
        sub = labels[sl] == i + 1
        area = sub.sum(axis=(1, 2))
        kz = int(np.argmax(area))
        rows = np.flatnonzero(sub[kz].any(axis=1))
        cols = np.flatnonzero(sub[kz].any(axis=0))
        zs[i] = sl[0].start + kz
        boxes[i] = (sl[1].start + rows[0], sl[2].start + cols[0], sl[1].start + rows[-1], sl[2].start + cols[-1])
    return zs, boxes, objs


#: objects checked per encoder run: a MOSAIC_SIDE x MOSAIC_SIDE mosaic of crops
MOSAIC_SIDE = 4


class StackSegmenter:
    """3D automatic instance segmentation of a stack (see the module docstring).

    backend: a loaded model (None: proposals only, no model check);
    settings: :class:`Stack3DSettings`; embeddings: a shared :class:`CropEmbeddings`.
    """

    def __init__(
        self, backend: Backend | None, settings: Stack3DSettings | None = None, embeddings: CropEmbeddings | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings or Stack3DSettings()
        if embeddings is None and backend is not None:
            embeddings = CropEmbeddings(backend, max_in_memory=8)
        self.embeddings = embeddings
        self.encoder_calls = 0

    def segment(
        self,
        volume01: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
        volume_key: str | None = None,
    ) -> AutoResult:
        """Segment a (z, row, col) float32 stack in [0, 1]; returns an
        :class:`AutoResult` with (z, row, col) int32 labels (one id per 3D object).
        progress: called with each :class:`~napari_sam.jobs.Progress`; cancel:
        checked between steps."""
        return drive(self.iter_segment(volume01, volume_key), progress, cancel, "automatic segmentation")

    def iter_segment(self, volume01: np.ndarray, volume_key: str | None = None) -> Job[AutoResult]:
        """:meth:`segment` as a job (a generator of :class:`~napari_sam.jobs.Progress`,
        abortable between steps) returning the :class:`AutoResult`."""
        st = self.settings
        vol = np.asarray(volume01, np.float32)
        if vol.ndim != 3 or min(vol.shape[1:]) < 8:
            raise InputError(f"stack of shape {vol.shape}: expected (z, row, col), at least 8 x 8 in-plane")
        spacing = np.asarray(st.spacing if st.spacing is not None else (1.0, 1.0, 1.0), float)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        yield Progress(0, 4, "proposals: object size")
        d_px = st.object_diameter or stack_diameter(vol, st.polarity)
        d_phys = d_px * float(np.sqrt(spacing[1] * spacing[2]))
        timings["proposals: object size"] = time.perf_counter() - t0
        yield Progress(1, 4, "proposals: foreground")
        t = time.perf_counter()
        fg, flat = foreground_3d(vol, spacing, d_phys, st.polarity)
        timings["proposals: foreground"] = time.perf_counter() - t
        yield Progress(2, 4, "proposals: splitting touching objects")
        t = time.perf_counter()
        typical = 4.0 / 3.0 * np.pi * (d_phys / 2.0) ** 3 / float(np.prod(spacing))
        min_vox = max(4, int(st.min_size_fraction * typical))
        labels = split_instances_3d(fg, flat, spacing, d_phys, st.split_depth, min_vox)
        timings["proposals: seeds and watershed"] = time.perf_counter() - t
        timings["proposals"] = time.perf_counter() - t0
        timings["linking"] = 0.0  # one 3D object is one id by construction: nothing to link
        n_prompts, enc0, total = 0, self.encoder_calls, 4
        timings["encoder"] = timings["decoder"] = 0.0
        if st.use_model and self.backend is not None and labels.max() > 0:
            labels, n_prompts, total = yield from self._model_check(vol, labels, flat, timings, volume_key)
        t = time.perf_counter()
        labels = relabel_sequential(labels)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        enc = self.encoder_calls - enc0
        yield Progress(total, total, "done")
        return AutoResult(
            labels=labels,
            scores=[],
            proposals=n_prompts,
            timings=timings,
            diameter=float(d_px),
            encoder_calls=enc,
            candidates=n_prompts,
        )

    def _model_check(
        self, vol: np.ndarray, labels: np.ndarray, flat: np.ndarray, timings: dict[str, float], volume_key: str | None
    ) -> Job[tuple[np.ndarray, int, int]]:
        """Prompt each object's box on its central slice; drop objects the model
        does not confirm when their contrast is weak. Returns (labels, prompts,
        the job's total steps)."""
        st = self.settings
        zs, boxes, objs = _central_boxes(labels)
        n = len(objs)
        ids = np.arange(1, n + 1)
        contrast = ndimage.mean(flat, labels, ids)
        order = np.argsort(contrast)  # least certain (faintest) first
        if st.max_prompts:
            order = order[: st.max_prompts]
        ious = np.ones(n)
        todo = [int(i) for i in order if objs[i] is not None]
        per = MOSAIC_SIDE * MOSAIC_SIDE
        steps = max(1, int(np.ceil(len(todo) / per)))
        for k in range(steps):
            group = todo[k * per : (k + 1) * per]
            ious[group] = self._check_group(vol, labels, zs, boxes, group, timings)
            yield Progress(3 + k, 4 + steps, f"model check: {min(len(todo), (k + 1) * per)}/{len(todo)}")
        weak = contrast < np.median(contrast)
        confirm = ~((ious < st.model_iou) & weak)
        lut = np.concatenate([[0], np.where(confirm, ids, 0)]).astype(np.int32)
        return lut[labels], len(todo), 4 + steps

    @torch.inference_mode()
    def _check_group(
        self,
        vol: np.ndarray,
        labels: np.ndarray,
        zs: np.ndarray,
        boxes: np.ndarray,
        group: list[int],
        timings: dict[str, float],
    ) -> np.ndarray:
        """One encoder run for up to MOSAIC_SIDE**2 objects: a crop around each
        object's central cross-section (2.5x its box) is resized into one cell
        of a mosaic at the model's input size; each object's box is decoded in
        its cell. Returns the IoU of each answer with the cross-section."""
        size = int(getattr(self.backend, "image_size", 256))
        cell = size // MOSAIC_SIDE
        mosaic = np.zeros((size, size), np.float32)
        crops, mboxes = [], []
        for k, i in enumerate(group):
            mbox, crop = _place_in_mosaic(mosaic, vol[zs[i]], boxes[i], k, cell)
            mboxes.append(mbox)
            crops.append(crop)
        t = time.perf_counter()
        emb = self.backend.embed(mosaic)
        self.encoder_calls += 1
        timings["encoder"] += time.perf_counter() - t
        t = time.perf_counter()
        out = np.ones(len(group))
        mb = np.clip(np.asarray(mboxes, np.float32), 0, size - 1)
        for b0 in range(0, len(group), self.settings.batch_size):
            low, _ = self.backend.decode_low_res(emb, boxes_rc=mb[b0 : b0 + self.settings.batch_size])
            masks = (self.backend.upsample(low, emb)[:, 0] > 0).cpu().numpy()
            for j in range(masks.shape[0]):
                k = b0 + j
                i = group[k]
                back = _from_mosaic(masks[j], k, cell, crops[k])
                ref = labels[zs[i], crops[k][3], crops[k][4]] == i + 1
                out[k] = np.logical_and(back, ref).sum() / max(1, np.logical_or(back, ref).sum())
        timings["decoder"] += time.perf_counter() - t
        return out


def _place_in_mosaic(mosaic: np.ndarray, image: np.ndarray, box: np.ndarray, k: int, cell: int):
    """Put the square crop of ``image`` (rows, cols) around ``box`` (r0, c0, r1, c1;
    2.5x its longer side, zeros outside the image) into cell ``k`` (row-major,
    MOSAIC_SIDE per row) of ``mosaic``, resized to ``cell`` pixels. Returns the box
    in mosaic pixels and the crop (top, left, side, row slice, col slice of ``image``)."""
    H, W = image.shape
    r0, c0, r1, c1 = box
    side = max(8.0, 2.5 * max(r1 - r0 + 1, c1 - c0 + 1))
    cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    top, left = int(round(cr - side / 2)), int(round(cc - side / 2))
    n_side = int(round(side))
    sl_r = slice(max(0, top), min(H, top + n_side))
    sl_c = slice(max(0, left), min(W, left + n_side))
    patch = np.zeros((n_side, n_side), np.float32)
    patch[sl_r.start - top : sl_r.stop - top, sl_c.start - left : sl_c.stop - left] = image[sl_r, sl_c]
    f = cell / n_side
    gy, gx = divmod(k, MOSAIC_SIDE)
    mosaic[gy * cell : (gy + 1) * cell, gx * cell : (gx + 1) * cell] = ndimage.zoom(
        patch, (cell / n_side, cell / n_side), order=1, grid_mode=True, mode="nearest"
    )[:cell, :cell]
    mbox = [
        gy * cell + (r0 - top) * f,
        gx * cell + (c0 - left) * f,
        gy * cell + (r1 + 1 - top) * f - 1,
        gx * cell + (c1 + 1 - left) * f - 1,
    ]
    return mbox, (top, left, n_side, sl_r, sl_c)


def _from_mosaic(mask: np.ndarray, k: int, cell: int, crop: tuple) -> np.ndarray:
    """Cell ``k`` of a (size, size) bool mosaic ``mask``, resized back to the crop
    that :func:`_place_in_mosaic` put there: bool on the crop's part inside the image."""
    top, left, n_side, sl_r, sl_c = crop
    gy, gx = divmod(k, MOSAIC_SIDE)
    m = mask[gy * cell : (gy + 1) * cell, gx * cell : (gx + 1) * cell].astype(np.float32)
    back = ndimage.zoom(m, n_side / cell, order=0, grid_mode=True, mode="nearest")[:n_side, :n_side] > 0.5
    return back[sl_r.start - top : sl_r.stop - top, sl_c.start - left : sl_c.stop - left]


def parse_spacing(text: str) -> tuple[float, float, float]:
    """ "Z,Y,X" (or "Z,XY") voxel size -> (z, row, col) floats; InputError when malformed."""
    try:
        vals = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--spacing {text!r}: expected Z,Y,X numbers, e.g. 1.0,0.25,0.25") from None
    if len(vals) == 2:
        vals = (vals[0], vals[1], vals[1])
    if len(vals) != 3 or min(vals) <= 0:
        raise InputError(f"--spacing {text!r}: expected three positive numbers Z,Y,X")
    return vals  # type: ignore[return-value]


def stack_spacing(
    image_path: str, geometry_zyx: tuple[float, float, float], has_header: bool, override: str | None
) -> tuple[float, float, float]:
    """The (z, row, col) spacing of a stack: ``override`` ("Z,Y,X"), else the
    header's (NIfTI/NRRD/MHA/DICOM), else ImageJ/OME TIFF metadata, else isotropic."""
    if override:
        return parse_spacing(override)
    if has_header:
        return tuple(float(v) for v in geometry_zyx)  # type: ignore[return-value]
    if image_path.lower().endswith((".tif", ".tiff")):
        sp = tiff_spacing(image_path)
        if sp is not None:
            return sp
    return (1.0, 1.0, 1.0)


def stack_settings_from_args(
    args, volume, backend: Backend | None, embeddings: CropEmbeddings | None
) -> StackSegmenter:
    """The CLI's :class:`StackSegmenter` for ``napari-sam auto`` on a 3D microscopy stack."""
    has_header = volume.geometry != Geometry()
    spacing = stack_spacing(str(args.image), volume.geometry.scale_zyx, has_header, args.spacing)
    settings = Stack3DSettings(
        spacing=spacing, object_diameter=args.diameter, use_model=bool(getattr(args, "model_check", False))
    )
    return StackSegmenter(backend, settings, embeddings)
