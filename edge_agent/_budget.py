"""The agent's memory budget: bytes of requests held at once, and memory given back after.

A request's payload stays alive from the moment paho hands it over until its
reply is published (its tensors are views of it), and batching copies a batch
once more. Counting requests does not bound that (300 requests of 4 MB are
1.2 GB), so every module server takes a request's bytes from one
:class:`MemoryBudget` shared by the whole agent, and refuses it ("overloaded")
when they do not fit. When the last held request is answered after a burst, the
C heap's free pages go back to the system (glibc keeps them otherwise).

Example:
    >>> budget = MemoryBudget(1024)
    >>> budget.take(1000), budget.take(100), budget.in_use
    (True, False, 1000)
    >>> budget.give(1000); budget.in_use
    0
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

__all__ = ["MemoryBudget", "release_free_memory", "tune_malloc"]

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt() parameter numbers
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # glibc, not musl


_LIBC = _libc()


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``).

    Returns:
        Whether anything was given back (False also where there is no glibc).
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


def tune_malloc(arenas: int = 2, mmap_threshold_bytes: int = 1024 * 1024) -> bool:
    """Make glibc give large buffers back at once and keep few arenas.

    glibc raises its mmap threshold each time a large mmapped block is freed
    (up to 32 MiB), after which 4 MiB payloads come from the heap and stay
    there as fragments; a fixed threshold keeps every buffer over it in its
    own mapping, unmapped when freed. And it gives each thread that allocates
    its own arena, up to 8 per core, each keeping free pages. Call it early,
    before the threads start (``MALLOC_ARENA_MAX`` and
    ``MALLOC_MMAP_THRESHOLD_`` in the environment do the same).

    Returns:
        Whether the settings were applied (False where there is no glibc).
    """
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas)) and bool(
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)
    )


class MemoryBudget:
    """Bytes of requests an agent holds at once, shared by all its module servers.

    Thread-safe: taken on the network thread, given back on the workers.
    """

    def __init__(self, limit_bytes: int, *, trim_after_bytes: int | None = None) -> None:
        """Allow ``limit_bytes`` held at once.

        Args:
            limit_bytes: the budget.
            trim_after_bytes: when the budget empties after at least this many
                bytes went through it since the last time, free C heap pages
                are given back (:func:`release_free_memory`). Default: the budget.
        """
        if limit_bytes < 1:
            raise ValueError(f"memory budget must be at least 1 byte, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._trim_after = limit_bytes if trim_after_bytes is None else trim_after_bytes
        self._lock = threading.Lock()
        self._in_use = 0
        self._since_trim = 0
        self.refused = 0
        """Requests refused so far for want of budget."""

    @property
    def in_use(self) -> int:
        """Bytes held now."""
        return self._in_use

    def take(self, nbytes: int) -> bool:
        """Hold ``nbytes``; False (and nothing held) when they do not fit."""
        with self._lock:
            if self._in_use + nbytes > self.limit_bytes:
                self.refused += 1
                return False
            self._in_use += nbytes
            self._since_trim += nbytes
            return True

    def hold(self, nbytes: int) -> None:
        """Hold ``nbytes`` that cannot be refused (a reply computed), even past the limit."""
        with self._lock:
            self._in_use += nbytes
            self._since_trim += nbytes

    def give(self, nbytes: int) -> None:
        """Give back ``nbytes`` taken earlier; after a burst, give free memory back too."""
        with self._lock:
            self._in_use = max(0, self._in_use - nbytes)
            trim = self._in_use == 0 and self._since_trim >= self._trim_after
            if trim:
                self._since_trim = 0
        if trim:
            released = release_free_memory()
            logger.debug("memory budget idle after a burst: heap trimmed (%s)", released)
