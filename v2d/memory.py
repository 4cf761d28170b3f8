"""
Keeping freed memory for reuse instead of returning it to the system.

glibc's malloc serves every allocation above 32 MiB with a fresh ``mmap`` and gives
it back with ``munmap`` when freed. For a server that handles big tensors, each
request then pays the kernel for mapping, zeroing and faulting in every page of each
buffer again: grpc's request bytes, the response bytes, grpc's own copy of them. With
``retain_freed_memory(limit)`` big allocations come from the heap and freed memory is
kept (up to ``limit`` bytes at its top) for the next request, already faulted in. The
price is a resident size that stays at its high-water mark, up to ``limit`` above
what is in use. Only glibc has these knobs; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

__all__ = ["retain_freed_memory"]

#: mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def _mallopt() -> Optional[ctypes._CFuncPtr]:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def retain_freed_memory(limit: int) -> bool:
    """
    Serve big allocations from the heap and keep up to ``limit`` bytes of freed memory
    for reuse (process-wide). False where malloc has no such knobs (not glibc) or
    ``limit`` is 0 (the defaults stay).
    """
    if limit <= 0:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    limit = min(limit, 2**31 - 1)
    # both or neither: the trim threshold first, so no allocation sees half of it
    if not mallopt(M_TRIM_THRESHOLD, limit):
        return False
    return bool(mallopt(M_MMAP_MAX, 0))
