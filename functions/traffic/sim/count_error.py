"""How far the counter's counts are from SUMO's: the count error per approach.

Each counted camera frame gives, per approach, the counter's count and the
exact count of the vehicles on it (what the simulator knows). :class:`CountError`
accumulates their absolute differences: the mean absolute error per approach
(over every approach of every frame), per approach direction, and the bias
(counted minus true: negative when the camera undercounts). The live scenario
reports it (the Traffic section, ``camera_count_error`` in the summary) and
so does ``bench/traffic.py``.

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

__all__ = ["CountError", "describe_summary", "merge_summaries"]


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
