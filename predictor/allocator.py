"""Keep long-lived processes from holding memory they freed (glibc's malloc; elsewhere nothing happens).

glibc raises its mmap threshold to the size of each large block freed (up to 32 MB): after that, arrays of a
few MB (a device table's columns, an optimized graph's buffers) come from the heap, and freeing them returns
nothing to the system while a block above them lives. A service worker that loads a table, merges uploads
into it and optimizes models then grows by hundreds of MB it no longer uses. `tune_allocator` fixes the
threshold (blocks of 1 MiB and more are mapped, and unmapped when freed) and caps malloc's arenas, which
threads would otherwise multiply; `release_free_memory` hands the heap's free pages back after big work.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

__all__ = ["release_free_memory", "tune_allocator"]

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        # musl has neither; only glibc's malloc keeps what it freed this way.
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> bool:
    """Map blocks of 1 MiB and more and cap malloc's arenas in this process; False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))
    if not tuned:
        logger.debug("mallopt refused the allocator settings")
    return tuned


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (malloc_trim); False where nothing was returned or not glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
