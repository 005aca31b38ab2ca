"""Model work off the GUI thread.

- :class:`SharedSliceEmbeddings`: the core's lazy :class:`SliceEmbeddings`
  on the process's shared :class:`~napari_sam.embeddings.EmbeddingProvider`
  (:data:`STORES`: one memory tier and one encoder lock for every widget and
  for the zoom crops of its decodes), with
  :meth:`~SharedSliceEmbeddings.peek` to ask, without computing, whether a
  slice is ready.
- :class:`EmbeddingQueue`: computes requested slices' embeddings in a napari
  generator ``thread_worker`` (progress in the activity dock, abortable
  between slices); the slice the user looks at jumps the queue.
- :class:`DecodeRunner`: runs prompt decodes on one dedicated thread, newest
  request wins, results delivered on the GUI thread through a Qt signal. A
  decode never waits behind a long encode or propagation in Qt's global
  thread pool.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..cache import model_identity
from ..embeddings import EmbeddingProvider, SliceEmbeddings
from ..geometry import Crop
from ..intensity import Window
from ..models.base import Backend, Embedding


class SharedSliceEmbeddings(SliceEmbeddings):
    """One volume's slice embeddings (one model, window, axis) on the widget's
    shared :class:`~napari_sam.embeddings.EmbeddingProvider`, safe to use from
    worker threads (the provider holds the one encoder lock).

    Implements what :class:`napari_sam.propagation.Propagator` needs (``axis``,
    ``len``, ``get`` with an optional zoom crop, ``model_input``), plus
    :meth:`peek` to ask, without computing, whether a slice is ready.
    ``encode_seconds``: the time of every slice fetched from disk or encoded.
    """

    def __init__(
        self,
        provider: EmbeddingProvider,
        volume: np.ndarray,
        window: Window,
        axis: int = 0,
        image_hash: str | None = None,
    ) -> None:
        super().__init__(provider.backend, volume, window, axis, image_hash=image_hash, provider=provider)
        self.model_name = provider.backend.name
        self.encode_seconds: list[float] = []

    @property
    def inner(self) -> SliceEmbeddings:
        """The core view itself (kept for callers of the former wrapper)."""
        return self

    def get(self, index: int, crop: Crop | None = None) -> Embedding:
        """Slice ``index``'s embedding (of ``crop``), computed now if needed (call from a worker thread)."""
        if crop is not None or self.peek(index) is not None:
            return super().get(index, crop)
        t0 = time.perf_counter()
        emb = super().get(index)
        self.encode_seconds.append(time.perf_counter() - t0)
        return emb

    def peek(self, index: int) -> Embedding | None:
        """The embedding if already computed (in memory), else None (never computes)."""
        return self.provider.peek(self.entry, index)

    def ready(self) -> list[int]:
        """Sorted slices whose embeddings are in memory."""
        return sorted(self.provider.in_memory(self.entry))


class StoreRegistry:
    """The widget's embeddings for the process: one :class:`EmbeddingProvider`
    (memory tier, disk store, encoder lock) per model, device and cache folder,
    shared by every widget and by the zoom crops of its decodes; the slice views
    are keyed by image content, window and axis, so that reopening the widget on
    the same image (or the same window again) reuses what was computed.

    At most ``max_providers`` providers (and their views) are kept, least
    recently used first out: a provider a session still holds lives on with
    it; one no session holds is freed with its memory tier.
    """

    def __init__(self, max_in_memory: int = 256, max_providers: int = 2) -> None:
        self.max_in_memory = max_in_memory
        self.max_providers = max_providers
        self._providers: OrderedDict[tuple, EmbeddingProvider] = OrderedDict()
        self._views: OrderedDict[tuple, SharedSliceEmbeddings] = OrderedDict()
        self._lock = threading.Lock()

    def provider(self, backend: Backend, cache_dir: str | Path | None = None) -> EmbeddingProvider:
        """The shared provider of ``backend`` with the disk store in ``cache_dir`` (None: memory only)."""
        key = (id(backend), model_identity(backend), str(getattr(backend, "device", "")), str(cache_dir))
        with self._lock:
            prov = self._providers.get(key)
            if prov is None or prov.backend is not backend:
                prov = self._providers[key] = EmbeddingProvider(backend, cache_dir, self.max_in_memory)
            self._providers.move_to_end(key)
            while len(self._providers) > self.max_providers:
                _, old = self._providers.popitem(last=False)
                for k in [k for k, v in self._views.items() if v.provider is old]:
                    del self._views[k]
            return prov

    def get(
        self,
        backend: Backend,
        volume: np.ndarray,
        volume_hash: str,
        window: Window,
        axis: int,
        cache_dir: str | Path | None = None,
    ) -> SharedSliceEmbeddings:
        """The embeddings of ``volume`` (content hash ``volume_hash``) for this
        model, window and axis; ``cache_dir``: the disk store (None: memory only)."""
        prov = self.provider(backend, cache_dir)
        key = (id(prov), volume_hash, window.key(), axis)
        with self._lock:
            view = self._views.get(key)
            if view is None or view.provider is not prov:
                view = self._views[key] = SharedSliceEmbeddings(prov, volume, window, axis=axis, image_hash=volume_hash)
            self._views.move_to_end(key)
            while len(self._views) > 16:  # views are small; the embeddings live in the provider
                self._views.popitem(last=False)
        return view

    def clear(self) -> None:
        """Forget every provider and view (their memory goes; disk entries stay)."""
        with self._lock:
            for prov in self._providers.values():
                prov.forget()
            self._providers.clear()
            self._views.clear()


