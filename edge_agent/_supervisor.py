"""Supervised background threads: a loop that dies from an exception is started again.

Every long-lived thread of the agent (the outbox pump, the reconciler, the
heartbeat, each pipeline) runs under a :class:`Supervisor`. A loop that returns
is done; one that raises is logged, counted and run again on the same thread
after a backoff that doubles from ``min_backoff_s`` up to ``max_backoff_s``
(back to the minimum once a run lasted longer than ``max_backoff_s``). The
counts go out in every heartbeat (``faults.thread_failures``), so a loop that
keeps failing is visible at the control plane instead of leaving a dead thread.

Example:
    >>> runs = []
    >>> def flaky() -> None:
    ...     runs.append(1)
    ...     if len(runs) < 3:
    ...         raise RuntimeError("boom")
    >>> sup = Supervisor(min_backoff_s=0.001)
    >>> sup.spawn("flaky", flaky).join(5)
    >>> len(runs), sup.failures()
    (3, {'flaky': 2})
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Runs named loops on daemon threads and restarts those that raise.

    Args:
        min_backoff_s: the wait before the first restart.
        max_backoff_s: the longest wait between restarts.
    """

    def __init__(self, *, min_backoff_s: float = 0.1, max_backoff_s: float = 30.0) -> None:
        """No loops yet."""
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError(
                f"need 0 < min_backoff_s <= max_backoff_s, got {min_backoff_s}, {max_backoff_s}"
            )
        self._min = min_backoff_s
        self._max = max_backoff_s
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._stopping = threading.Event()

    def spawn(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        """Run ``loop`` on a daemon thread named ``name``, restarting it while it raises.

        Returns:
            The started thread (alive while ``loop`` runs or waits to restart).
        """
        thread = self.thread(name, loop)
        thread.start()
        return thread

    def thread(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        """The thread :meth:`spawn` would start, unstarted (to be stored before it runs)."""
        return threading.Thread(target=self.run, args=(name, loop), name=name, daemon=True)

    def failures(self) -> dict[str, int]:
        """How many times each loop raised, by name (only loops that did)."""
        with self._lock:
            return dict(self._failures)

    def stop(self) -> None:
        """Restart nothing any more (loops stop by their own means; waits end now)."""
        self._stopping.set()

    def run(self, name: str, loop: Callable[[], None]) -> None:
        """Run ``loop`` on this thread, restarting it while it raises (what threads run)."""
        delay = self._min
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                loop()
                return
            except Exception:
                with self._lock:
                    self._failures[name] = count = self._failures.get(name, 0) + 1
                if time.monotonic() - started > self._max:
                    delay = self._min  # it ran well for a while: a fresh failure
                logger.exception(
                    "thread %s failed (%d time(s)); restarting in %.1fs", name, count, delay
                )
            self._stopping.wait(delay)
            delay = min(delay * 2, self._max)
