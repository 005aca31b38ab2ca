"""The automatic segmenter: proposals -> decoding -> filtering -> one instance map.

:class:`AutomaticSegmenter` runs the pipeline of :mod:`napari_sam.automatic`
on one 2D image (:meth:`~AutomaticSegmenter.iter_segment`) or slice by slice
on a volume with objects linked across slices
(:meth:`~AutomaticSegmenter.iter_segment_volume`). Both are jobs
(:mod:`napari_sam.jobs`): generators of :class:`~napari_sam.jobs.Progress`
that return an :class:`AutoResult`; ``segment`` and ``segment_volume`` drive
them with a progress callback and a :class:`~napari_sam.jobs.Cancel` token.

Coordinates are (row, col) pixels; boxes (r0, c0, r1, c1) inclusive; images
are float32 in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..cache import content_hash
from ..embeddings import CropEmbeddings
from ..errors import InputError
from ..geometry import Crop, box_of_mask
from ..jobs import Cancel, Job, Progress, ProgressCallback, drive
from ..models.base import Backend, Embedding
from ..tiling import TileGrid
from ..zoom import extent_boxes, zoom_crop
from .linking import link_slices
from .masks import (
    Candidate,
    candidates_from_logits,
    filter_candidates,
    non_max_suppression,
    resolve_overlaps,
    unanswered_regions,
)
from .mosaic import iter_decode_in_mosaics
from .proposals import (
    Proposals,
    box_grid,
    estimate_object_diameter,
    estimate_polarity,
    gray_image,
    point_grid,
    refine_diameter,
    structure_proposals,
)
from .settings import AutoSettings
from .split_check import apply_splits, judge_split, split_requests
from .splits import split_hypotheses


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


@dataclass(frozen=True)
class _Plan:
    """What one 2D run decided before decoding: proposal kind, polarity,
    object diameter (pixels), size bounds (pixels) and the tile grid."""

    kind: str
    polarity: str
    diameter: float
    min_size: int
    max_size: int
    grid: TileGrid


class AutomaticSegmenter:
    """Segment every object of an image with a promptable model.

    backend: a loaded model; settings: :class:`AutoSettings` (defaults for
    microscopy; :meth:`AutoSettings.for_ct` for CT).
    embeddings: a shared :class:`CropEmbeddings` (tiles and zoom crops are
    cached there; re-running with other thresholds costs no encoder run).
    """

    def __init__(
        self, backend: Backend, settings: AutoSettings | None = None, embeddings: CropEmbeddings | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings or AutoSettings()
        self.embeddings = embeddings if embeddings is not None else CropEmbeddings(backend, max_in_memory=64)

    # ------------------------------------------------------------------ helpers
    def proposal_kind(self) -> str:
        kind = self.settings.proposals
        if kind == "auto":
            return "point-grid" if self.backend.supports_points else "blobs"
        if kind == "point-grid" and not self.backend.supports_points:
            raise InputError(
                f"proposals 'point-grid': model {self.backend.name!r} takes boxes only; "
                "use 'blobs', 'regions' or 'box-grid'"
            )
        return kind

    def _min_size(self, kind: str, diameter: float) -> int:
        if self.settings.min_size is not None:
            return int(self.settings.min_size)
        if kind.startswith("regions"):
            return 200
        return max(4, int(0.2 * np.pi * (diameter / 2.0) ** 2))

    def _plan(self, gray: np.ndarray) -> _Plan:
        st = self.settings
        H, W = gray.shape
        kind = self.proposal_kind()
        polarity = estimate_polarity(gray) if st.polarity == "auto" else st.polarity
        diameter = st.object_diameter
        if diameter is None:
            if kind.startswith("regions"):
                diameter = max(8.0, min(H, W) / 16.0)
            else:
                diameter = refine_diameter(gray, estimate_object_diameter(gray, polarity), polarity)
        return _Plan(
            kind,
            polarity,
            float(diameter),
            self._min_size(kind, diameter),
            int(st.max_size_fraction * H * W),
            TileGrid((H, W), st.tile_shape, st.halo),
        )

    def _proposals(self, gray: np.ndarray, plan: _Plan) -> tuple[Proposals, Proposals | None]:
        """The prompts of one image, and the structure proposals (with their
        region map) they came from, if any."""
        st = self.settings
        if plan.kind == "point-grid":
            tiles = plan.grid.tiles
            return Proposals(
                points=np.concatenate([point_grid(t.shape, st.points_per_side) + t.offset for t in tiles])
            ), None
        structure, parts = None, []
        base = plan.kind.split("+")[0]
        if base in ("blobs", "regions"):
            structure = structure_proposals(gray, base, plan.diameter, plan.polarity, plan.min_size, plan.max_size)
            parts.append(structure.boxes)
        if plan.kind.endswith("box-grid"):
            parts.append(box_grid(gray.shape, tuple(s * plan.diameter for s in st.box_grid_sides)))
        return Proposals(boxes=np.concatenate(parts)), structure

    # ------------------------------------------------------------------ 2D
    def segment(
        self,
        image01: np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
        image_key: str | None = None,
    ) -> AutoResult:
        """Segment one 2D image; image01: (H, W) or (H, W, 3) float32 in [0, 1].

        progress: called with each :class:`~napari_sam.jobs.Progress`; cancel:
        checked between steps (:class:`~napari_sam.jobs.Cancelled` when set).
        """
        return drive(self.iter_segment(image01, image_key=image_key), progress, cancel, "automatic segmentation")

    def iter_segment(self, image01: np.ndarray, image_key: str | None = None) -> Job[AutoResult]:
        """:meth:`segment` as a job: a generator of :class:`~napari_sam.jobs.Progress`
        (for napari's thread_worker: abortable between steps) that returns the
        :class:`AutoResult`."""
        image01 = np.asarray(image01, np.float32)
        gray = gray_image(image01)
        if min(gray.shape) < 8:
            raise InputError(f"image of shape {gray.shape}: too small for automatic segmentation")
        timings: dict[str, float] = {}
        enc0 = self.embeddings.encoder_calls
        t0 = time.perf_counter()
        yield Progress(0, 1, "proposals")
        plan = self._plan(gray)
        props, structure = self._proposals(gray, plan)
        timings["proposals"] = time.perf_counter() - t0
        if structure is not None and plan.kind == "blobs" and self.settings.model_role == "split-check":
            return (yield from self._split_checked(gray, structure.regions, plan, timings, t0))
        key = image_key if image_key is not None else content_hash(image01)
        clock = {"encoder": 0.0, "decoder": 0.0}
        cands: list[Candidate] = yield from self._decode_all(image01, key, props, plan.grid, clock, "")
        n_prompts = yield from self._refine(image01, key, props, cands, plan.grid, clock)
        timings.update(clock)
        t = time.perf_counter()
        labels, scores = self._postprocess(cands, structure, plan)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        yield Progress(1, 1, "done")
        return AutoResult(
            labels=labels,
            scores=scores,
            proposals=n_prompts,
            timings=timings,
            diameter=plan.diameter,
            encoder_calls=self.embeddings.encoder_calls - enc0,
            candidates=len(cands),
        )

    def _split_checked(
        self, gray: np.ndarray, regions: np.ndarray, plan: _Plan, timings: dict[str, float], t0: float
    ) -> Job[AutoResult]:
        """Blob outlines, with the cuts the model confirms (model_role "split-check")."""
        st = self.settings
        t = time.perf_counter()
        hyps = split_hypotheses(regions, plan.diameter, plan.min_size, st.split_concavity)
        requests = split_requests(hyps, st.split_crop_scale)
        timings["proposals"] += time.perf_counter() - t
        clock = {"encoder": 0.0, "decoder": 0.0}
        answers = yield from iter_decode_in_mosaics(
            self.backend, [gray], requests, st.mosaic_side, st.batch_size, clock, "checking splits"
        )
        timings.update(clock)
        t = time.perf_counter()
        verdicts = [
            judge_split(h, r, a, st.split_quality, st.split_min_iou) for h, r, a in zip(hyps, requests, answers)
        ]
        labels = apply_splits(regions, hyps, verdicts)
        scores = np.full(int(labels.max(initial=0)), np.nan)
        next_id = int(regions.max(initial=0)) + 1
        for h, v in zip(hyps, verdicts):
            scores[h.region - 1] = v.scores[0] if v.accepted else v.whole_score
            if v.accepted:
                scores[next_id - 1 : next_id - 2 + h.n_parts] = v.scores[1:]
                next_id += h.n_parts - 1
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        yield Progress(1, 1, "done")
        n_mosaics = int(np.ceil(len(requests) / st.mosaic_side**2))
        return AutoResult(
            labels=labels,
            scores=scores.tolist(),
            proposals=sum(len(r.boxes) for r in requests),
            timings=timings,
            diameter=plan.diameter,
            encoder_calls=n_mosaics,
            candidates=len(hyps),
        )

    def _postprocess(
        self, cands: list[Candidate], structure: Proposals | None, plan: _Plan
    ) -> tuple[np.ndarray, list[float]]:
        """Filter, add the unanswered blobs, suppress duplicates, paint one label map."""
        st = self.settings
        kept = filter_candidates(cands, st, plan.min_size, plan.max_size)
        if st.keep_unanswered and structure is not None and structure.regions is not None:
            kept += unanswered_regions(structure.regions, kept)
        kept = non_max_suppression(kept, st.nms_iou)
        return resolve_overlaps(kept, plan.grid.shape, plan.min_size)

    def _refine(
        self,
        image01: np.ndarray,
        image_key: str,
        props: Proposals,
        cands: list[Candidate],
        grid: TileGrid,
        clock: dict[str, float],
    ) -> Job[int]:
        """Re-ask with the box of each good mask that left its box (a box model
        answers a tight box best), ``refine_rounds`` times; the new candidates
        are appended to ``cands``. Returns the number of prompts decoded."""
        st = self.settings
        if props.boxes is None:
            return len(props)
        boxes, round_start = props.boxes, 0
        for rnd in range(st.refine_rounds):
            new_boxes = []
            for c in cands:
                if c.prompt < round_start or c.score < st.quality_threshold or c.box_iou >= 0.9:
                    continue
                r0, c0, r1, c1 = box_of_mask(c.mask)
                new_boxes.append((r0 + c.top, c0 + c.left, r1 + c.top, c1 + c.left))
            if not new_boxes:
                break
            first = round_start = len(boxes)
            boxes = np.concatenate([boxes, np.asarray(new_boxes, np.float32)])
            cands += yield from self._decode_all(
                image01,
                image_key,
                Proposals(boxes=boxes),
                grid,
                clock,
                f"refining ({rnd + 1}) ",
                only=range(first, len(boxes)),
            )
        return len(boxes)

    def _views(self, props: Proposals, grid: TileGrid, only) -> dict[Crop, list[int]]:
        """Which embedding each prompt is decoded on: its tile, or its zoom crop."""
        st = self.settings
        views: dict[Crop, list[int]] = {}
        tiles = grid.tiles
        for i in only if only is not None else range(len(props)):
            if props.boxes is not None:
                box = props.boxes[i]
                crop = zoom_crop(box, grid.shape, st.zoom) if st.zoom is not None else None
                view = crop if crop is not None else tiles[grid.tile_for_box(box)]
            else:
                view = tiles[grid.owner(*props.points[i])]
            views.setdefault(view, []).append(i)
        return views

    def _decode_all(
        self,
        image01: np.ndarray,
        image_key: str,
        props: Proposals,
        grid: TileGrid,
        clock: dict[str, float],
        label: str,
        only=None,
    ) -> Job[list[Candidate]]:
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
            yield Progress(step, n_steps, f"{label}embedding {k + 1}/{len(views)}")
            for b0 in range(0, len(idx), st.batch_size):
                t = time.perf_counter()
                batch = idx[b0 : b0 + st.batch_size]
                cands += self._decode(emb, view, props, batch, grid.shape)
                clock["decoder"] += time.perf_counter() - t
                step += 1
                done_prompts += len(batch)
                yield Progress(step, n_steps, f"{label}decoding {done_prompts}/{n_prompts} prompts")
        return cands

    @torch.inference_mode()
    def _decode(
        self, emb: Embedding, view: Crop, props: Proposals, batch: list[int], shape: tuple[int, int]
    ) -> list[Candidate]:
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
            low, scores = self.backend.decode_low_res(
                emb, points_rc=pts, point_labels=np.ones(pts.shape[:2], np.int64), multimask=True
            )
            prompt_boxes = None
        logits = self.backend.upsample(low, emb).float().cpu().numpy()
        return candidates_from_logits(
            logits,
            scores.float().cpu().numpy(),
            view,
            batch,
            prompt_boxes,
            st.stability_offset,
            st.box_clip_margin,
            shape,
        )

    # ------------------------------------------------------------------ 3D, slice by slice
    def iter_segment_volume(
        self,
        volume01: Callable[[int], np.ndarray] | np.ndarray,
        n_slices: int | None = None,
        volume_key: str | None = None,
    ) -> Job[AutoResult]:
        """Segment every slice of a volume and link objects across slices.

        volume01: (z, H, W[, 3]) float32 in [0, 1], or a function z -> that
        slice (windowing lazily); n_slices: needed with a function.
        A job: yields :class:`~napari_sam.jobs.Progress` per step of each
        slice; returns an AutoResult with (z, H, W) labels in which each 3D
        object has one id.
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
            yield Progress(z + 1, n, f"slice {z + 1}/{n}")
        t = time.perf_counter()
        labels = link_slices(np.stack(per_slice), self.settings.link_iou)
        timings["linking"] = time.perf_counter() - t
        return AutoResult(
            labels=labels,
            scores=[],
            proposals=proposals,
            timings=timings,
            diameter=diam,
            encoder_calls=enc,
            candidates=cands,
        )

    def segment_volume(
        self,
        volume01,
        n_slices: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: Cancel | None = None,
        volume_key: str | None = None,
    ) -> AutoResult:
        """:meth:`iter_segment_volume`, driven to the end (see :meth:`segment`)."""
        return drive(
            self.iter_segment_volume(volume01, n_slices, volume_key), progress, cancel, "automatic segmentation"
        )


def _forward(job: Job[AutoResult], z: int, n: int) -> Job[AutoResult]:
    """Re-yield a slice's events as (z, n) progress with the slice's stage in the message."""
    while True:
        try:
            ev = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(z, n, f"slice {z + 1}/{n}: {ev.stage}")
