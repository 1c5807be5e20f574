"""Large inference bodies decoded in a worker process, so the gateway's event loop keeps answering.

The gateway decodes the tensors of requests for edge agents itself
(:meth:`mesh.serving._gateway.Gateway.infer`). Parsing JSON holds the GIL for
the whole document (measured: a 60 MiB body stalled a thread-offloaded decode's
event loop ~0.75 s, health checks included), so a thread does not help;
:class:`DecodePool` sends JSON heads past a threshold to one worker process
(spawned on first use, stopped with the gateway) and small ones are decoded
inline, where the hot path stays. Binary tensors need no parsing: a body whose
JSON head is small is decoded inline whatever its size.

Example:
    >>> pool = DecodePool()                                            # doctest: +SKIP
    >>> request = await pool.decode("counter", body, None)             # doctest: +SKIP
    >>> pool.close()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

from mesh.serving._oip import InferenceInputError, OipRequest, decode_request

__all__ = ["OFFLOAD_BYTES", "DecodePool"]

#: JSON heads past this are decoded in the worker process.
OFFLOAD_BYTES = 256 * 1024


def _decode(model: str, body: bytes, header_length: int | None) -> OipRequest | str:
    """In the worker: the request, or the refusal's problem.

    The problem goes back as text: exceptions with their own ``__init__`` do not unpickle.
    """
    try:
        return decode_request(model, body, header_length)
    except InferenceInputError as exc:
        return exc.problem


class DecodePool:
    """Decodes inference bodies: inline when the JSON head is small, else in a worker process.

    Args:
        offload_bytes: JSON heads past this go to the worker.
    """

    def __init__(self, offload_bytes: int = OFFLOAD_BYTES) -> None:
        """No process starts until a large body comes."""
        self.offload_bytes = offload_bytes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _worker(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn")
                )
            return self._executor

    async def decode(self, model: str, body: bytes, header_length: int | None) -> OipRequest:
        """:func:`~mesh.serving._oip.decode_request`, off the event loop when the JSON is large.

        Raises:
            InferenceInputError: the body is malformed or out of bounds.
        """
        head = len(body) if header_length is None else header_length
        if head <= self.offload_bytes:
            return decode_request(model, body, header_length)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._worker(), _decode, model, body, header_length)
        if isinstance(result, str):
            raise InferenceInputError(model, result)
        return result

    def close(self) -> None:
        """Stop the worker process, if one started; idempotent."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
