"""One segmentation session: an image layer, a model, the prompt layers,
the objects and their propagation, wired to napari events.

:class:`SegmentSession` is what the widget drives (and what the GUI tests
call): it reads prompts from the layers, asks the core for predictions in the
background, shows the preview, commits it, propagates, undoes and exports.
Segmentation itself is the core's: :class:`napari_sam.predictor.SlicePredictor`
for a slice, :class:`napari_sam.propagation.Propagator` for the volume.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..cache import content_hash
from ..errors import InputError, NapariSamError
from ..io import write_labels
from ..models.base import Backend
from ..predictor import Prediction, SlicePredictor
from ..prompts import SlicePrompt
from ..zoom import CropEmbeddings
from . import _prompt_layers as pl
from ._background import STORES, DecodeRunner, EmbeddingQueue, SharedSliceEmbeddings
from ._geometry import layer_metadata
from ._image_source import ImageSource
from ._objects import ObjectTable, SegmentedObject
from ._progress_panel import update_napari_progress

#: colour of the uncommitted preview (distinct from every object colour)
PREVIEW_COLOR = (0.0, 0.9, 1.0, 1.0)
#: wait this long after the last slice / contrast change before embedding (ms)
SLICE_DEBOUNCE_MS = 200
WINDOW_DEBOUNCE_MS = 400
#: undo steps remembered (napari's Labels keeps 100)
MAX_UNDO = 100


def notify(level: str, message: str) -> None:
    """A napari notification (``level``: info, warning, error)."""
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[level](message)


@dataclass
class _Request:
    """A decode in flight: what it was asked for, and when the prompt changed."""

    version: int
    pos: pl.SlicePosition
    store: SharedSliceEmbeddings
    prompt: SlicePrompt
    t_change: float
    t_submit: float = 0.0
    t_decode_start: float = 0.0
    t_decode_end: float = 0.0


@dataclass
class _Op:
    """One undoable operation (aligned 1:1 with the Labels layer's undo items)."""

    what: str
    objects: ObjectTable


class SegmentSession(QObject):
    """Interactive SAM segmentation of one image layer.

    viewer: the napari viewer; source: the checked image (:class:`ImageSource`);
    backend: a loaded model; labels_layer: an existing Labels layer to continue
    (its objects are adopted), else one is added; cache_dir: the embeddings'
    disk store (see :func:`napari_sam.cache.default_cache_dir`), None for
    memory only. Layers added to the viewer: ``points`` (+/- clicks),
    ``boxes``, ``preview`` and ``labels`` (the result, one id per object).
    Coordinates are the image's voxel indices.
    """

    status = Signal(str)
    preview_changed = Signal()
    objects_changed = Signal()
    propagation_started = Signal()
    #: (slice index, done, total) after every propagated slice
    propagation_progress = Signal(int, int, int)
    propagation_finished = Signal(bool)
    embedding_ready = Signal(int)

    def __init__(self, viewer: Any, source: ImageSource, backend: Backend, parent: QObject | None = None,
                 labels_layer: Any = None, cache_dir: str | Path | None = None) -> None:
        super().__init__(parent)
        #: where slice embeddings are kept on disk (None: in memory only)
        self.cache_dir = cache_dir
        self.viewer = viewer
        self.source = source
        self.backend = backend
        self.objects = ObjectTable()
        self.prediction: Prediction | None = None
        self.prediction_pos: pl.SlicePosition | None = None
        self.prediction_prompt: SlicePrompt | None = None
        self.candidate = 0
        #: seconds from a prompt change to its preview being on the canvas
        self.latencies: list[float] = []
        #: the same, in parts (seconds): reading the prompt from the layers, waiting for the
        #: decode thread, decoding, handing the result to the GUI and drawing the preview
        self.latency_parts: list[dict[str, float]] = []
        #: previews shown so far (a counter for scripts and tests)
        self.previews_shown = 0
        self._version = 0
        self._shown_version = 0
        self._waiting: _Request | None = None
        self._asked: tuple | None = None  # the prompt of the preview shown or being decoded
        self._volume_hash = content_hash(source.volume)
        #: small objects are decoded on a magnified crop around the prompt (napari_sam.zoom)
        self.zoom = True
        self._decode_predictor = SlicePredictor(backend, zoom=True, crop_embeddings=CropEmbeddings(
            backend, provider=STORES.provider(backend, cache_dir)))
        self._ops: list[_Op] = []
        self._writing = False
        self._preview_plane: pl.SlicePosition | None = None
        self._prop_worker: Any = None
        self._prop_pbar: Any = None
        self._prop_object: SegmentedObject | None = None
        self._prop_before: dict[int, np.ndarray] = {}
        self._prop_cancelled = False
        #: object id -> corrections applied so far (their negative clicks keep carving)
        self._corrections: dict[int, list] = {}
        self._closed = False
        self._connections: list[tuple[Any, Any]] = []
        #: asked when a click or box is added: True if the press only gave focus back (it is dropped)
        self.focus_click: Any = None

        self._paint_events = 0
        self._window = source.window()
        self.queue = EmbeddingQueue(self)
        self.queue.ready.connect(self._on_embedding_ready)
        self.decoder = DecodeRunner(self)
        self.decoder.done.connect(self._on_decoded)

        self._add_layers(labels_layer)
        self.pos = self._position_or_none() or pl.SlicePosition(0, 0)
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.timeout.connect(self._on_slice_settled)
        self._window_timer = QTimer(self)
        self._window_timer.setSingleShot(True)
        self._window_timer.timeout.connect(self._on_window_settled)
        self._connect(viewer.dims.events.current_step, self._on_dims)
        self._connect(viewer.dims.events.order, self._on_dims)
        self._connect(viewer.dims.events.ndisplay, self._on_dims)
        self._connect(source.layer.events.contrast_limits, self._on_contrast)
        self._connect(self.points.events.data, self._on_points_changed)
        self._connect(self.boxes.events.data, self._on_boxes_changed)
        self._connect(self.labels.events.paint, self._on_painted)
        self.queue.set_store(self.store())
        self.queue.request(self.pos.index)

    # ------------------------------------------------------------------ setup
    def _connect(self, emitter: Any, callback: Any) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _add_layers(self, labels_layer: Any) -> None:
        from napari.layers import Labels

        src = self.source
        name = src.layer.name
        if labels_layer is None:
            labels_layer = Labels(np.zeros(src.layer_shape, np.uint16), name=f"{name} labels",
                                  opacity=0.55, metadata=layer_metadata(src.geometry, source=self._source_path()),
                                  **src.transform_kwargs())
            self.viewer.add_layer(labels_layer)
        elif tuple(labels_layer.data.shape) != src.layer_shape:
            raise InputError(f"labels layer {labels_layer.name!r} has shape {labels_layer.data.shape}, "
                             f"the image {src.layer_shape}")
        self.labels = labels_layer
        self._adopt_existing_objects()
        from napari.layers import Points, Shapes
        from napari.utils.colormaps import DirectLabelColormap

        preview = self._reusable(f"{name} SAM preview", Labels)
        if preview is None or tuple(preview.data.shape) != src.layer_shape:
            preview = self.viewer.add_layer(Labels(np.zeros(src.layer_shape, np.uint8), name=f"{name} SAM preview",
                                                   opacity=0.5, **src.transform_kwargs()))
        preview.data[...] = 0
        preview.colormap = DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: (0, 0, 0, 0), 1: PREVIEW_COLOR})
        preview.editable = False
        preview.refresh()
        self.preview = preview
        boxes = self._reusable(f"{name} SAM boxes", Shapes)
        self.boxes = boxes or self.viewer.add_layer(pl.make_boxes_layer(src, f"{name} SAM boxes"))
        points = self._reusable(f"{name} SAM clicks", Points)
        if points is not None and "sign" not in points.features:
            points = None
        self.points = points or self.viewer.add_layer(pl.make_points_layer(src, f"{name} SAM clicks"))
        # Ctrl+Z on the labels layer undoes through the session (keeps the key slices in step)
        from app_model.types import KeyCode, KeyMod

        self._layer_keys = [KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ]
        self.labels.bind_key(self._layer_keys[0], lambda _layer: self.undo(), overwrite=True)
        self.labels.bind_key(self._layer_keys[1], lambda _layer: notify(
            "info", "napari-sam: redo is not available on this layer; commit or propagate again"), overwrite=True)

    def _reusable(self, name: str, kind: type) -> Any:
        """A layer left by an earlier session on this image (same name, type and dimensions)."""
        lay = self.viewer.layers[name] if name in self.viewer.layers else None
        ok = isinstance(lay, kind) and lay.ndim == self.source.layer.ndim
        return lay if ok else None

    def _adopt_existing_objects(self) -> None:
        """Objects named in an existing labels layer's metadata (e.g. reopened from our writer)."""
        from ._writer import object_table

        names, colors = object_table(self.labels.metadata)
        data = np.asarray(self.labels.data)
        present = set(int(v) for v in np.unique(data) if v)
        for oid in sorted(set(names) | present):
            if 1 <= oid <= 65535:
                obj = self.objects.add(names.get(oid), object_id=oid, color=colors.get(oid))
                if not self.source.is_2d and oid in present:
                    obj.state = self._adopted_state(data == oid)
        if self.objects.objects:
            self.objects.current_id = self.objects.objects[0].id
            self.objects.store_in(self.labels)

    def _adopted_state(self, mask: np.ndarray) -> Any:
        """A propagation state for an object found in an existing labels layer:
        every slice holding it is a key slice the user accepted (slices along
        axis 0), so a later commit corrects only its own slice's neighbourhood."""
        from ..propagation import PropagationState

        state = PropagationState(shape=self.source.shape, axis=0)
        for i in np.flatnonzero(mask.any(axis=(1, 2))):
            state.set_user_mask(int(i), mask[i])
            state.results[int(i)] = mask[i].copy()
        state.dirty.clear()
        state.dirty_keys.clear()
        return state

    def close(self) -> None:
        """Stop background work and disconnect from the viewer (layers stay)."""
        if self._closed:
            return
        self._closed = True
        self.cancel_propagation()
        self.queue.cancel()
        self.decoder.shutdown()
        self._slice_timer.stop()
        self._window_timer.stop()
        for emitter, cb in self._connections:
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connections.clear()
        for key in self._layer_keys:  # back to napari's own undo / redo on the labels layer
            try:
                self.labels.bind_key(key, None, overwrite=True)
            except (KeyError, TypeError, ValueError):
                pass

    # ------------------------------------------------------------------ where we are
    def _where(self, index: int) -> str:
        """"slice 12" in a volume, "the image" for a 2D image (status messages)."""
        return "the image" if self.source.is_2d else f"slice {index}"

    def _position_or_none(self) -> pl.SlicePosition | None:
        try:
            return pl.current_position(self.viewer, self.source)
        except InputError:
            return None

    def store(self) -> SharedSliceEmbeddings:
        """The embeddings for the current window and slicing axis (created on first use)."""
        return STORES.get(self.backend, self.source.volume, self._volume_hash, self._window, self.pos.axis,
                          cache_dir=self.cache_dir)

    def _on_dims(self, event: Any = None) -> None:
        self._slice_timer.start(SLICE_DEBOUNCE_MS)
        pos = self._position_or_none()
        if pos is not None and pos != self.pos:
            self.pos = pos
            self._clear_preview()
            self._asked = None
            self._version += 1

    def _on_slice_settled(self) -> None:
        pos = self._position_or_none()
        if pos is None:
            return
        self.pos = pos
        self.queue.set_store(self.store())
        if not self.queue.request(pos.index):
            self.status.emit(f"embedding {self._where(pos.index)} in the background...")
        self.update_preview()

    def _on_contrast(self, event: Any = None) -> None:
        self._window_timer.start(WINDOW_DEBOUNCE_MS)

    def _on_window_settled(self) -> None:
        window = self.source.window()
        if window.key() == self._window.key():
            return
        self._window = window
        self.queue.set_store(self.store())
        self.status.emit(f"window {window.lo:g}..{window.hi:g}: the model now sees these contrast limits")
        self.queue.request(self.pos.index)
        self.update_preview()

    # ------------------------------------------------------------------ prompts -> preview
    def _on_points_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if action in ("adding", "removing"):
            return
        if action == "added" and self.focus_click is not None and self.focus_click():
            QTimer.singleShot(0, lambda: pl.drop_last(self.points))  # it only gave focus back
            return
        self.update_preview()

    def _on_boxes_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if action in ("adding", "removing"):
            return
        if action == "added":
            stray = pl.is_stray_box(self.boxes) or (self.focus_click is not None and self.focus_click())
            QTimer.singleShot(0, (lambda: pl.drop_last(self.boxes)) if stray else self._keep_newest_box)
            if stray:
                return
        self.update_preview()

    def _keep_newest_box(self) -> None:
        if self._closed:
            return
        pos = self._position_or_none()
        if pos is not None and pl.keep_newest_box(self.boxes, self.source, pos):
            self.update_preview()

    def current_prompt(self) -> SlicePrompt | None:
        """The clicks and box on the current slice, in (row, col) of the slice."""
        pos = self._position_or_none()
        if pos is None:
            return None
        return pl.slice_prompt(self.points, self.boxes, self.source, pos)

    def update_preview(self) -> None:
        """Re-predict the current slice from its prompts (decoder only, in the background)."""
        if self._closed:
            return
        t_change = time.perf_counter()
        pos = self._position_or_none()
        if pos is None:
            return
        self.pos = pos
        prompt = pl.slice_prompt(self.points, self.boxes, self.source, pos)
        key = None if prompt is None else (pos, id(self.store()), json.dumps(prompt.to_json()),
                                           self.objects.current_id)
        if key is not None and key == self._asked:
            return  # same prompt as the preview shown or being computed (e.g. a selection change)
        self._asked = None
        self._version += 1
        if prompt is None:
            self._waiting = None
            self.prediction = None
            self._clear_preview()
            return
        if prompt.only_negative:
            self._waiting = None
            self.prediction = None
            self.prediction_pos, self.prediction_prompt = pos, prompt
            self._clear_preview()
            self.status.emit("only negative clicks: commit marks this slice as 'object absent' (stops propagation)")
            return
        store = self.store()
        req = _Request(self._version, pos, store, prompt, t_change)
        if store.peek(pos.index) is None:
            self._waiting = req
            self.queue.set_store(store)
            self.queue.request(pos.index)
            self.status.emit(f"computing the embedding of {self._where(pos.index)}...")
            return
        self._submit(req)

    def _previous_mask(self, pos: pl.SlicePosition, prompt: SlicePrompt) -> np.ndarray | None:
        """The current object's mask on this slice when clicks correct it (SAM's refine loop)."""
        obj = self.objects.current
        if obj is None or prompt.box is not None or not np.any(prompt.labels == 1):
            return None
        plane = np.asarray(self.labels.data[self._plane_index(pos)]) == obj.id
        return plane if plane.any() else None

    def _submit(self, req: _Request) -> None:
        self._waiting = None
        self._asked = (req.pos, id(req.store), json.dumps(req.prompt.to_json()), self.objects.current_id)
        emb = req.store.peek(req.pos.index)
        previous = self._previous_mask(req.pos, req.prompt)
        predictor = self._decode_predictor

        zoom = self.zoom

        def job() -> Prediction:
            req.t_decode_start = time.perf_counter()
            # the slice's pixels for the zoom path, windowed here on the decode thread
            predictor.set_embedding(emb, image=req.store.model_input(req.pos.index) if zoom else None)
            out = predictor.predict(prompt=req.prompt, previous=previous)
            req.t_decode_end = time.perf_counter()
            return out

        req.t_submit = time.perf_counter()
        self.decoder.submit(job, req)

    def _on_embedding_ready(self, store: SharedSliceEmbeddings, index: int) -> None:
        self.embedding_ready.emit(index)
        if index == self.pos.index and store is self.store() and self._waiting is None and not self.propagating:
            self.status.emit(f"{self._where(index)} ready: draw a box or click")
        w = self._waiting
        if w is not None and w.store is store and w.pos.index == index and w.pos == self.pos:
            self._submit(w)

    def _on_decoded(self, req: _Request, result: Prediction | None, error: Exception | None) -> None:
        if self._closed:
            return
        if error is not None:
            self._asked = None
            msg = str(error) if isinstance(error, NapariSamError) else f"{type(error).__name__}: {error}"
            notify("error" if not isinstance(error, NapariSamError) else "warning", f"napari-sam: {msg}")
            return
        if req.pos != self.pos or req.store is not self.store() or req.version <= self._shown_version:
            return
        self._shown_version = req.version
        self.prediction, self.prediction_pos, self.prediction_prompt = result, req.pos, req.prompt
        self.candidate = 0
        self._show_preview()
        now = time.perf_counter()
        self.latencies.append(now - req.t_change)
        self.latency_parts.append({"prompt": req.t_submit - req.t_change, "wait": req.t_decode_start - req.t_submit,
                                   "decode": req.t_decode_end - req.t_decode_start,
                                   "show": now - req.t_decode_end})
        self.previews_shown += 1
        k = len(result.masks)
        self.status.emit(f"{self._where(req.pos.index)}: candidate 1/{k} (score {float(result.scores[0]):.2f})")

    def _plane_index(self, pos: pl.SlicePosition) -> tuple:
        if self.source.is_2d:
            return (slice(None), slice(None))
        idx: list[Any] = [slice(None)] * 3
        idx[pos.axis] = pos.index
        return tuple(idx)

    def _show_preview(self) -> None:
        if self.prediction is None or self.prediction_pos is None:
            return
        self._clear_preview(refresh=False)
        mask = self.prediction.candidate(self.candidate)
        self.preview.data[self._plane_index(self.prediction_pos)] = mask.astype(np.uint8)
        self._preview_plane = self.prediction_pos
        self.preview.refresh()
        self.preview_changed.emit()

    def _clear_preview(self, refresh: bool = True) -> None:
        if self._preview_plane is not None:
            self.preview.data[self._plane_index(self._preview_plane)] = 0
            self._preview_plane = None
            if refresh:
                self.preview.refresh()
                self.preview_changed.emit()

    @property
    def preview_mask(self) -> np.ndarray | None:
        """The mask shown as preview on the current slice, (rows, cols) bool, or None."""
        if self.prediction is None or self.prediction_pos != self.pos:
            return None
        return self.prediction.candidate(self.candidate)

    def next_candidate(self) -> int:
        """Show the next candidate mask (ambiguity: part / whole). Returns its index."""
        if self.prediction is None:
            notify("info", "napari-sam: no preview yet: draw a box or click on the object first")
            return self.candidate
        self.candidate = (self.candidate + 1) % len(self.prediction.masks)
        self._show_preview()
        k = len(self.prediction.masks)
        self.status.emit(f"candidate {self.candidate + 1}/{k} (score {float(self.prediction.scores[self.candidate]):.2f})")
        return self.candidate

    def select_candidate(self, index: int) -> int:
        """Show candidate ``index`` (0-based, modulo their number) as the preview. Returns it."""
        if self.prediction is None:
            return self.candidate
        self.candidate = int(index) % len(self.prediction.masks)
        self._show_preview()
        return self.candidate

    def set_negative(self, negative: bool) -> None:
        """New clicks are negative (red) or positive (green)."""
        pl.set_negative(self.points, negative)

    @property
    def negative(self) -> bool:
        return pl.is_negative(self.points)

    def clear_prompts(self) -> None:
        """Remove the clicks and box on the current slice, and the preview."""
        pos = self._position_or_none()
        if pos is None:
            return
        pl.clear_slice(self.points, self.boxes, self.source, pos)
        self.prediction = None
        self._asked = None
        self._clear_preview()

    # ------------------------------------------------------------------ objects
    def add_object(self, name: str | None = None) -> SegmentedObject:
        obj = self.objects.add(name)
        self.objects.store_in(self.labels)
        self.objects_changed.emit()
        return obj

    def select_object(self, object_id: int) -> None:
        self.objects.get(object_id)
        self.objects.current_id = object_id
        self.labels.selected_label = object_id
        self.objects_changed.emit()

    def rename_object(self, object_id: int, name: str) -> None:
        self.objects.rename(object_id, name)
        self.objects.store_in(self.labels)
        self.objects_changed.emit()

    def delete_object(self, object_id: int) -> None:
        """Remove the object and its pixels (undoable)."""
        if self.propagating and self._prop_object is not None and self._prop_object.id == object_id:
            notify("warning", "napari-sam: cancel the propagation of this object before deleting it")
            return
        before = self.objects.snapshot()
        idx = np.nonzero(np.asarray(self.labels.data) == object_id)
        self.objects.remove(object_id)
        self._write(lambda: self.labels.data_setitem(idx, 0) if idx[0].size else None, before, "delete object")
        self.objects.store_in(self.labels)
        self.objects_changed.emit()

    def _ensure_object(self) -> SegmentedObject:
        obj = self.objects.current
        if obj is None:
            obj = self.add_object()
        return obj

    # ------------------------------------------------------------------ labels writes + undo
    def _write(self, change: Any, before: ObjectTable, what: str) -> None:
        """Apply ``change`` to the labels as one undo item, logging ``before`` for :meth:`undo`."""
        n_before = self._paint_events
        self._writing = True
        try:
            with self.labels.block_history():
                change()
        finally:
            self._writing = False
        if self._paint_events != n_before:  # the labels layer recorded one undo item
            self._log(_Op(what, before))

    def _log(self, op: _Op) -> None:
        self._ops.append(op)
        del self._ops[:-MAX_UNDO]

    def _plane_change(self, pos: pl.SlicePosition, object_id: int, mask: np.ndarray | None,
                      overwrite_others: bool = False) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
        """Indices and values that make ``object_id``'s pixels on the plane equal ``mask``."""
        plane = np.asarray(self.labels.data[self._plane_index(pos)])
        want = np.zeros(plane.shape, bool) if mask is None else np.asarray(mask, bool)
        remove = (plane == object_id) & ~want
        add = want & (plane != object_id) & ((plane == 0) | overwrite_others)
        rr, cc = np.nonzero(remove | add)
        if rr.size == 0:
            return None
        values = np.where(add[rr, cc], object_id, 0).astype(self.labels.data.dtype)
        if self.source.is_2d:
            return (rr, cc), values
        full: list[np.ndarray] = [rr, cc]
        full.insert(pos.axis, np.full(rr.shape, pos.index, dtype=np.intp))
        return tuple(full), values

    def _on_painted(self, event: Any = None) -> None:
        """The user painted or erased: their slice becomes a correction the propagation keeps."""
        if self._writing:
            self._paint_events += 1
            return
        if self._closed:
            return
        self._log(_Op("paint", self.objects.snapshot()))
        # napari emits the event before it writes the pixels: look at them once it has
        QTimer.singleShot(0, self._register_painted_slice)

    def _register_painted_slice(self) -> None:
        if self._closed:
            return
        pos = self._position_or_none()
        if pos is None or self.source.is_2d:
            return
        plane = np.asarray(self.labels.data[self._plane_index(pos)])
        for obj in self.objects:
            st = obj.state
            if st is None or st.axis != pos.axis:
                continue
            now = plane == obj.id
            old = st.results.get(pos.index)
            if (old is None and now.any()) or (old is not None and not np.array_equal(old, now)):
                if now.any():
                    st.set_user_mask(pos.index, now)
                else:
                    st.remove_prompt(pos.index)
                    st.add_stop(pos.index)

    def undo(self) -> None:
        """Undo the last commit, propagation, deletion or paint stroke (pixels and key slices)."""
        if self.propagating:
            notify("info", "napari-sam: cancel the propagation before undoing")
            return
        present = set(np.unique(np.asarray(self.labels.data)).tolist())
        self._writing = True
        try:
            self.labels.undo()
        finally:
            self._writing = False
        if self._ops:
            op = self._ops.pop()
            self.objects = op.objects
            self._drop_emptied_objects(present)
            self.objects.store_in(self.labels)
            self.objects_changed.emit()
            self.status.emit(f"undid: {op.what}")

    def _drop_emptied_objects(self, present: set[int]) -> None:
        """An unnamed object that this undo left with no pixel and no key slice goes too."""
        if not present:
            return
        now = set(np.unique(np.asarray(self.labels.data)).tolist())
        for obj in list(self.objects):
            st = obj.state
            if obj.id in present and obj.id not in now and obj.name == f"object {obj.id}" and (
                    st is None or not st.key_slices):
                self.objects.remove(obj.id)

    # ------------------------------------------------------------------ commit
    def commit(self) -> bool:
        """Write the preview into the current object on this slice (a key slice for propagation).

        A slice whose prompt holds only negative clicks is committed as
        "object absent here" (a stop slice). Returns True if something was written.
        """
        pos = self._position_or_none()
        if pos is None:
            notify("warning", "napari-sam: switch to a 2D view to commit a slice")
            return False
        if self.propagating:
            notify("info", "napari-sam: wait for the propagation to finish (or cancel it) before committing")
            return False
        stop = (self.prediction is None and self.prediction_pos == pos and self.prediction_prompt is not None
                and self.prediction_prompt.only_negative)
        mask = self.preview_mask
        if mask is None and not stop:
            notify("info", "napari-sam: nothing to commit on this slice: draw a box or click, wait for the preview")
            return False
        latest = pl.slice_prompt(self.points, self.boxes, self.source, pos)
        if latest is None or self.prediction_prompt is None or latest.to_json() != self.prediction_prompt.to_json():
            notify("info", "napari-sam: the preview is being updated for your latest prompt; commit once it shows")
            return False
        obj = self._ensure_object()
        if not self.source.is_2d:
            st = self._state_for(obj, pos.axis)
            if st is None:
                return False
        before = self.objects.snapshot()
        change = self._plane_change(pos, obj.id, None if stop else mask)
        self._write(lambda: self.labels.data_setitem(*change) if change else None, before,
                    f"commit {self._where(pos.index)} of {obj.name}")
        if not self.source.is_2d:
            if stop:
                obj.state.add_stop(pos.index, self.prediction_prompt.points)
            else:
                obj.state.set_user_mask(pos.index, mask)
        self.clear_prompts()
        self.status.emit(f"committed {self._where(pos.index)} to {obj.name}" + (" (object absent)" if stop else ""))
        return True

    def _state_for(self, obj: SegmentedObject, axis: int) -> Any:
        from ..propagation import PropagationState

        if obj.state is None:
            obj.state = PropagationState(shape=self.source.shape, axis=axis)
        elif obj.state.axis != axis:
            notify("warning", f"napari-sam: {obj.name} was segmented along axis {obj.state.axis}; "
                              f"view that axis again, or add a new object for axis {axis}")
            return None
        return obj.state

    # ------------------------------------------------------------------ propagation
    @property
    def propagating(self) -> bool:
        return self._prop_worker is not None

    def propagate(self) -> bool:
        """Propagate the current object through the volume from its key slices, in
        the background (progress in the activity dock). Corrected slices are kept.
        Returns True if a run started."""
        from ..propagation import Propagator

        if self.source.is_2d:
            notify("info", "napari-sam: propagation needs a 3D volume (this image is 2D)")
            return False
        if self.propagating:
            notify("info", "napari-sam: a propagation is already running")
            return False
        obj = self.objects.current
        if obj is None or obj.state is None or not obj.state.key_slices:
            notify("info", "napari-sam: commit at least one slice of the object before propagating")
            return False
        state = obj.state
        if not state.needs_run:
            self.status.emit(f"{obj.name}: already propagated (commit a correction to redo part of it)")
            return False
        if state.axis != self.pos.axis:
            notify("warning", f"napari-sam: {obj.name} was segmented along axis {state.axis}; view that axis")
            return False
        propagator = Propagator(self.backend, self.store())

        def work():
            yield from propagator.run(state)

        return self._start_propagation(obj, work, f"propagating {obj.name}")

    def _start_propagation(self, obj: SegmentedObject, work: Any, what: str) -> bool:
        """Run the job ``work`` (yielding jobs.Progress events) in the background for ``obj``."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._prop_before = {}
        self._prop_object = obj
        self._prop_cancelled = False
        self._prop_snapshot = self.objects.snapshot()
        self._prop_pbar = progress(total=0, desc=f"napari-sam: {what}")
        worker = create_worker(work, _ignore_errors=True)  # errors: a notification (below)
        worker.yielded.connect(self._on_propagated_slice)
        worker.finished.connect(lambda w=worker: self._on_propagation_finished(w))
        worker.errored.connect(lambda exc: notify("error", f"napari-sam: {what} failed: {exc}"))
        self._prop_worker = worker
        self.status.emit(f"{what}...")
        self.propagation_started.emit()
        worker.start()
        return True

    def correct(self, point: tuple[int, int, int], label: int) -> bool:
        """Correct the current object's 3D result with a click at volume voxel
        ``point`` = (z, row, col): label 1 adds the missed region there, 0 removes
        the wrongly included one (:func:`napari_sam.corrections.apply_correction`:
        the click's slice is refined, only the affected range re-propagated, and
        negative regions carved in 3D). Runs in the background like
        :meth:`propagate` (``propagation_finished`` when done); one undo step.
        Returns True if it started."""
        from ..corrections import Correction, apply_correction, check_correction
        from ..propagation import Propagator

        obj = self.objects.current
        if self.source.is_2d or self.propagating or obj is None or obj.state is None:
            notify("info", "napari-sam: corrections act on a propagated object of a 3D volume "
                           "(propagate first; wait for a running propagation)")
            return False
        state = obj.state
        corr = Correction(tuple(int(v) for v in point), int(label))
        try:
            check_correction(corr, state)
        except InputError as exc:
            notify("warning", f"napari-sam: {exc}")
            return False
        earlier = self._corrections.setdefault(obj.id, [])
        propagator = Propagator(self.backend, self._store_along(state.axis))
        spacing = self.source.geometry.scale_zyx

        def work():
            apply_correction(state, propagator, corr, earlier=list(earlier), spacing_zyx=spacing)
            earlier.append(corr)
            yield from ()

        return self._start_propagation(obj, work, f"correcting {obj.name}")

    def _store_along(self, axis: int) -> SharedSliceEmbeddings:
        if axis != self.pos.axis:
            raise InputError(f"this object was propagated along axis {axis}; view that axis to correct it")
        return self.store()

    def cancel_propagation(self) -> None:
        """Stop the running propagation after the slice in progress; finished slices are kept."""
        if self._prop_worker is not None:
            self._prop_cancelled = True
            self._prop_worker.quit()

    def _write_plane_live(self, pos: pl.SlicePosition, obj: SegmentedObject, mask: np.ndarray | None) -> None:
        """Write one propagated slice at once (history is added as one item at the end)."""
        change = self._plane_change(pos, obj.id, mask)
        if change is None:
            return
        if pos.index not in self._prop_before:
            self._prop_before[pos.index] = np.array(self.labels.data[self._plane_index(pos)], copy=True)
        idx, values = change
        self.labels.data[idx] = values
        self.labels.refresh()

    def _on_propagated_slice(self, event: Any) -> None:
        """A :class:`napari_sam.jobs.Progress` of the propagation job (payload: a SliceUpdate, or None)."""
        obj = self._prop_object
        if obj is None or self._closed:
            return
        update = event.payload
        if update is not None:
            pos = pl.SlicePosition(obj.state.axis, int(update.index))
            self._write_plane_live(pos, obj, update.mask)
        # (napari's progress events may run the finished handler re-entrantly: take pbar once)
        update_napari_progress(self._prop_pbar, int(event.done), int(event.total),
                               f"napari-sam: {obj.name}: {event.stage}")
        if update is not None:
            self.propagation_progress.emit(int(update.index), int(event.done), int(event.total))

    def _on_propagation_finished(self, worker: Any) -> None:
        if worker is not self._prop_worker:
            return
        obj = self._prop_object
        self._prop_worker = None
        if self._prop_pbar is not None:
            self._prop_pbar.close()
            self._prop_pbar = None
        if obj is None or self._closed:
            return
        st = obj.state
        # slices whose result was dropped without a new one (a pass stopped earlier): match the state
        for i in range(st.n_slices):
            pos = pl.SlicePosition(st.axis, i)
            has = np.any(np.asarray(self.labels.data[self._plane_index(pos)]) == obj.id)
            if i in st.results or has:
                self._write_plane_live(pos, obj, st.results.get(i))
        self._commit_propagation_history(obj)
        self._prop_object = None
        cancelled = self._prop_cancelled
        ext = st.extent
        where = f"slices {ext[0]}..{ext[1]}" if ext else "no slice"
        self.status.emit(f"{obj.name}: propagation {'cancelled' if cancelled else 'done'}; object on {where}")
        self.propagation_finished.emit(cancelled)

    def _commit_propagation_history(self, obj: SegmentedObject) -> None:
        """Turn the slices written live into one undo item of the labels layer."""
        if not self._prop_before:
            return
        before = self._prop_before
        self._prop_before = {}
        changes = []
        for i, old in before.items():
            pos = pl.SlicePosition(obj.state.axis, i)
            sl = self._plane_index(pos)
            new = np.array(self.labels.data[sl], copy=True)
            self.labels.data[sl] = old
            diff = np.nonzero(new != old)
            if diff[0].size:
                full = list(diff)
                full.insert(pos.axis, np.full(diff[0].shape, i, dtype=np.intp))
                changes.append((tuple(full), new[diff]))

        def apply() -> None:
            for idx, values in changes:
                self.labels.data_setitem(idx, values, refresh=False)
            self.labels.refresh()

        self._write(apply, self._prop_snapshot, f"propagate {obj.name}")

    # ------------------------------------------------------------------ embeddings
    def embed_all(self) -> int:
        """Compute every slice's embedding in the background, nearest slices first."""
        n = self.source.shape[self.pos.axis]
        order = sorted(range(n), key=lambda i: (abs(i - self.pos.index), i))
        self.queue.set_store(self.store())
        return self.queue.request_all(order)

    # ------------------------------------------------------------------ export
    def _source_path(self) -> str | None:
        """The file or folder the image layer was read from (our reader records it), if known."""
        return (self.source.layer.metadata.get("napari_sam") or {}).get("path")

    def export(self, path: str | Path) -> list[str]:
        """Save the labels in the image's geometry with a names sidecar; returns the paths written."""
        from ..io import sidecar_path

        p = Path(path)
        data = np.asarray(self.labels.data)
        if p.name.lower().endswith((".dcm", ".seg.nrrd")):  # one file: DICOM SEG or 3D Slicer
            from ._seg_io import write_segmentation

            notes: list[str] = []
            out = write_segmentation(p, data, self.source.geometry, {o.id: o.name for o in self.objects},
                                     {o.id: o.color for o in self.objects}, self._source_path(),
                                     model=getattr(self.backend, "name", None), notes=notes)
            self.status.emit(f"saved {out}" + "".join(f"; {n}" for n in notes))
            return [out]
        out = write_labels(p, data if data.ndim == 3 else data[None], self.source.geometry,
                           names={o.id: o.name for o in self.objects},
                           colors={o.id: o.color for o in self.objects}, overwrite=True,
                           inputs=(getattr(getattr(self.source.layer, "source", None), "path", None),))
        self.status.emit(f"saved {out}")
        return [str(out), str(sidecar_path(out))]
