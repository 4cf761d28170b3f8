"""
Keeping freed memory for reuse instead of returning it to the system, within a bound.

glibc's malloc serves every allocation above 32 MiB with a fresh ``mmap`` and gives
it back with ``munmap`` when freed. For a server that handles big tensors, each
request then pays the kernel for mapping, zeroing and faulting in every page of each
buffer again: grpc's request bytes, the response bytes, grpc's own copy of them. With
``retain_freed_memory(limit)`` big allocations come from the heap and freed memory is
kept for the next request, already faulted in.

The heap alone does not keep that promise: glibc gives back only the free memory at
the top of its heap, so after concurrent big requests the buffers freed below one
still in use stay resident (20 uploads of 256 MiB at once left gigabytes). So
``trim_freed_memory(limit)`` is called once big requests are over: it returns every
free page in the middle of the heaps and keeps at most ``limit`` bytes at the top,
the memory the next big request takes first. The resident size then stays at most
``limit`` above what is in use. ``FreedMemoryTrim`` decides when: after big request
bodies, and every few seconds for what no transport reports. Only glibc has these
knobs; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any, Callable, Optional, Tuple

__all__ = ["FreedMemoryTrim", "retain_freed_memory", "trim_freed_memory"]

#: mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: the largest value mallopt and malloc_trim take for a size
_INT_MAX = 2**31 - 1

#: a buffer at least this big, once freed, is followed by a trim
TRIM_AFTER = 16 * 1024 * 1024
#: seconds from the end of a big buffer to the trim (one trim for a burst of them)
TRIM_DELAY = 1.0
#: seconds between trims that follow no buffer in particular
SWEEP_EVERY = 5.0


@lru_cache(maxsize=None)
def _libc_function(name: str, argtypes: Tuple[Any, ...]) -> Optional[Any]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


def _mallopt() -> Optional[Any]:
    return _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))


def retain_freed_memory(limit: int) -> bool:
    """
    Serve big allocations from the heap and keep up to ``limit`` bytes of freed memory
    for reuse (process-wide). False where malloc has no such knobs (not glibc) or
    ``limit`` is 0 (the defaults stay). Call ``trim_freed_memory(limit)`` after big
    work to hold the bound.
    """
    if limit <= 0:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    limit = min(limit, _INT_MAX)
    # both or neither: the trim threshold first, so no allocation sees half of it
    if not mallopt(M_TRIM_THRESHOLD, limit):
        return False
    return bool(mallopt(M_MMAP_MAX, 0))


def trim_freed_memory(keep: int = 0) -> bool:
    """
    Return freed memory to the system, keeping at most ``keep`` bytes of it at the top
    of the heap for reuse (process-wide; glibc's ``malloc_trim``). False where there
    is no such call (not glibc) or nothing was returned.
    """
    malloc_trim = _libc_function("malloc_trim", (ctypes.c_size_t,))
    if malloc_trim is None:
        return False
    return bool(malloc_trim(min(max(keep, 0), _INT_MAX)))


class FreedMemoryTrim:
    """
    Trims freed memory down to ``keep`` bytes: a little after big buffers are freed
    (``freed(size)``, one trim for a burst of them), and, once started, every
    ``SWEEP_EVERY`` seconds, for the buffers no transport reports (grpc's own, the
    pipes to workers).
    """

    def __init__(
        self,
        keep: int,
        call_later: Callable[..., Any],
        trim: Callable[[int], Any] = trim_freed_memory,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        self.keep = keep
        self.sweep_every = sweep_every
        self._call_later = call_later
        self._trim = trim
        self._pending: Optional[Any] = None
        self._sweep: Optional[Any] = None

    def freed(self, size: int) -> None:
        """``size`` bytes were freed: trim soon if that is a big buffer."""
        if size >= TRIM_AFTER and self._pending is None:
            self._pending = self._call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._pending = None
        self._trim(self.keep)

    def start(self) -> None:
        """Sweep every ``sweep_every`` seconds from now on (0: never)."""
        if self.sweep_every > 0 and self._sweep is None:
            self._sweep = self._call_later(self.sweep_every, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        self._trim(self.keep)
        self.start()

    def stop(self) -> None:
        """No more trims."""
        for call in (self._pending, self._sweep):
            if call is not None and call.active():
                call.cancel()
        self._pending = self._sweep = None
