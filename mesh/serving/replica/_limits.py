"""What one request may cost a replica: its body cap, and memory handed back after it.

* :func:`body_limit`: the largest valid request for the model, from its
  signature: every input at the largest batch the replica takes, each element
  written as JSON text (:data:`JSON_BYTES_PER_ELEMENT`, more than any number
  needs), plus :data:`HEAD_ALLOWANCE` for names, shapes and parameters; never
  above :data:`~mesh.core._http_server.MAX_BODY_BYTES`. An input whose size the
  signature leaves open (a symbolic axis past the batch, or strings) gets the
  global cap.
* A body must arrive within ``read_timeout_s``:
  :class:`~mesh.core._read_deadlines.ReadDeadlines` (shared with the gateway).
* :class:`MemoryRelease`: after a large request, the C heap keeps the freed
  pages (glibc's malloc holds the arenas the JSON text, the Python floats and the
  numpy copies were in), so a replica sat at ~1 GB after one 64 MB body.
  ``malloc_trim(0)`` hands them back; it runs on a worker thread, one at a time,
  a few times in the two seconds after a request past :data:`LARGE_REQUEST_BYTES`
  (a no-op without glibc).

Example:
    >>> from mesh.models._export import ModelSignature, TensorSpec
    >>> sig = ModelSignature((TensorSpec("x", "float32", ("N", 4)),), (), opset=17)
    >>> body_limit(sig, max_batch=32) == 32 * 4 * JSON_BYTES_PER_ELEMENT + HEAD_ALLOWANCE
    True
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import numpy as np

from mesh.core._http_server import MAX_BODY_BYTES
from mesh.models._export import ModelSignature, TensorSpec

__all__ = [
    "HEAD_ALLOWANCE",
    "JSON_BYTES_PER_ELEMENT",
    "LARGE_REQUEST_BYTES",
    "READ_TIMEOUT_S",
    "MemoryRelease",
    "body_limit",
]

logger = logging.getLogger(__name__)

#: Bytes one tensor element may take as JSON text: ``-1.2345678901234567e-308, `` fits.
JSON_BYTES_PER_ELEMENT = 32
#: Room for the request's JSON head (names, datatypes, shapes, id, parameters).
HEAD_ALLOWANCE = 64 * 1024
#: Requests (or answers) past this many bytes hand their memory back afterwards.
LARGE_REQUEST_BYTES = 8 * 1024 * 1024
#: A request body must arrive within this many seconds (else 408 and the connection closes).
READ_TIMEOUT_S = 30.0


def _input_bytes(spec: TensorSpec, max_batch: int) -> int | None:
    """The most bytes one input takes as JSON at ``max_batch``; None: not bounded."""
    if spec.dtype in ("str", "object", "bytes"):
        return None
    try:
        itemsize = np.dtype(spec.dtype).itemsize
    except TypeError:
        return None
    elements = 1
    for axis, size in enumerate(spec.shape):
        if isinstance(size, int) and size >= 0:
            elements *= size
        elif axis == 0:
            elements *= max_batch
        else:
            return None  # a symbolic size past the batch axis: no bound
    return elements * max(itemsize, JSON_BYTES_PER_ELEMENT)


def body_limit(signature: ModelSignature, max_batch: int, cap: int = MAX_BODY_BYTES) -> int:
    """The largest body a valid request for ``signature`` can have, at most ``cap``.

    Args:
        signature: the model's inputs.
        max_batch: the largest batch (first axis, when symbolic) a request may carry.
        cap: the limit of every server of the mesh.
    """
    total = HEAD_ALLOWANCE
    for spec in signature.inputs:
        size = _input_bytes(spec, max(1, max_batch))
        if size is None:
            return cap
        total += size
        if total >= cap:
            return cap
    return total


def _malloc_trim() -> Callable[[], object] | None:
    """The C library's ``malloc_trim(0)`` (glibc), or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryRelease:
    """Hands the C heap's free pages back to the system after large requests.

    A large request's buffers are not all free when it returns: uvicorn may
    still be writing its answer. So a large request opens a window of
    ``settle_s`` in which the heap is trimmed every ``period_s`` (on a worker
    thread, one trim at a time); a later large request extends it.

    Args:
        threshold: request plus answer bytes past which a request opens the window.
        period_s: how often it trims within the window.
        settle_s: how long the window stays open after the last large request.
    """

    def __init__(
        self, threshold: int = LARGE_REQUEST_BYTES, *, period_s: float = 0.25, settle_s: float = 2.0
    ) -> None:
        """Find ``malloc_trim`` (none: :meth:`after` does nothing)."""
        self.threshold = threshold
        self.period_s = period_s
        self.settle_s = settle_s
        self._trim = _malloc_trim()
        self._until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self.trims = 0

    def after(self, size: int) -> None:
        """A request of ``size`` bytes finished (call from the event loop)."""
        if size < self.threshold or self._trim is None:
            return
        loop = asyncio.get_running_loop()
        self._until = loop.time() + self.settle_s
        if self._timer is None:
            self._timer = loop.call_later(self.period_s, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        if not self._running and self._trim is not None:
            self._running = True
            loop.run_in_executor(None, self._trim).add_done_callback(self._done)
        if loop.time() < self._until:
            self._timer = loop.call_later(self.period_s, self._tick)

    def _done(self, future: asyncio.Future[object]) -> None:
        self._running = False
        self.trims += 1
        if not future.cancelled() and future.exception() is not None:
            logger.debug("malloc_trim failed: %s", future.exception())
