"""How far the counter's counts are from SUMO's: the count error per approach.

Each counted camera frame gives, per approach, the counter's count and the
exact count of the vehicles on it (what the simulator knows). :class:`CountError`
accumulates their absolute differences: the mean absolute error per approach
(over every approach of every frame), per approach direction, and the bias
(counted minus true: negative when the camera undercounts). The live scenario
reports it (the Traffic section, ``camera_count_error`` in the summary) and
so does ``bench/traffic.py``. :class:`ErrorSeries` keeps the same error per
site over simulated time, in buckets (a drifting camera shows as a rising line).

Example:
    >>> err = CountError()
    >>> err.add([3, 0, 5, 1], [4, 0, 5, 1])
    >>> err.add([2, 1, 5, 1], [2, 0, 5, 1])
    >>> err.summary()["mae"], err.summary()["by_approach"]["north"]
    (0.25, 0.5)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from functions.traffic.occupancy import APPROACHES

__all__ = ["CountError", "ErrorSeries", "describe_summary", "merge_summaries"]

#: Most (site, bucket) cells an :class:`ErrorSeries` keeps; later ones are dropped.
_MAX_CELLS = 20_000


class CountError:
    """Counted vs true vehicles per approach, accumulated frame by frame (thread safe)."""

    def __init__(self, approaches: Sequence[str] = APPROACHES) -> None:
        """Nothing counted yet."""
        self._approaches = tuple(approaches)
        self._abs = [0.0] * len(self._approaches)
        self._diff = [0.0] * len(self._approaches)
        self._true = [0.0] * len(self._approaches)
        self._frames = 0
        self._lock = threading.Lock()

    def add(self, counted: Sequence[float], truth: Sequence[float]) -> None:
        """One frame: the counter's count and the exact count of each approach.

        Raises:
            ValueError: not one count per approach in each.
        """
        n = len(self._approaches)
        if len(counted) != n or len(truth) != n:
            raise ValueError(
                f"expected {n} counts per frame (one per approach), got {len(counted)} "
                f"counted and {len(truth)} true"
            )
        with self._lock:
            for i, (c, t) in enumerate(zip(counted, truth, strict=True)):
                self._abs[i] += abs(float(c) - float(t))
                self._diff[i] += float(c) - float(t)
                self._true[i] += float(t)
            self._frames += 1

    @property
    def frames(self) -> int:
        """Frames added."""
        return self._frames

    def summary(self) -> dict[str, Any]:
        """``frames``, ``mae`` (vehicles per approach), ``by_approach``, ``bias``, ``mean_true``.

        The figures are None before the first frame.
        """
        with self._lock:
            frames = self._frames
            if frames == 0:
                return {
                    "frames": 0,
                    "mae": None,
                    "by_approach": dict.fromkeys(self._approaches),
                    "bias": None,
                    "mean_true": None,
                }
            samples = frames * len(self._approaches)
            return {
                "frames": frames,
                "mae": round(sum(self._abs) / samples, 4),
                "by_approach": {
                    a: round(v / frames, 4)
                    for a, v in zip(self._approaches, self._abs, strict=True)
                },
                "bias": round(sum(self._diff) / samples, 4),
                "mean_true": round(sum(self._true) / samples, 3),
            }

    def describe(self) -> str:
        """One line for the report, e.g. ``camera count error: 0.84 vehicles per approach ...``."""
        return describe_summary(self.summary())


class ErrorSeries:
    """The count error per site over simulated time, averaged in ``bucket_s`` buckets (thread safe).

    Example:
        >>> series = ErrorSeries(bucket_s=30)
        >>> series.add("A0", 5.0, 1.0); series.add("A0", 20.0, 2.0); series.add("A0", 40.0, 6.0)
        >>> series.series()["A0"]
        [(15.0, 1.5), (45.0, 6.0)]
    """

    def __init__(self, bucket_s: float = 30.0) -> None:
        """Nothing added yet.

        Raises:
            ValueError: ``bucket_s`` not positive.
        """
        if not bucket_s > 0:
            raise ValueError(f"bucket_s: expected > 0 seconds, got {bucket_s!r}")
        self.bucket_s = float(bucket_s)
        self._cells: dict[tuple[str, int], list[float]] = {}
        self._lock = threading.Lock()

    def add(self, site: str, sim_s: float, mae: float) -> None:
        """One counted frame of ``site`` at simulated second ``sim_s``: its error per approach."""
        key = (site, int(max(0.0, sim_s) // self.bucket_s))
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                if len(self._cells) >= _MAX_CELLS:
                    return
                cell = self._cells[key] = [0.0, 0.0]
            cell[0] += float(mae)
            cell[1] += 1.0

    def series(self) -> dict[str, list[tuple[float, float]]]:
        """Site -> ``(bucket middle, mean error)`` in time order."""
        with self._lock:
            cells = sorted(self._cells.items())
        out: dict[str, list[tuple[float, float]]] = {}
        for (site, bucket), (total, n) in cells:
            middle = (bucket + 0.5) * self.bucket_s
            out.setdefault(site, []).append((middle, round(total / n, 4)))
        return out

    def mean(
        self, *, sites: Iterable[str] | None = None, since_s: float = 0.0, until_s: float = math.inf
    ) -> float | None:
        """The frame-weighted mean error of ``sites`` (all: None) in buckets within the times."""
        wanted = None if sites is None else set(sites)
        with self._lock:
            cells = list(self._cells.items())
        total = n = 0.0
        for (site, bucket), (err, count) in cells:
            start = bucket * self.bucket_s
            if (wanted is None or site in wanted) and since_s <= start and start < until_s:
                total, n = total + err, n + count
        return round(total / n, 4) if n else None


def describe_summary(summary: Mapping[str, Any]) -> str:
    """A :meth:`CountError.summary` (or merged summaries) as one line."""
    if not summary.get("frames"):
        return "camera count error: no counted frame matched its truth"
    each = ", ".join(f"{a} {v:.2f}" for a, v in summary["by_approach"].items() if v is not None)
    return (
        f"camera count error: {summary['mae']:.2f} vehicles per approach (MAE; {each}), "
        f"bias {summary['bias']:+.2f}, over {summary['frames']} frames with "
        f"{summary['mean_true']:.1f} vehicles per approach on average"
    )


def merge_summaries(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several runs' summaries as one, each weighted by its frames.

    Example:
        >>> a = {"frames": 1, "mae": 1.0, "by_approach": {"north": 1.0}, "bias": -1.0,
        ...      "mean_true": 4.0}
        >>> b = {"frames": 3, "mae": 0.0, "by_approach": {"north": 0.0}, "bias": 0.0,
        ...      "mean_true": 0.0}
        >>> merge_summaries([a, b])["mae"]
        0.25
    """
    runs = [s for s in summaries if s.get("frames")]
    total = sum(int(s["frames"]) for s in runs)
    if not runs:
        return {"frames": 0, "mae": None, "by_approach": {}, "bias": None, "mean_true": None}

    def mean(values: Iterable[tuple[float, int]]) -> float:
        pairs = list(values)
        return round(math.fsum(v * w for v, w in pairs) / total, 4)

    approaches = list(runs[0]["by_approach"])
    return {
        "frames": total,
        "mae": mean((s["mae"], s["frames"]) for s in runs),
        "by_approach": {
            a: mean((s["by_approach"][a], s["frames"]) for s in runs) for a in approaches
        },
        "bias": mean((s["bias"], s["frames"]) for s in runs),
        "mean_true": mean((s["mean_true"], s["frames"]) for s in runs),
    }
