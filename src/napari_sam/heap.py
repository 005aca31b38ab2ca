"""Give the C heap's free memory back to the operating system.

Decoding thousands of boxes leaves the decoder's large temporaries (several MiB
each) freed but still mapped in glibc's heaps, which only shrink from their top:
a process's resident memory then stays at its high-water mark, and the pages of
the objects made afterwards sit amid it. :func:`release_free_heap` asks glibc
(``malloc_trim``) to return every free page; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_heap"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc); True when it could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
