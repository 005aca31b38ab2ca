"""The live preview: from the prompts on the slice to the candidate masks, decoded in the background.

:class:`Preview` schedules decodes (one at a time on the decode thread, the
newest request wins, a slice waits for its embedding), shows the chosen
candidate in the preview layer and keeps latency figures. The masks come
from the core's one key-slice rule (:func:`napari_sam.annotation.decode_key`),
the rule the prompts-file replay commits with.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject

from ..annotation import decode_key
from ..embeddings import CropEmbeddings
from ..predictor import Prediction, SlicePredictor
from ..prompts import SlicePrompt
from ..torch_threads import threads as intra_op_threads
from . import _prompt_layers as pl
from ._background import STORES, SharedSliceEmbeddings
from ._notify import notify_error

if TYPE_CHECKING:
    from ._session import SegmentSession

__all__ = ["DECODE_THREADS", "Preview"]

#: the interactive decode's torch intra-op threads (see :attr:`Preview.decode_threads`); None: torch's default
DECODE_THREADS: int | None = None


@dataclass
class _Request:
    """A decode in flight: what it was asked for, and when the prompt changed."""

    version: int
    pos: pl.SlicePosition
    store: SharedSliceEmbeddings
    prompt: SlicePrompt
    previous: np.ndarray | None
    t_change: float
    t_submit: float = 0.0
    t_decode_start: float = 0.0
    t_decode_end: float = 0.0


class Preview(QObject):
    """The preview of one session (``session``: the :class:`SegmentSession` it serves)."""

    def __init__(self, session: SegmentSession, cache_dir: Any = None) -> None:
        from ._background import DecodeRunner

        super().__init__(session)
        self.s = session
        self.prediction: Prediction | None = None
        self.prediction_pos: pl.SlicePosition | None = None
        self.prediction_prompt: SlicePrompt | None = None
        #: whether the prediction's masks came with a mask to refine (clicks on the object's pixels)
        self.refined = False
        self.candidate = 0
        #: seconds from a prompt change to its preview being on the canvas
        self.latencies: list[float] = []
        #: the same in parts: reading the prompt, waiting for the decode thread, decoding, showing
        self.latency_parts: list[dict[str, float]] = []
        self.previews_shown = 0
        #: small objects are decoded on a magnified crop around the prompt (napari_sam.zoom)
        self.zoom = True
        #: torch intra-op threads of an interactive decode (None: torch's default). One thread
        #: was measured (benchmarks/napari_responsiveness.py, settings interleaved) and lost on a
        #: loaded machine: slightly less CPU per preview, but fewer runnable threads get a smaller
        #: share of an oversubscribed CPU (docs/napari.md, "Under load")
        self.decode_threads: int | None = DECODE_THREADS
        self._version = 0
        self._shown_version = 0
        self._waiting: _Request | None = None
        self._asked: tuple | None = None  # the prompt of the preview shown or being decoded
        # zoom crops go through the widgets' shared provider (one memory tier, one encoder lock)
        crops = CropEmbeddings(session.backend, provider=STORES.provider(session.backend, cache_dir))
        self._predictor = SlicePredictor(session.backend, zoom=True, crop_embeddings=crops)
        self.decoder = DecodeRunner(self)
        self.decoder.done.connect(self._on_decoded)

    # ------------------------------------------------------------------ requests
    def forget(self) -> None:
        """The slice or the window changed: what was asked no longer holds."""
        self._asked = None
        self._version += 1

    def update(self) -> None:
        """Re-predict the current slice from its prompts (decoder only, in the background)."""
        s = self.s
        t_change = time.perf_counter()
        pos = s.position()
        if pos is None:
            return
        s.pos = pos
        prompt = pl.slice_prompt(s.points, s.boxes, s.source, pos)
        key = None if prompt is None else (pos, id(s.store()), json.dumps(prompt.to_json()), s.model.current_id)
        if key is not None and key == self._asked:
            return  # same prompt as the preview shown or being computed (e.g. a selection change)
        self._asked = None
        self._version += 1
        self._waiting = None
        if prompt is None or prompt.only_negative:
            self.prediction = None
            self.prediction_pos, self.prediction_prompt = (pos, prompt) if prompt is not None else (None, None)
            self.clear()
            if prompt is not None:
                s.status.emit("only negative clicks: commit marks this slice as 'object absent' (stops propagation)")
            return
        previous = s.model.previous_for(s.model.current_id, pos.axis, pos.index, prompt)
        req = _Request(self._version, pos, s.store(), prompt, previous, t_change)
        if req.store.peek(pos.index) is None:
            self._waiting = req
            s.queue.set_store(req.store)
            s.queue.request(pos.index)
            s.status.emit(f"computing the embedding of {s.where(pos.index)}...")
            return
        self._submit(req)

    def _submit(self, req: _Request) -> None:
        self._waiting = None
        self._asked = (req.pos, id(req.store), json.dumps(req.prompt.to_json()), self.s.model.current_id)
        emb = req.store.peek(req.pos.index)
        predictor, zoom, key_choice, threads = self._predictor, self.zoom, self.s.model.key_choice, self.decode_threads

        def job() -> Prediction:
            req.t_decode_start = time.perf_counter()
            # the slice's pixels for the zoom path, windowed here on the decode thread
            predictor.set_embedding(emb, image=req.store.model_input(req.pos.index) if zoom else None)
            with intra_op_threads(threads):
                out = decode_key(
                    predictor, req.prompt, req.previous, key_choice, lambda c: req.store.get(req.pos.index, c)
                )
            req.t_decode_end = time.perf_counter()
            return out

        req.t_submit = time.perf_counter()
        self.decoder.submit(job, req)

    def on_embedding_ready(self, store: SharedSliceEmbeddings, index: int) -> None:
        """A slice's embedding arrived: decode the request that waited for it."""
        w = self._waiting
        if w is not None and w.store is store and w.pos.index == index and w.pos == self.s.pos:
            self._submit(w)

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def _on_decoded(self, req: _Request, result: Prediction | None, error: Exception | None) -> None:
        s = self.s
        if s.closed:
            return
        if error is not None:
            self._asked = None
            notify_error(error)
            return
        if req.pos != s.pos or req.store is not s.store() or req.version <= self._shown_version:
            return
        self._shown_version = req.version
        self.prediction, self.prediction_pos, self.prediction_prompt = result, req.pos, req.prompt
        self.refined = req.previous is not None
        self.candidate = 0
        self._show()
        now = time.perf_counter()
        self.latencies.append(now - req.t_change)
        self.latency_parts.append(
            {
                "prompt": req.t_submit - req.t_change,
                "wait": req.t_decode_start - req.t_submit,
                "decode": req.t_decode_end - req.t_decode_start,
                "show": now - req.t_decode_end,
            }
        )
        self.previews_shown += 1
        s.status.emit(
            f"{s.where(req.pos.index)}: candidate 1/{len(result.masks)} "  # type: ignore[union-attr]
            f"(score {float(result.scores[0]):.2f})"
        )  # type: ignore[union-attr]

    # ------------------------------------------------------------------ showing
    def _show(self) -> None:
        if self.prediction is None or self.prediction_pos is None:
            return
        self.s.layers.show_preview(self.prediction_pos, self.prediction.candidate(self.candidate))
        self.s.preview_changed.emit()

    def clear(self) -> None:
        """Remove the preview from the canvas."""
        if self.s.layers.clear_preview():
            self.s.preview_changed.emit()

    def drop(self) -> None:
        """Forget the prediction and clear the preview (after a commit, a clear)."""
        self.prediction = None
        self._asked = None
        self.clear()

    @property
    def mask(self) -> np.ndarray | None:
        """The mask shown as preview on the current slice, (rows, cols) bool, or None."""
        if self.prediction is None or self.prediction_pos != self.s.pos:
            return None
        return self.prediction.candidate(self.candidate)

    @property
    def exact(self) -> bool:
        """Whether the mask shown is what the key-slice rule gives for the prompt alone
        (the first candidate, on the whole slice, no mask refined)."""
        p = self.prediction
        return p is not None and self.candidate == 0 and p.crop is None and not self.refined

    def select(self, index: int) -> int:
        """Show candidate ``index`` (modulo their number). Returns it."""
        if self.prediction is None:
            return self.candidate
        self.candidate = int(index) % len(self.prediction.masks)
        self._show()
        return self.candidate

    def shutdown(self) -> None:
        self.decoder.shutdown()
