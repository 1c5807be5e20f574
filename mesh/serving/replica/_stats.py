"""A replica's counters: requests in flight (now and time-averaged), counts and latency.

What ``GET /stats`` reports (with the replica's identity) and the autoscaler
and supervisor read; ``GET /metrics`` renders its latency histogram.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mesh.core._metrics import MetricsRegistry

__all__ = ["ReplicaStats"]


class ReplicaStats:
    """In-flight requests (now and time-averaged), counts and latency of one replica."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start counting at ``clock()``."""
        self._clock = clock
        self._lock = threading.Lock()
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self._area = 0.0  # in-flight x seconds since the last window
        self._since = self._changed = clock()
        self.metrics = MetricsRegistry()
        self.latency = self.metrics.histogram(
            "mesh_replica_latency_seconds", "Time from request to response in this replica."
        )

    def _advance(self, now: float) -> None:
        self._area += self.in_flight * (now - self._changed)
        self._changed = now

    def started(self) -> None:
        """A request came in."""
        with self._lock:
            self._advance(self._clock())
            self.in_flight += 1

    def finished(self, seconds: float, ok: bool) -> None:
        """A request was answered after ``seconds``."""
        with self._lock:
            self._advance(self._clock())
            self.in_flight -= 1
            self.requests += 1
            if not ok:
                self.errors += 1
        self.latency.observe(seconds)

    def window(self) -> dict[str, Any]:
        """Counters, and the average in-flight count since the last call (which starts anew)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            span = now - self._since
            average = self._area / span if span > 0 else float(self.in_flight)
            self._area, self._since = 0.0, now
            out: dict[str, Any] = {
                "in_flight": self.in_flight,
                "avg_in_flight": average,
                "window_s": span,
                "requests": self.requests,
                "errors": self.errors,
            }
        snap = self.metrics.snapshot(self.latency)
        out["p50_ms"] = None if (q := snap.quantile(0.5)) is None else q * 1000.0
        out["p95_ms"] = None if (q := snap.quantile(0.95)) is None else q * 1000.0
        return out
