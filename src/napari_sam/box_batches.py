"""Many box-only prompts on one slice: decoded together, kept small.

A prompts file may hold thousands of objects, each a single box on some
slice (e.g. every nucleus of a micrograph). Decoding them one at a time costs
one decoder call and one full-slice mask each; here the boxes of one slice
go through the decoder in batches, and each object's mask is kept cropped to
its bounding box (:class:`CroppedMask`), so memory grows with the objects'
areas rather than with the number of objects times the slice size.

On a model whose decoder computes logits per token (SAM's, with
``Backend.decodes_windows``), each box's logits are computed only in a
window of tokens around the box and resized onto the slice pixels of that
window alone (:mod:`napari_sam.models.windows`): the decoder's output
upscaling, about half of a decode, then costs the window's share of the
slice. A mask that reaches the edge of its window is decoded again over the
whole slice, so the windowed masks equal the whole-slice ones (up to float
rounding at logits of about 0) unless a mask has a separate fragment wholly
outside its window; ``tests/test_box_batches.py`` compares the label maps
with the per-object path's on 425 real-model objects (identical).

On the CPU the batches are small (:data:`CPU_BATCH`) and decoded by one
thread per core, each running one-threaded operators; what outlives a batch
(the decoder's per-embedding work, the masks' crops in a :class:`CropStore`)
is made by the calling thread, so the workers' memory is reused batch after
batch and the process's memory stays flat however many objects there are.

The masks are those :meth:`napari_sam.clicks.ClickSegmenter.predict` gives for a
box alone with ``multimask=False`` (the box clipped to the slice for
box-only models, the model's answer taken as it is).
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .candidates import choose_candidate
from .heap import release_free_heap
from .models.base import Backend, Embedding, cpu_cores
from .models.windows import TOKEN_PIXELS, batch_windows, box_windows, resize_axis
from .prompts import SlicePrompt
from .torch_threads import threads

#: boxes per decoder call (bounds the (B, N, C) image tokens the decoder holds at once)
BATCH = 32
#: boxes per windowed decoder call on the CPU. Per prompt the decoder holds about four
#: (N, C) float32 temporaries (16 MiB for 64 x 64 x 256 tokens); glibc gives each thread
#: heaps of 64 MiB, and three prompts' temporaries fit in one and are reused batch after
#: batch, where more spill into heaps that are unmapped and faulted in again every batch
#: (shared 2-core machine, loaded: 3 boxes 14.9 ms CPU and 229 page faults per box,
#: 4 boxes 15.4 ms and 897, 6 boxes 17.4 ms and 2194)
CPU_BATCH = 3
#: threads decoding windowed batches at once on the CPU, at most
MAX_WORKERS = 8


class CropStore:
    """Room for many small masks in pages mapped outside the C heap (``mmap``).

    Thousands of objects' crops live until the label map is painted; made one by
    one with ``malloc`` they would sit amid the encoder's and decoder's
    temporaries and keep glibc from reusing that memory, so the heap would grow
    with every slice. Here they fill shared pages of :attr:`PAGE_BYTES`, each
    unmapped when the last crop on it is gone.
    """

    PAGE_BYTES = 1 << 20

    def __init__(self) -> None:
        self._page: np.ndarray | None = None
        self._used = 0

    def copy(self, a: np.ndarray) -> np.ndarray:
        """A copy of the bool array ``a`` in the store."""
        n = a.size
        if self._page is None or self._used + n > self._page.size:
            self._page = np.frombuffer(mmap.mmap(-1, max(self.PAGE_BYTES, n)), np.uint8)
            self._used = 0
        out = self._page[self._used : self._used + n].view(bool).reshape(a.shape)
        self._used += n
        out[...] = a
        return out


@dataclass(frozen=True)
class CroppedMask:
    """A (rows, cols) bool mask stored as its bounding-box crop: ``crop`` is
    ``mask[r0:r0 + h, c0:c0 + w]`` at ``offset`` (r0, c0) on a slice of ``shape``."""

    crop: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def of(
        cls,
        mask: np.ndarray,
        offset: tuple[int, int] = (0, 0),
        shape: tuple[int, int] | None = None,
        store: CropStore | None = None,
    ) -> CroppedMask:
        """The crop of ``mask``, itself the part at ``offset`` of a slice of ``shape``
        (by default the whole slice); copied into ``store`` when given."""
        shape = tuple(mask.shape) if shape is None else tuple(shape)  # type: ignore[assignment]
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return cls(np.zeros((0, 0), bool), (0, 0), shape)  # type: ignore[arg-type]
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = mask[r0:r1, c0:c1]
        crop = store.copy(crop) if store is not None else crop.copy()
        return cls(crop, (int(r0) + offset[0], int(c0) + offset[1]), shape)  # type: ignore[arg-type]

    def any(self) -> bool:
        return bool(self.crop.any())

    def full(self) -> np.ndarray:
        """The (rows, cols) bool mask."""
        out = np.zeros(self.shape, bool)
        self.paint_into(out, True)
        return out

    def paint_into(self, target: np.ndarray, value, only_where_zero: bool = False) -> None:
        """Write ``value`` into ``target`` (rows, cols) where the mask is set
        (and, with ``only_where_zero``, where ``target`` is still 0)."""
        h, w = self.crop.shape
        if h == 0:
            return
        r0, c0 = self.offset
        view = target[r0 : r0 + h, c0 : c0 + w]
        sel = self.crop & (view == 0) if only_where_zero else self.crop
        view[sel] = value


def is_plain_box(prompt: SlicePrompt) -> bool:
    """A box and no clicks: the prompts this module batches."""
    return prompt.box is not None and len(prompt.points) == 0


def _clip(box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    r0, c0, r1, c1 = box
    r0, r1 = np.clip([r0, r1], 0, h - 1)
    c0, c1 = np.clip([c0, c1], 0, w - 1)
    return np.array([min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)], np.float32)


def _reaches_edge(mask: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> bool:
    """Whether ``mask`` (a window at ``offset`` of a slice of ``shape``) is set on an
    edge of the window that is not an edge of the slice (the mask may go on beyond)."""
    (r0, c0), (h, w) = offset, mask.shape
    if h == 0 or w == 0:
        return False
    return bool(
        (r0 > 0 and mask[0].any())
        or (r0 + h < shape[0] and mask[-1].any())
        or (c0 > 0 and mask[:, 0].any())
        or (c0 + w < shape[1] and mask[:, -1].any())
    )


@torch.inference_mode()
def decode_boxes(
    backend: Backend,
    emb: Embedding,
    boxes: list[tuple[float, float, float, float]],
    batch: int | None = None,
    windows: bool = True,
    box_fit: bool = False,
) -> list[CroppedMask]:
    """One mask per box (r0, c0, r1, c1), inclusive pixel indices on ``emb``'s slice.

    batch: boxes per decoder call (default :data:`CPU_BATCH` for windowed
    decoding on the CPU, else :data:`BATCH`).
    windows: compute each box's logits in a window around it where the backend
    can (``backend.decodes_windows``); False decodes over the whole slice.
    box_fit: the key-slice rule "box_fit" (:func:`napari_sam.candidates.box_fit_prediction`):
    of the model's single output and its three candidates, the mask that explains
    the box best; a box whose candidates reach their window's edge is decoded
    over the whole slice, so the choice is the one-object path's.
    Returns :class:`CroppedMask` s in the order of ``boxes``.
    """
    shape = tuple(emb.original_size)
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(arr):
        return []
    if not backend.supports_points:
        arr = np.stack([_clip(b, shape) for b in arr])  # type: ignore[arg-type]
    # Over the whole slice each prompt holds its own copy of the image tokens and a few
    # temporaries as large (16 MiB for 64 x 64 x 256): on the CPU, batches as small as the
    # windowed ones (32 boxes left ~170 MiB of heap behind, the glibc heap does not shrink).
    whole = CPU_BATCH if backend.device.type == "cpu" else BATCH
    if not (windows and getattr(backend, "decodes_windows", False)):
        return _decode_whole(backend, emb, arr, batch or whole, box_fit)
    out: list[CroppedMask | None] = [None] * len(arr)
    redo = _decode_windowed(backend, emb, arr, batch, out, box_fit)
    release_free_heap()  # the windowed batches' temporaries (the whole-slice ones go after each batch)
    for i, mask in zip(redo, _decode_whole(backend, emb, arr[redo], whole, box_fit)):
        out[i] = mask
    return out  # type: ignore[return-value]


def _low_res(backend: Backend, emb: Embedding, boxes: np.ndarray, box_fit: bool, **kw) -> torch.Tensor:
    """Low-resolution logits of ``boxes``: (B, 1, ...) the single output, or with
    ``box_fit`` (B, 4, ...) the single output then the three candidates."""
    if box_fit:
        return backend.decode_all_outputs(emb, boxes, **kw)[0]
    return backend.decode_low_res(emb, boxes_rc=boxes, multimask=False, **kw)[0][:, :1]


def _pick(masks: np.ndarray, box: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The mask of ``masks`` (K, rows, cols), placed at ``offset`` on the slice, that
    explains ``box`` best (:func:`napari_sam.candidates.choose_candidate`)."""
    if len(masks) == 1:
        return masks[0]
    local = np.asarray(box, np.float64) - np.array([offset[0], offset[1], offset[0], offset[1]])
    return masks[choose_candidate(list(masks), local)]


