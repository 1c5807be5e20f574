"""Deadlines for reading request bodies, enforced by one sweeping timer per event loop.

A slow client must not hold a server's memory and a connection forever: a body
must arrive within ``timeout_s`` (else HTTP 408 and the connection closes).
``asyncio.timeout`` per request cost ~6 us here; :class:`ReadDeadlines` keeps
the reads in flight in a dict and one timer, re-armed while there are any,
cancels those past their deadline, so a request pays two dict operations (~1 us).
The gateway's inference fast path and every replica use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from mesh.core._errors import RequestTimeoutError

__all__ = ["ReadDeadlines"]


class ReadDeadlines:
    """Deadlines for reading request bodies, enforced by one sweeping timer.

    Args:
        timeout_s: how long one body may take to arrive.

    Example:
        >>> async def hangs() -> bytes:
        ...     await asyncio.sleep(60)
        ...     return b""
        >>> asyncio.run(ReadDeadlines(0.05).read(hangs()))
        Traceback (most recent call last):
        ...
        mesh.core._errors.RequestTimeoutError: the request body did not arrive within 0.05 s
    """

    def __init__(self, timeout_s: float) -> None:
        """No reads yet; the timer starts with the first."""
        self.timeout_s = timeout_s
        self._granularity = min(1.0, timeout_s / 4)
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, reading: Awaitable[bytes | None]) -> bytes | None:
        """Await ``reading`` (the body) under the deadline.

        Raises:
            RequestTimeoutError: it did not finish within :attr:`timeout_s` (HTTP 408).
        """
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel, so no deadline
            return await reading
        self._reading[task] = time.monotonic() + self.timeout_s
        if self._timer is None:
            self._arm()
        try:
            return await reading
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            raise RequestTimeoutError(
                f"the request body did not arrive within {self.timeout_s:g} s"
            ) from None
        finally:
            self._reading.pop(task, None)

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._granularity, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        if self._reading:
            self._arm()
