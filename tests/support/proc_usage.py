"""What processes use, for the benches: CPU seconds and RSS of a process tree, and a quantile."""

from __future__ import annotations

import contextlib

import psutil

__all__ = ["cpu_s", "percentile", "rss_mb", "tree"]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants now (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_s(procs: list[psutil.Process]) -> float:
    """The CPU seconds (user and system) the processes used so far (gone ones: none)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_mb(procs: list[psutil.Process]) -> float:
    """The resident memory of the processes now, in MB."""
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20