def _decode_whole(
    backend: Backend, emb: Embedding, arr: np.ndarray, batch: int, box_fit: bool = False
) -> list[CroppedMask]:
    out: list[CroppedMask] = []
    store = CropStore()  # the crops kept outside the heap, where they would pin the decoder's freed temporaries
    for s in range(0, len(arr), batch):
        low = _low_res(backend, emb, arr[s : s + batch], box_fit)
        masks = (backend.upsample(low, emb) > 0).cpu().numpy()
        out.extend(CroppedMask.of(_pick(m, b), store=store) for m, b in zip(masks, arr[s : s + batch]))
        del low, masks
        release_free_heap()  # each batch's temporaries are tens of MiB: do not let them pile up in the heap
    return out


def _workers(backend: Backend) -> int:
    """Threads for windowed decoding: on the CPU one per core PyTorch may use, each
    running one-threaded operators (small batches in parallel scale better than the
    operators' own threads, and do not stall when another program takes a core)."""
    if backend.device.type != "cpu":
        return 1
    return max(1, min(cpu_cores(), torch.get_num_threads(), MAX_WORKERS))


def _in_parallel(fn, items: list, workers: int):
    """``fn`` over ``items`` in order: on ``workers`` threads with PyTorch's threads
    shared among them (each with one on a CPU of as many cores), or here."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with (
        threads(torch.get_num_threads() // workers),
        ThreadPoolExecutor(workers, thread_name_prefix="napari-sam-boxes") as pool,
    ):
        yield from pool.map(fn, items)


def _decode_windowed(
    backend: Backend,
    emb: Embedding,
    arr: np.ndarray,
    batch: int | None,
    out: list[CroppedMask | None],
    box_fit: bool = False,
) -> list[int]:
    """Fill ``out`` with the masks of the boxes ``arr`` decoded in windows; returns
    the indices of the boxes whose masks (with ``box_fit``: any candidate) reach
    their window's edge (left as None)."""
    shape = tuple(emb.original_size)
    grid = tuple(emb.features.shape[-2:])
    f = TOKEN_PIXELS
    rows = resize_axis(f * grid[0], backend.image_size, emb.input_size[0], shape[0])
    cols = resize_axis(f * grid[1], backend.image_size, emb.input_size[1], shape[1])
    wins = box_windows(arr, grid, f, rows, cols)  # type: ignore[arg-type]
    if batch is None:
        batch = CPU_BATCH if backend.device.type == "cpu" else BATCH
    # similar windows share a batch (a batch's windows take the largest size)
    order = np.argsort((wins[:, 2] - wins[:, 0] + 1) * (wins[:, 3] - wins[:, 1] + 1), kind="stable")

    @torch.inference_mode()
    def run(idx: np.ndarray) -> list[tuple[int, np.ndarray, tuple[int, int]]]:
        sw = batch_windows(wins[idx], grid, f, rows, cols)  # type: ignore[arg-type]
        low = _low_res(backend, emb, arr[idx], box_fit, windows=sw.for_decoder()).float().cpu()
        found = []
        for j, i in enumerate(idx):
            logits, offset = sw.to_slice(low[j], j)
            found.append((int(i), logits > 0, offset))
        return found

    # What is kept is made in this thread: the decoder's per-embedding work and the
    # masks' crops (copied into a CropStore). The workers only make temporaries, freed
    # at the end of their batch, so their memory is reused batch after batch.
    prepare = getattr(backend, "prepare_decoding", None)
    if prepare is not None:
        prepare(emb)
    redo: list[int] = []
    store = CropStore()
    chunks = [order[s : s + batch] for s in range(0, len(order), batch)]
    for found in _in_parallel(run, chunks, _workers(backend)):
        for i, masks, offset in found:
            if any(_reaches_edge(m, offset, shape) for m in masks):  # type: ignore[arg-type]
                redo.append(i)
            else:
                out[i] = CroppedMask.of(_pick(masks, arr[i], offset), offset, shape, store)  # type: ignore[arg-type]
    return sorted(redo)
