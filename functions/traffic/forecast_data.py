"""The flow forecaster's data: per-minute counts per approach, as lagged windows.

The forecaster learns each approach's next minute from its last ``lags``
minutes. Its counts come from a scenario's recorded history (:func:`read_history`:
one :class:`CountSeries` per junction and day, cut into training and later,
held-out windows by :func:`history_windows`) or, without one, from
:func:`synthetic_flows` (:func:`synthetic_windows`). :func:`lagged_windows`
turns one series into model inputs and targets.

Example:
    >>> x, y = lagged_windows(synthetic_flows(30, seed=1), lags=8)
    >>> x.shape, y.shape
    ((22, 4, 8), (22, 4))
"""

from __future__ import annotations

import csv
import glob
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .occupancy import APPROACHES

__all__ = [
    "CountSeries",
    "history_windows",
    "lagged_windows",
    "read_history",
    "synthetic_flows",
    "synthetic_windows",
]

logger = logging.getLogger(__name__)


def synthetic_flows(
    minutes: int, *, seed: int = 0, approaches: int = len(APPROACHES)
) -> npt.NDArray[np.float32]:
    """Vehicles per minute per approach, ``[minutes, approaches]``, with a morning peak.

    Deterministic by seed; the SUMO scenario's detector counts take its place later.
    """
    rng = np.random.default_rng([seed, 7])
    t = np.arange(minutes, dtype=np.float64)
    base = rng.uniform(3.0, 8.0, approaches)
    peak_at = rng.uniform(90.0, 150.0)
    peak = np.exp(-(((t - peak_at) / 45.0) ** 2))[:, None]
    weight = rng.uniform(0.6, 1.6, approaches)
    # Slow wander (platoons released by upstream signals) on top of the peak.
    wander = np.cumsum(rng.normal(0.0, 0.25, (minutes, approaches)), axis=0)
    wander -= np.linspace(0.0, 1.0, minutes)[:, None] * wander[-1:]
    rate = np.clip(base + 14.0 * peak * weight + wander, 0.2, None)
    return rng.poisson(rate).astype(np.float32)


def lagged_windows(
    series: npt.NDArray[np.float32], lags: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Inputs ``[n, approaches, lags]`` (oldest first) and next-minute targets ``[n, approaches]``.

    Returns:
        The windows and the counts of the minute after each.
    """
    if len(series) <= lags:
        raise ValueError(f"need more than {lags} minutes of counts, got {len(series)}")
    windows = np.stack([series[i : i + lags] for i in range(len(series) - lags)])
    return np.ascontiguousarray(windows.transpose(0, 2, 1)), series[lags:]


@dataclass(frozen=True, slots=True)
class CountSeries:
    """One junction's per-minute counts over one recorded day.

    Attributes:
        source: the CSV file it was read from.
        site: the junction.
        day: the day (a SUMO run) within the file.
        first_minute: the minute of ``counts[0]``.
        counts: ``[minutes, approaches]``, approaches in :data:`APPROACHES` order.
    """

    source: str
    site: str
    day: int
    first_minute: int
    counts: npt.NDArray[np.float32]


_HISTORY_COLUMNS = ("site", "minute", "approach", "count")


def read_history(pattern: str) -> list[CountSeries]:
    """The series in the history CSVs matching ``pattern`` (a glob), one per site and day.

    Rows are ``site, day, minute, approach, count`` (``day`` optional, 0 when
    missing); ``count`` is the mean number of vehicles on the approach during
    that minute (``functions.traffic.sim.history``). Every minute of a series, from its
    first to its last, needs a count for every approach.

    Raises:
        FileNotFoundError: no file matches ``pattern``.
        ValueError: a file is malformed (the message names it, and the line).
    """
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no history files match {pattern!r}")
    index = {a: i for i, a in enumerate(APPROACHES)}
    out: list[CountSeries] = []
    for path in paths:
        cells: dict[tuple[str, int], dict[tuple[int, int], float]] = {}
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in _HISTORY_COLUMNS if c not in (reader.fieldnames or ())]
                if missing:
                    raise ValueError(
                        f"{path}: missing column(s) {', '.join(missing)} (expected "
                        f"{', '.join(_HISTORY_COLUMNS)}, optionally day)"
                    )
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    approach = row["approach"]
                    if approach not in index:
                        raise ValueError(
                            f"{where}: unknown approach {approach!r} "
                            f"(expected one of {', '.join(APPROACHES)})"
                        )
                    try:
                        day = int(row.get("day") or 0)
                        minute = int(row["minute"])
                        count = float(row["count"])
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"{where}: not a number ({exc})") from None
                    if not math.isfinite(count) or count < 0:
                        raise ValueError(f"{where}: count must be finite and >= 0, got {count}")
                    cells.setdefault((row["site"], day), {})[(minute, index[approach])] = count
        except OSError as exc:
            raise ValueError(f"{path}: cannot read history ({exc})") from exc
        for (site, day), values in sorted(cells.items()):
            minutes = sorted({m for m, _ in values})
            first, last = minutes[0], minutes[-1]
            series = np.zeros((last - first + 1, len(APPROACHES)), dtype=np.float32)
            for m in range(first, last + 1):
                for a, k in index.items():
                    value = values.get((m, k))
                    if value is None:
                        raise ValueError(
                            f"{path}: site {site} day {day} has no {a} count for minute {m}"
                        )
                    series[m - first, k] = value
            out.append(CountSeries(path, site, day, first, series))
    return out


def history_windows(
    series: Sequence[CountSeries], lags: int, *, holdout: float = 0.25
) -> tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
]:
    """Training and held-out windows from every series: the later part of each is held out.

    Each series with more than ``lags`` minutes gives :func:`lagged_windows`;
    the last ``ceil(holdout * n)`` of its ``n`` windows (at least one, when it
    has two or more) are held out, so validation is always later in time than
    training within a day. Shorter series are skipped.

    Returns:
        ``x_train [n, approaches, lags]``, ``y_train [n, approaches]``, ``x_val``, ``y_val``.

    Raises:
        ValueError: too little history for a training and a held-out window.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    train: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    val: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    for s in series:
        if len(s.counts) <= lags:
            logger.debug(
                "history %s %s day %d: too short for %d lags", s.source, s.site, s.day, lags
            )
            continue
        x, y = lagged_windows(s.counts, lags)
        held = math.ceil(holdout * len(x)) if len(x) > 1 else 0
        cut = len(x) - held
        train.append((x[:cut], y[:cut]))
        if held:
            val.append((x[cut:], y[cut:]))
    if not train or not val:
        longest = max((len(s.counts) for s in series), default=0)
        raise ValueError(
            f"need series of more than {lags + 1} minutes for training and held-out "
            f"windows with {lags} lags; the longest of {len(series)} has {longest}"
        )
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        np.concatenate([x for x, _ in val]),
        np.concatenate([y for _, y in val]),
    )


def synthetic_windows(
    minutes: int, lags: int, seed: int
) -> tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
]:
    """Training and held-out windows from ``minutes // 240`` days of :func:`synthetic_flows`.

    Returns:
        ``x_train [n, approaches, lags]``, ``y_train [n, approaches]``, ``x_val``, ``y_val``.
    """
    days = [synthetic_flows(240, seed=seed * 1000 + d) for d in range(max(1, minutes // 240))]
    pairs = [lagged_windows(day, lags) for day in days]
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    # The last quarter is held out (later in time: no leakage).
    cut = int(len(x) * 0.75)
    return x[:cut], y[:cut], x[cut:], y[cut:]