#: the process-wide registry used by the widgets
STORES = StoreRegistry()


class EmbeddingQueue(QObject):
    """Computes slice embeddings in the background, the current slice first.

    ``ready(store, index)`` is emitted on the GUI thread for every slice
    computed. ``busy`` tells whether a worker is running.

    Progress: :meth:`request_all` (many slices) shows a progress bar in
    napari's activity dock. Single slices (the one on screen, about a second
    each) do not: while any napari progress bar is open, napari animates an
    "in progress" GIF in the status bar, which repaints the window and, on a
    software-rendered or weak GPU, costs as much CPU as a third of the encoder
    (measured by benchmarks/napari_responsiveness.py). The widget's status
    line says which slice is being embedded instead.
    """

    ready = Signal(object, int)
    idle = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: deque[int] = deque()
        self._store: SharedSliceEmbeddings | None = None
        self._worker: Any = None
        self._pbar: Any = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def store(self) -> SharedSliceEmbeddings | None:
        return self._store

    def set_store(self, store: SharedSliceEmbeddings | None) -> None:
        """Switch to another volume/model/window: queued work for the old one is dropped."""
        if store is self._store:
            return
        self._queue.clear()
        if self._worker is not None:
            self._worker.quit()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._store = store

    def request(self, index: int, front: bool = True) -> bool:
        """Ask for slice ``index``. Returns True if it is already computed."""
        store = self._store
        if store is None:
            return False
        if store.peek(index) is not None:
            return True
        if index in self._queue:
            self._queue.remove(index)
        elif self._pbar is not None:
            self._pbar.total = self._pbar.total + 1
        if front:
            self._queue.appendleft(index)
        else:
            self._queue.append(index)
        self._ensure_running()
        return False

    def request_all(self, order: list[int]) -> int:
        """Queue every slice in ``order`` not computed yet. Returns how many were queued."""
        store = self._store
        if store is None:
            return 0
        new = [i for i in order if store.peek(i) is None and i not in self._queue]
        self._queue.extend(new)
        if self._pbar is not None:
            self._pbar.total = self._pbar.total + len(new)
        elif new:
            self._pbar = self._progress(len(self._queue))
        self._ensure_running()
        return len(new)

    @staticmethod
    def _progress(total: int) -> Any:
        from napari.utils import progress

        return progress(total=total, desc="napari-sam: image embeddings")

    def cancel(self) -> None:
        self._queue.clear()
        if self._worker is not None:
            self._worker.quit()

    def _ensure_running(self) -> None:
        if self._worker is not None or not self._queue or self._store is None:
            return
        from napari.qt.threading import create_worker

        store, queue = self._store, self._queue

        def work():
            # stop when the widget switched stores: what is queued now is for the new one
            while queue and self._store is store:
                try:
                    index = queue.popleft()
                except IndexError:
                    break
                store.get(index)
                yield index

        worker = create_worker(work, _ignore_errors=True)  # errors: notification in _on_error
        worker.yielded.connect(lambda index, s=store: self._on_yielded(s, index))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        worker.errored.connect(self._on_error)
        self._worker = worker
        worker.start()

    def _alive(self) -> bool:
        """False once Qt deleted this object (the widget closed while a worker ran)."""
        try:
            self.objectName()
        except RuntimeError:
            return False
        return True

    def _on_yielded(self, store: SharedSliceEmbeddings, index: int) -> None:
        if not self._alive():
            return
        if self._pbar is not None:
            self._pbar.update(1)
        self.ready.emit(store, index)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"napari-sam: computing an image embedding failed: {exc}")

    def _on_finished(self, worker: Any) -> None:
        if not self._alive():
            return
        if self._worker is worker:
            self._worker = None
            if self._queue and self._store is not None:
                self._ensure_running()
                return
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None
            self.idle.emit()


class DecodeRunner(QObject):
    """Runs decodes (the cheap, interactive part) on one dedicated thread.

    ``submit(job, payload)`` runs ``job()`` in the background; the newest
    submission wins over those waiting (which are dropped). ``done(payload,
    result, error)`` is emitted on the GUI thread.
    """

    done = Signal(object, object, object)
    _finished = Signal(object, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._finished.connect(self._on_finished)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-decode")
        self._running: Future | None = None
        self._closed = False
        self._pending: tuple[Callable[[], Any], Any] | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None or self._pending is not None

    def submit(self, job: Callable[[], Any], payload: Any) -> None:
        if self._running is not None:
            self._pending = (job, payload)
            return
        self._start(job, payload)

    def _start(self, job: Callable[[], Any], payload: Any) -> None:
        fut = self._pool.submit(job)
        self._running = fut
        fut.add_done_callback(lambda f, p=payload: self._deliver(f, p))

    def _deliver(self, fut: Future, payload: Any) -> None:
        """Called on the decode thread: hand the result to the GUI thread (queued signal)."""
        if self._closed:
            return
        try:
            self._finished.emit(fut, payload)
        except RuntimeError:  # the Qt object was deleted (widget closed) while decoding
            pass

    def _on_finished(self, fut: Future, payload: Any) -> None:
        self._running = None
        err = fut.exception()
        result = None if err is not None else fut.result()
        if self._pending is not None:
            job, p = self._pending
            self._pending = None
            self._start(job, p)
        self.done.emit(payload, result, err)

    def shutdown(self) -> None:
        self._closed = True
        self._pending = None
        self._pool.shutdown(wait=False, cancel_futures=True)
