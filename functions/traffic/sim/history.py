"""Traffic history for a scenario's cloud pipeline: per-minute counts from the sensor bridge.

One SUMO run per "day" on the scenario's demand level, each with its own seed
(days like the scenario's, none the scenario's own), under SUMO's actuated
program (the nearest to the live adaptive control). Each junction's
approaches are counted every simulated second and averaged per minute into
``counts-<junction>.csv`` with the columns ``site, day, minute, approach,
count``: ``count`` is the mean number of vehicles on the whole approach during
that minute — the quantity the edge counter reports per camera frame, so what
the cloud's analytics (Ray Data) and the flow forecaster's training read is
what the live loop sees.

Example:
    >>> h = collect_history(g, out, level="peak", seed=8, horizon_s=600, days=12)  # doctest: +SKIP
    >>> h.series, h.rows                                                      # doctest: +SKIP
    (108, 4320)
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from functions.traffic.sim.network import GridNetwork, make_demand
from functions.traffic.sim.session import Control, SumoSession

__all__ = ["History", "collect_history", "history_days"]

logger = logging.getLogger(__name__)

_NAMES = ("north", "east", "south", "west")
#: Simulated time the history should cover at least (the forecaster needs a few
#: hundred windows: 12 days of 10 minutes give 432 training windows of 4 lags on a
#: 3x3 grid), and the most days run to get there (~0.9 s per day there).
HISTORY_TARGET_S = 7200.0
MAX_DAYS = 12


@dataclass(frozen=True, slots=True)
class History:
    """Where the counts went and how many there are.

    Attributes:
        directory: holds ``counts-<junction>.csv``.
        vehicles: vehicles departed over all days.
        rows: CSV rows written (junctions x days x minutes x approaches).
        days: SUMO runs (one per seed).
        series: per-junction, per-day series (each one contiguous run of minutes).
    """

    directory: Path
    vehicles: int
    rows: int
    days: int = 1
    series: int = 0


def history_days(horizon_s: float) -> int:
    """Days to run so that the history covers about two hours (at least one, at most 12)."""
    if horizon_s <= 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    return max(1, min(MAX_DAYS, math.ceil(HISTORY_TARGET_S / horizon_s)))


def collect_history(
    grid: GridNetwork,
    out_dir: Path,
    *,
    level: str,
    seed: int,
    horizon_s: float,
    scale: float = 1.0,
    days: int = 1,
    control: Control = "actuated",
) -> History:
    """Run SUMO ``days`` times on ``level`` demand and write per-minute approach counts.

    Day ``d`` uses seed ``seed + d``. Only whole minutes are written (a partial
    last minute would be a mean over fewer seconds).

    Args:
        grid: the scenario's network.
        out_dir: where the routes, SUMO's files and the CSVs go.
        level: the demand level's name.
        seed: the first day's seed.
        horizon_s: simulated seconds per day.
        scale: multiplies the level's rate.
        days: SUMO runs, each a day with its own seed.
        control: the signal program that runs (one of SUMO's own). Counts depend on
            it (a fixed-time program builds longer queues); ``actuated`` is the one
            nearest to the scenario's adaptive control.

    Raises:
        ValueError: ``days`` < 1 or ``control`` is ``external``.
        SimulationError: SUMO is missing or fails.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if control == "external":
        raise ValueError("the history runs one of SUMO's own programs, not external control")
    out_dir.mkdir(parents=True, exist_ok=True)
    sums: dict[tuple[str, int, int, int], float] = {}
    seconds: dict[tuple[str, int, int], int] = {}
    vehicles = 0
    for day in range(days):
        demand = make_demand(
            out_dir, grid, level=level, seed=seed + day, horizon_s=horizon_s, scale=scale
        )
        vehicles += demand.vehicles
        session = SumoSession(
            grid,
            demand.path,
            control=control,
            seed=seed + day,
            end_s=horizon_s,
            workdir=out_dir / "sumo",
        )
        session.start()
        try:
            while not session.done:
                minute = int(session.time_s // 60)
                for junction, obs in session.observe_all().items():
                    at = (junction, day, minute)
                    seconds[at] = seconds.get(at, 0) + 1
                    for k, count in enumerate(obs.counts):
                        key = (junction, day, minute, k)
                        sums[key] = sums.get(key, 0.0) + count
                session.step()
        finally:
            session.close()
    # A minute observed for fewer seconds than its first (the end of a day) is partial.
    full = max(seconds.values(), default=0)
    rows = 0
    series: set[tuple[str, int]] = set()
    for junction in sorted({j for j, _, _, _ in sums}):
        with (out_dir / f"counts-{junction}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["site", "day", "minute", "approach", "count"])
            for (j, day, minute, k), total in sorted(sums.items()):
                n = seconds[(j, day, minute)]
                if j != junction or n < full:
                    continue
                writer.writerow([j, day, minute, _NAMES[k], round(total / n, 3)])
                rows += 1
                series.add((j, day))
    logger.info(
        "history: %d days of %s demand, %d series, %d rows in %s",
        days,
        level,
        len(series),
        rows,
        out_dir,
    )
    return History(out_dir, vehicles, rows, days=days, series=len(series))
