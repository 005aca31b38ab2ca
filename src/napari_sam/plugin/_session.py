"""One segmentation session: an image layer, a model, the layers, and the annotation they show.

:class:`SegmentSession` is what the widget drives (and what the GUI tests
call). It only translates: napari layers and events into calls on the core's
:class:`napari_sam.annotation.Annotation` (objects, commits, paint, undo,
redo, runs), and the :class:`~napari_sam.annotation.ChangeSet` each call
returns back into the layers. The parts:

- :class:`~._layers.SessionLayers`: the labels, preview, boxes and points layers;
- :class:`~._events.SessionEvents`: napari events, debounced;
- :class:`~._preview.Preview`: decode scheduling and the live preview;
- :class:`~._runs.RunWorker`: propagations and corrections in a ``thread_worker``;
- :func:`~._export.export_labels`: export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..annotation import Annotation, ChangeSet
from ..annotation.actions import latest_weights
from ..cache import content_hash
from ..corrections import Correction
from ..errors import InputError, ModelError, NapariSamError, UsageError
from ..finetune.adapted import adapted_backend
from ..io import Volume
from ..models.base import Backend
from ..prompts import SlicePrompt
from ..segmentation import key_choice_for
from . import _prompt_layers as pl
from ._background import STORES, EmbeddingQueue, SharedSliceEmbeddings
from ._events import SessionEvents
from ._export import export_labels
from ._image_source import ImageSource
from ._layers import PREVIEW_COLOR, SessionLayers
from ._notify import notify
from ._objects import ObjectsView
from ._preview import Preview
from ._runs import RunWorker
from ._session_files import SessionFiles

__all__ = ["SegmentSession", "notify", "PREVIEW_COLOR"]

#: what the session reads from its preview (see SegmentSession.__getattr__)
_PREVIEW_STATE = frozenset(
    {"prediction", "prediction_pos", "prediction_prompt", "candidate", "previews_shown", "latencies", "latency_parts"}
)


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

    def __init__(
        self,
        viewer: Any,
        source: ImageSource,
        backend: Backend,
        parent: QObject | None = None,
        labels_layer: Any = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer, self.source, self.backend = viewer, source, backend
        #: where slice embeddings are kept on disk (None: in memory only)
        self.cache_dir = cache_dir
        self.closed = False
        #: the adapted models of this session, by the SHA-256 of their weights (never the base model)
        self.adapted: dict[str, Backend] = {}
        #: asked when a click or box is added: True if the press only gave focus back (it is dropped)
        self.focus_click: Any = None
        self._volume_hash = content_hash(source.volume)
        self._window = source.window()
        self.model = Annotation(
            source.shape, source.geometry.scale_zyx, is_2d=source.is_2d, key_choice=key_choice_for(self._volume())
        )
        self.objects = ObjectsView(self.model)
        self.layers = SessionLayers(viewer, source, labels_layer, self.source_path())
        self._adopt_existing_objects()
        self.previewer = Preview(self, cache_dir)
        self.files = SessionFiles(self, self._volume_hash)
        self.runs = RunWorker(self)
        self.runs.started.connect(self.propagation_started)
        self.runs.progressed.connect(self.propagation_progress)
        self.runs.finished.connect(self.propagation_finished)
        self.queue = EmbeddingQueue(self)
        self.queue.ready.connect(self._on_embedding_ready)
        self.pos = self.position() or pl.SlicePosition(0, 0)
        self.events = SessionEvents(self)
        self._bind_undo_keys()
        self.queue.set_store(self.store())
        self.queue.request(self.pos.index)

    # ------------------------------------------------------------------ setup
    def _volume(self) -> Volume:
        meta = self.source.layer.metadata.get("napari_sam") or {}
        return Volume(
            self.source.volume,
            self.source.geometry,
            {k: meta.get(k) for k in ("modality", "dicom_window", "path") if meta.get(k)},
        )

    def _adopt_existing_objects(self) -> None:
        """Objects named in an existing labels layer's metadata (e.g. reopened from our
        writer), and every label it holds; their slices become accepted key slices."""
        from ._load_objects import add_label_map
        from ._writer import object_table

        names, colors = object_table(self.labels.metadata)
        add_label_map(self.model, self.layers.label_map(), names, colors, "labels layer", keep_ids=True)
        self.model.history.clear()
        if len(self.model):
            self.model.select(self.model.objects[0].id)
            self.objects.store_in(self.labels)

    def _bind_undo_keys(self) -> None:
        """Ctrl+Z / Ctrl+Shift+Z on the labels layer undo and redo through the annotation."""
        from app_model.types import KeyCode, KeyMod

        self._layer_keys = [KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ]
        self.labels.bind_key(self._layer_keys[0], lambda _layer: self.undo(), overwrite=True)
        self.labels.bind_key(self._layer_keys[1], lambda _layer: self.redo(), overwrite=True)

    def close(self) -> None:
        """Stop background work and disconnect from the viewer (layers stay)."""
        if self.closed:
            return
        self.cancel_propagation()
        self.closed = True
        self.files.close()  # a clean end: no recovery copy left
        self.queue.cancel()
        self.previewer.shutdown()
        self.events.close()
        for key in self._layer_keys:  # back to napari's own undo / redo on the labels layer
            try:
                self.labels.bind_key(key, None, overwrite=True)
            except (KeyError, TypeError, ValueError):
                pass

    # ------------------------------------------------------------------ layers (names kept for scripts)
    @property
    def labels(self) -> Any:
        return self.layers.labels

    @property
    def points(self) -> Any:
        return self.layers.points

    @property
    def boxes(self) -> Any:
        return self.layers.boxes

    @property
    def preview(self) -> Any:
        """The preview layer (the uncommitted mask)."""
        return self.layers.preview

    # ------------------------------------------------------------------ where we are
    def where(self, index: int) -> str:
        """ "slice 12" in a volume, "the image" for a 2D image (status messages)."""
        return "the image" if self.source.is_2d else f"slice {index}"

    def position(self) -> pl.SlicePosition | None:
        """The plane the viewer shows, None in a 3D display."""
        try:
            return pl.current_position(self.viewer, self.source)
        except InputError:
            return None

    def store(self) -> SharedSliceEmbeddings:
        """The embeddings for the current window and slicing axis (created on first use)."""
        return STORES.get(
            self.backend, self.source.volume, self._volume_hash, self._window, self.pos.axis, cache_dir=self.cache_dir
        )

    def on_slice_settled(self) -> None:
        pos = self.position()
        if pos is None:
            return
        self.pos = pos
        self.queue.set_store(self.store())
        if not self.queue.request(pos.index):
            self.status.emit(f"embedding {self.where(pos.index)} in the background...")
        self.update_preview()

    def on_window_settled(self) -> None:
        window = self.source.window()
        if window.key() == self._window.key():
            return
        self._window = window
        self.queue.set_store(self.store())
        self.status.emit(f"window {window.lo:g}..{window.hi:g}: the model now sees these contrast limits")
        self.queue.request(self.pos.index)
        self.update_preview()

    def _on_embedding_ready(self, store: SharedSliceEmbeddings, index: int) -> None:
        self.embedding_ready.emit(index)
        if index == self.pos.index and store is self.store() and not self.previewer.waiting and not self.propagating:
            self.status.emit(f"{self.where(index)} ready: draw a box or click")
        self.previewer.on_embedding_ready(store, index)

    def embed_all(self) -> int:
        """Compute every slice's embedding in the background, nearest slices first."""
        n = self.source.shape[self.pos.axis]
        order = sorted(range(n), key=lambda i: (abs(i - self.pos.index), i))
        self.queue.set_store(self.store())
        return self.queue.request_all(order)

    # ------------------------------------------------------------------ the preview
    def current_prompt(self) -> SlicePrompt | None:
        """The clicks and box on the current slice, in (row, col) of the slice."""
        pos = self.position()
        return None if pos is None else pl.slice_prompt(self.points, self.boxes, self.source, pos)

    def update_preview(self) -> None:
        """Re-predict the current slice from its prompts (decoder only, in the background)."""
        if not self.closed:
            self.previewer.update()

    def __getattr__(self, name: str) -> Any:
        """The preview's state, read through the session (``prediction``, ``prediction_pos``,
        ``prediction_prompt``, ``candidate``, ``previews_shown``, ``latencies``, ``latency_parts``)."""
        if name in _PREVIEW_STATE and "previewer" in self.__dict__:
            return getattr(self.__dict__["previewer"], name)
        raise AttributeError(name)

    @property
    def zoom(self) -> bool:
        return self.previewer.zoom

    @zoom.setter
    def zoom(self, on: bool) -> None:
        self.previewer.zoom = bool(on)

    @property
    def preview_mask(self) -> np.ndarray | None:
        """The mask shown as preview on the current slice, (rows, cols) bool, or None."""
        return self.previewer.mask

    def next_candidate(self) -> int:
        """Show the next candidate mask (ambiguity: part / whole). Returns its index."""
        p = self.previewer.prediction
        if p is None:
            notify("info", "napari-sam: no preview yet: draw a box or click on the object first")
            return self.previewer.candidate
        i = self.previewer.select(self.previewer.candidate + 1)
        self.status.emit(f"candidate {i + 1}/{len(p.masks)} (score {float(p.scores[i]):.2f})")
        return i

    def select_candidate(self, index: int) -> int:
        """Show candidate ``index`` (0-based, modulo their number) as the preview. Returns it."""
        return self.previewer.select(index)

    def set_negative(self, negative: bool) -> None:
        """New clicks are negative (red) or positive (green)."""
        pl.set_negative(self.points, negative)

    @property
    def negative(self) -> bool:
        return pl.is_negative(self.points)

    def clear_prompts(self) -> None:
        """Remove the clicks and box on the current slice, and the preview."""
        pos = self.position()
        if pos is not None:
            pl.clear_slice(self.points, self.boxes, self.source, pos)
            self.previewer.drop()

    # ------------------------------------------------------------------ changes of the annotation
    def apply(self, changes: ChangeSet | None) -> None:
        """Show what a call on the annotation changed (labels, the object list)."""
        if changes is None:
            return
        self.layers.apply(changes)
        if changes.table or not changes.objects <= {o.id for o in self.model.objects}:
            self.objects.store_in(self.labels)
            self.objects_changed.emit()

    def _do(self, call: Any, *args: Any, **kwargs: Any) -> ChangeSet | None:
        """Call the annotation; a refusal becomes a notification (None returned)."""
        try:
            changes = call(*args, **kwargs)
        except (NapariSamError, KeyError) as exc:
            notify("warning" if isinstance(exc, UsageError) else "info", f"napari-sam: {str(exc).strip(chr(39))}")
            return None
        self.apply(changes)
        return changes

    def add_object(self, name: str | None = None) -> Any:
        """Add an object (the current one from now on) and return it."""
        changes = self._do(self.model.add_object, name)
        return None if changes is None else self.model.current

    def select_object(self, object_id: int) -> None:
        self._do(self.model.select, object_id)

    def rename_object(self, object_id: int, name: str) -> None:
        self._do(self.model.rename, object_id, name)

    def delete_object(self, object_id: int) -> None:
        """Remove the object and its pixels (undoable)."""
        self._do(self.model.delete_object, object_id)

    def undo(self) -> None:
        """Undo the last commit, propagation, correction, deletion or paint stroke."""
        changes = self._do(self.model.undo)
        if changes is not None:
            self.status.emit(changes.what.replace("undo ", "undid: ", 1))

    def redo(self) -> None:
        """Redo what the last undo took back."""
        changes = self._do(self.model.redo)
        if changes is not None:
            self.status.emit(changes.what.replace("redo ", "redid: ", 1))

    def on_painted(self) -> None:
        """The user painted or erased with napari's tools: their slices become key slices."""
        if self.closed:
            return
        pos = self.position()
        self._do(self.model.paint, self.layers.label_map(), axis=pos.axis if pos is not None else 0)

    # ------------------------------------------------------------------ commit
    def commit(self) -> bool:
        """Write the preview into the current object on this slice (a key slice for propagation).

        A slice whose prompt holds only negative clicks is committed as
        "object absent here" (a stop slice). Returns True if something was written.
        """
        pos = self.position()
        if pos is None:
            notify("warning", "napari-sam: switch to a 2D view to commit a slice")
            return False
        if self.propagating:
            notify("info", "napari-sam: wait for the propagation to finish (or cancel it) before committing")
            return False
        pv = self.previewer
        stop = (
            pv.prediction is None
            and pv.prediction_pos == pos
            and pv.prediction_prompt is not None
            and pv.prediction_prompt.only_negative
        )
        mask = pv.mask
        if mask is None and not stop:
            notify("info", "napari-sam: nothing to commit on this slice: draw a box or click, wait for the preview")
            return False
        latest = pl.slice_prompt(self.points, self.boxes, self.source, pos)
        if latest is None or pv.prediction_prompt is None or latest.to_json() != pv.prediction_prompt.to_json():
            notify("info", "napari-sam: the preview is being updated for your latest prompt; commit once it shows")
            return False
        changes = self._do(self._commit, pos, pv.prediction_prompt, None if stop else mask, pv.exact)
        if changes is None:
            return False
        self.clear_prompts()
        name = self.model.current.name if self.model.current else "the object"
        self.status.emit(f"committed {self.where(pos.index)} to {name}" + (" (object absent)" if stop else ""))
        return True

    def _commit(self, pos: pl.SlicePosition, prompt: SlicePrompt, mask: np.ndarray | None, exact: bool) -> ChangeSet:
        with self.model.batch(f"commit {self.where(pos.index)}") as step:
            if self.model.current is None:
                self.model.add_object()
            self.model.commit(
                self.model.current_id,
                pos.index,
                prompt,
                mask,
                axis=pos.axis,  # type: ignore
                exact=exact,
                window=[self._window.lo, self._window.hi],
            )
        return step.changes

    # ------------------------------------------------------------------ propagation and corrections
    @property
    def propagating(self) -> bool:
        return self.runs.busy

    @property
    def _prop_pbar(self) -> Any:
        """napari's progress bar of the run in progress (None when idle)."""
        return self.runs.pbar

    def propagate(self) -> bool:
        """Propagate the current object through the volume from its key slices, in
        the background (progress in the activity dock). Corrected slices are kept.
        Returns True if a run started."""
        return self.runs.propagate(self.model.current)

    def correct(self, point: tuple[int, int, int], label: int) -> bool:
        """Correct the current object's 3D result with a click at volume voxel
        ``point`` = (z, row, col): label 1 adds the missed region there, 0 removes
        the wrongly included one (:func:`napari_sam.corrections.apply_correction`:
        the click's slice is refined, only the affected range re-propagated, and
        negative regions carved in 3D). Runs in the background like
        :meth:`propagate` (``propagation_finished`` when done); one undo step.
        Returns True if it started."""
        return self.runs.correct(self.model.current, Correction(tuple(int(v) for v in point), int(label)))

    def adapt(self) -> bool:
        """Adapt a copy of the model to the current object's key slices (at most 30 s), then
        propagate the object again with it, in the background. The adapted model is kept
        for this session (:meth:`backend_for`); the base model is never changed."""
        return self.runs.adapt(self.model.current)

    def backend_for(self, obj: Any) -> Backend:
        """The model the object's runs use: its latest adaptation that is still in its
        action log (undo takes one back; an opened session's come from its saved
        weights), else the base model."""
        weights = latest_weights(obj)
        if weights is None:
            return self.backend
        if weights.sha256 not in self.adapted:
            try:
                self.adapted[weights.sha256] = adapted_backend(self.backend, weights)
            except ModelError as exc:
                notify("warning", f"napari-sam: {obj.name}: {exc}; the model itself is used")
                return self.backend
        return self.adapted[weights.sha256]

    def cancel_propagation(self) -> None:
        """Stop the running propagation after the slice in progress; finished slices are kept."""
        self.runs.cancel()

    # ------------------------------------------------------------------ session files
    def save_session(self, folder: str | Path) -> Path | None:
        """Save the session (objects, key slices, prompts, results, labels) to ``folder``."""
        try:
            out = self.files.save(folder)
        except (NapariSamError, OSError) as exc:
            notify("error", f"napari-sam: cannot save the session: {exc}")
            return None
        self.status.emit(f"session saved to {out}")
        return out

    def open_session(self, folder: str | Path) -> bool:
        """Continue the session saved in ``folder`` (made on this image). Returns True if opened."""
        if self.propagating:
            notify("info", "napari-sam: cancel the propagation before opening a session")
            return False
        try:
            self.replace_annotation(self.files.open(folder))
        except NapariSamError as exc:
            notify("warning", f"napari-sam: {exc}")
            return False
        self.status.emit(f"opened the session {folder}: {len(self.model)} object(s)")
        return True

    def replace_annotation(self, model: Annotation) -> None:
        """Show ``model`` (an opened or recovered session on this image) instead of the current one."""
        old = self.layers.label_map()
        self.adapted.clear()  # models adapted to the replaced annotation's objects
        self.model = self.objects.model = model
        self.files.adopt(model)
        self.apply(ChangeSet.between(old, np.asarray(model.labels), {o.id for o in model.objects}, True))
        self.objects.store_in(self.labels)
        self.objects_changed.emit()

    # ------------------------------------------------------------------ export
    def source_path(self) -> str | None:
        """The file or folder the image layer was read from (our reader records it), if known."""
        return (self.source.layer.metadata.get("napari_sam") or {}).get("path")

    def export(self, path: str | Path) -> list[str]:
        """Save the labels in the image's geometry with a names sidecar; returns the paths written."""
        return export_labels(self, path)
