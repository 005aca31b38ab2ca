"""PyTorch's intra-op threads for prompt decoding: one.

A mask decoder call on one slice is a few small matrix products (about 20 ms
for a 256 px model on one CPU thread). Split over the operators' threads it
gains little on a quiet machine and loses badly on a busy one: every
operator waits at a barrier for the thread a busy core does not run, and the
threads spin while they wait. Measured on the shared MR with the machine
shared with other work: 0.063 s wall, 0.027 s CPU per box decode on one
thread against 0.595 s wall, 0.264 s CPU on two (docs/propagation.md).

:func:`decoding` runs a block of decoder work on one thread; the encoder,
whose products are large enough to gain from the threads, gets them back
inside it through :func:`encoding` (the embedding provider uses it). Both
nest, and each restores the count it found. With PyTorch's OpenMP backend
(the CPU wheels) the count is the calling thread's own, so a decoding block
on a propagation worker leaves the encoder thread of the widget alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["decoding", "encoding", "threads"]

_local = threading.local()  # .outer: the thread count before the outermost decoding block


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch  # not at import: this module is imported where torch may not be needed

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """The block's PyTorch intra-op threads: ``n`` (None: unchanged), put back after it,
    also after an error (e.g. the widget's preview decode, ``Preview.decode_threads``)."""
    if n is None:
        yield
        return
    with _threads(max(1, int(n))):
        yield


@contextmanager
def decoding() -> Iterator[None]:
    """Run the block's PyTorch work on one intra-op thread (decoder calls)."""
    import torch

    outermost = getattr(_local, "outer", None) is None
    if outermost:
        _local.outer = torch.get_num_threads()
    try:
        with _threads(1):
            yield
    finally:
        if outermost:
            _local.outer = None


@contextmanager
def encoding() -> Iterator[None]:
    """Give the block (an encoder run) the threads a :func:`decoding` block took away."""
    outer = getattr(_local, "outer", None)
    if outer is None:
        yield
        return
    with _threads(outer):
        yield
