"""Prompted segmentation of a volume larger than memory, into a zarr label map.

``napari-sam segment`` on a zarr / OME-Zarr / TIFF volume
(:mod:`napari_sam.lazy_volume`) runs the same replay of the prompts file
through the annotation model as on a volume in memory
(:func:`napari_sam.annotation.replay.replay`): the same key-slice rule,
propagation, adaptation and corrections, so the objects are the same. Two
things differ, both about memory:

- **Slices are read lazily.** Every slice a key slice or a propagation
  reaches is read from the file when its embedding is needed (through the
  one :class:`~napari_sam.embeddings.EmbeddingProvider`, whose disk cache
  keys the volume by a content hash computed slab by slab); decisions made
  from the volume's intensities (the automatic window, CT or not) are made
  on a bounded strided sample (:func:`napari_sam.lazy_volume.sample_volume`:
  the whole volume when it is small, so that the result is then exactly the
  in-memory one).
- **The label map is never held whole.** The annotation model here
  (:class:`UnpaintedAnnotation`) keeps the objects' per-slice results but
  paints no label map; the map is painted at the end by the one overlap rule
  (:func:`napari_sam.overlaps.resolve_overlaps_into`) straight into a zarr
  array, one object's bounding box at a time, each region read back after
  it is written (:func:`write_zarr_labels`).

Memory is therefore bounded by the slices (one (rows, cols) mask per slice
each object reaches, the embeddings in the provider's memory tier, one
object's bounding box while painting), not by the number of slices in the
volume. A single 2D slice larger than memory is not: tile it with
``napari-sam auto`` (:mod:`napari_sam.large`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .annotation import Annotation, ChangeSet
from .annotation.replay import object_window, replay
from .embeddings import CropEmbeddings, EmbeddingProvider, SliceEmbeddings
from .errors import InputError, OutputError
from .intensity import Window
from .io import Geometry, Volume, default_color
from .jobs import ProgressCallback
from .lazy_volume import content_hash, sample_volume
from .models.base import Backend
from .overlaps import ObjectMasks, resolve_overlaps, resolve_overlaps_into
from .prompts import PromptsFile
from .propagation import PropagationState
from .segmentation import key_choice_for
from .zoom import ZoomSettings

__all__ = [
    "LazySegmentation",
    "UnpaintedAnnotation",
    "label_chunks",
    "lazy_embeddings",
    "segment_lazy",
    "write_zarr_labels",
]


class UnpaintedAnnotation(Annotation):
    """An :class:`~napari_sam.annotation.Annotation` that keeps objects, key slices
    and results but never paints a label map (its ``labels`` read as zeros,
    without memory). During a replay the painted model's map holds nothing
    either (it is painted when the replay's step closes), so a replay through
    this model decodes and propagates exactly as through the painted one."""

    def __init__(
        self, shape: tuple[int, int, int], spacing_zyx=(1.0, 1.0, 1.0), is_2d: bool = False, key_choice: str = "single"
    ) -> None:
        super().__init__((1, 1, 1), spacing_zyx, False, key_choice)
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.is_2d = bool(is_2d)
        self._labels = np.broadcast_to(np.uint16(0), self.shape)

    def _repaint(self, objects: set[int], table: bool, what: str) -> ChangeSet:
        return ChangeSet(self.shape, frozenset(objects), table=table, what=what)


@dataclass
class LazySegmentation:
    """The objects of a replay, before painting.

    shape: (z, y, x); objects: each object's masks (:class:`~napari_sam.overlaps.ObjectMasks`),
    in the prompts file's order; names/colors per id; windows: id -> Window;
    states: id -> PropagationState of propagated objects; slices: id ->
    sorted slices holding the object; cancelled: stopped early.
    """

    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    objects: list[ObjectMasks]
    names: dict[int, str]
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    states: dict[int, PropagationState] = field(default_factory=dict)
    slices: dict[int, list[int]] = field(default_factory=dict)
    cancelled: bool = False

    def label_map(self) -> np.ndarray:
        """The (z, y, x) uint16 label map in memory (for small outputs)."""
        return resolve_overlaps(self.shape, self.objects, self.spacing_zyx)

    def paint(self, labels: Any, best: Any) -> None:
        """Paint into array-likes (e.g. zarr): see :func:`napari_sam.overlaps.resolve_overlaps_into`."""
        resolve_overlaps_into(labels, best, self.objects, self.spacing_zyx)


def _resolved_windows(prompts: PromptsFile, sample: Volume, override: Any) -> PromptsFile:
    """The prompts with every object's window resolved on ``sample`` (the rule of
    :func:`~napari_sam.annotation.replay.object_window`), so that the replay never
    reads the whole volume for a window."""
    objects = [replace(o, window=object_window(sample, o, prompts.window, override)) for o in prompts.objects]
    return replace(prompts, objects=objects)


def lazy_embeddings(
    volume: Volume, backend: Backend, cache_dir: str | Path | None = None, max_in_memory: int = 16
) -> tuple[Callable[[Window, int], SliceEmbeddings], EmbeddingProvider]:
    """(window, axis) -> SliceEmbeddings of a lazily read ``volume`` on one provider, and
    that provider. The volume's content hash (the cache key) is computed once, slab by slab."""
    provider = EmbeddingProvider(backend, cache_dir, max_in_memory=max_in_memory)
    digest: list[str] = []

    def factory(win: Window, axis: int) -> SliceEmbeddings:
        if provider.cache_dir is not None and not digest:
            digest.append(content_hash(volume.array))
        return SliceEmbeddings(
            backend, volume.array, win, axis, image_hash=digest[0] if digest else None, provider=provider
        )

    return factory, provider


