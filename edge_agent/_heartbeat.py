"""Heartbeats: host metrics from psutil plus module stats, every ``period_s``.

The loop runs on its own thread and only reads counters, so a busy model never
delays it (inference runs on the module workers, not here).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import psutil  # type: ignore[import-untyped, unused-ignore]

from ._supervisor import Supervisor
from .protocol import HostMetrics

__all__ = ["HeartbeatLoop", "process_start_time", "sample_host"]

logger = logging.getLogger(__name__)

_PROCESS = psutil.Process()


def _temperature() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    temps = [t.current for entries in sensors.values() for t in entries if t.current]
    return round(max(temps), 1) if temps else None


def process_start_time() -> float:
    """When this process started (Unix seconds)."""
    return float(_PROCESS.create_time())


def sample_host() -> HostMetrics:
    """CPU % (since the previous call), memory, RSS, load and temperature where present."""
    mem = psutil.virtual_memory()
    try:
        load1, load5, load15 = os.getloadavg()
    except OSError:
        load1 = load5 = load15 = 0.0
    return HostMetrics(
        cpu_percent=psutil.cpu_percent(interval=None),
        mem_percent=mem.percent,
        mem_available_mb=round(mem.available / 2**20, 1),
        rss_mb=round(_PROCESS.memory_info().rss / 2**20, 1),
        load1=load1,
        load5=load5,
        load15=load15,
        temperature_c=_temperature(),
    )


class HeartbeatLoop:
    """Calls ``beat()`` every ``period_s`` on a daemon thread until stopped."""

    def __init__(
        self,
        period_s: float,
        beat: Callable[[], None],
        name: str = "heartbeat",
        *,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``beat`` builds and publishes one heartbeat; its exceptions are logged.

        The thread runs under ``supervisor`` (its own if None).
        """
        self._period = period_s
        self._beat = beat
        self._name = name
        self._supervisor = supervisor or Supervisor()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating (the first beat is immediate)."""
        psutil.cpu_percent(interval=None)  # prime the CPU counter
        self._thread = self._supervisor.spawn(self._name, self._run)

    def stop(self) -> None:
        """Stop and join."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(2.0)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._beat()
            except Exception:
                logger.exception("heartbeat failed")
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended): do not burst
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)