def segment_lazy(
    volume: Volume,
    prompts: PromptsFile,
    backend: Backend,
    window: Any = None,
    progress: ProgressCallback | None = None,
    embeddings_for: Callable[[Window, int], SliceEmbeddings] | None = None,
    cancel: Any = None,
    zoom: ZoomSettings | None = None,
    crop_embeddings: CropEmbeddings | None = None,
) -> LazySegmentation:
    """Segment a lazily read ``volume`` from ``prompts`` (arguments as
    :func:`napari_sam.segmentation.segment_volume`); nothing is painted yet.

    volume: a :class:`~napari_sam.io.Volume` whose array reads slices on
    demand (:func:`napari_sam.lazy_volume.open_volume`), or any in-memory one.
    embeddings_for: default :func:`lazy_embeddings` in memory only.
    """
    sample = sample_volume(volume)
    prompts = _resolved_windows(prompts, sample, window)
    model = UnpaintedAnnotation(volume.shape, volume.geometry.scale_zyx, volume.is_2d, key_choice_for(sample))
    if embeddings_for is None:
        embeddings_for = lazy_embeddings(volume, backend)[0]
    outcome = replay(
        model,
        volume,
        prompts,
        backend,
        progress=progress,
        embeddings_for=embeddings_for,
        cancel=cancel,
        zoom=zoom,
        crop_embeddings=crop_embeddings,
    )
    out = LazySegmentation(
        volume.shape,
        volume.geometry.scale_zyx,
        [m for o in model.objects if (m := o.masks()) is not None],
        {o.id: o.name for o in prompts.objects},
        {o.id: o.color for o in prompts.objects if o.color},
        outcome.windows,
        cancelled=outcome.cancelled,
    )
    for o in prompts.objects:
        obj = model.object(o.id)
        if o.propagate and obj.state is not None:
            out.states[o.id] = obj.state
        present = obj.slices_holding() if o.propagate else sorted(obj.state.results) if obj.state else []
        if present:
            out.slices[o.id] = present
    return out


def label_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Chunks of a zarr label map: one slice deep, at most 1024 x 1024 in plane."""
    return (1, min(shape[1], 1024), min(shape[2], 1024))


class _ReadBack:
    """A zarr array whose every region write is read back and compared."""

    def __init__(self, arr: Any, name: Path) -> None:
        self._arr, self._name = arr, name
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._arr[key]

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self._arr[key] = value
        if not np.array_equal(np.asarray(self._arr[key]), value):
            raise OutputError(f"{self._name}: a region of the label map does not read back as written; nothing written")


def label_document(seg: LazySegmentation, geometry: Geometry, extra: dict[str, Any] | None = None) -> dict:
    """The sidecar document of a zarr label map (kept in its attributes): as a
    plain label map's JSON sidecar (id -> name/colour, geometry, shape)."""
    doc = {
        "labels": {
            str(i): {"name": seg.names.get(i, f"object_{i}"), "color": list(seg.colors.get(i, default_color(i)))}
            for i in sorted(seg.names)
        },
        "geometry": geometry.to_json(),
        "shape_zyx": list(seg.shape),
    }
    doc.update(extra or {})
    return doc


def write_zarr_labels(
    path: str | Path,
    seg: LazySegmentation,
    geometry: Geometry,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Paint ``seg`` into a new zarr array at ``path`` (uint16, :func:`label_chunks`),
    one object's bounding box at a time, every region read back; the sidecar
    document (:func:`label_document`) goes into its attributes. Written under a
    temporary name in the same folder and renamed when complete (an existing
    output needs ``overwrite`` and is replaced only then); nothing is left
    behind on failure."""
    import zarr

    out = Path(path)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = out.with_name(f".{out.name}.{token}.partial")
    scratch = out.with_name(f".{out.name}.{token}.depth.partial")
    old = out.with_name(f".{out.name}.{token}.old")
    chunks = label_chunks(seg.shape)
    try:
        labels = zarr.open_array(str(tmp), mode="w", shape=seg.shape, chunks=chunks, dtype="uint16", fill_value=0)
        best = zarr.open_array(str(scratch), mode="w", shape=seg.shape, chunks=chunks, dtype="float32", fill_value=-1.0)
        seg.paint(_ReadBack(labels, out), best)
        labels.attrs.update(label_document(seg, geometry, extra))
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)
            raise
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the label map ({exc.strerror or exc}); nothing written") from None
    finally:
        for p in (tmp, scratch, old):
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
    return out
