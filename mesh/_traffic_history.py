"""Traffic history for a scenario's cloud pipeline: per-minute counts from the sensor bridge.

SUMO's fixed-time program runs the scenario's demand level with another seed;
each junction's approaches are counted every simulated second and averaged
per minute into ``counts-<junction>.csv`` (``site, minute, approach, count``):
the data the cloud's analytics (Ray Data) and training read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ._sumo_network import GridNetwork, make_demand
from ._sumo_session import SumoSession

__all__ = ["History", "collect_history"]

_NAMES = ("north", "east", "south", "west")


@dataclass(frozen=True, slots=True)
class History:
    """Where the counts went and how many there are."""

    directory: Path
    vehicles: int
    rows: int


def collect_history(
    grid: GridNetwork,
    out_dir: Path,
    *,
    level: str,
    seed: int,
    horizon_s: float,
    scale: float = 1.0,
) -> History:
    """Run SUMO (fixed-time) on ``level`` demand and write per-minute approach counts.

    Raises:
        SimulationError: SUMO is missing or fails.
    """
    demand = make_demand(out_dir, grid, level=level, seed=seed, horizon_s=horizon_s, scale=scale)
    sums: dict[tuple[str, int, int], float] = {}
    session = SumoSession(
        grid, demand.path, control="static", seed=seed, end_s=horizon_s, workdir=out_dir / "sumo"
    )
    session.start()
    try:
        while not session.done:
            minute = int(session.time_s // 60)
            for junction, obs in session.observe_all().items():
                for k, count in enumerate(obs.counts):
                    key = (junction, minute, k)
                    sums[key] = sums.get(key, 0.0) + count
            session.step()
    finally:
        session.close()
    rows = 0
    for junction in sorted({j for j, _, _ in sums}):
        with (out_dir / f"counts-{junction}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["site", "minute", "approach", "count"])
            for (j, minute, k), total in sorted(sums.items()):
                if j == junction:
                    writer.writerow([j, minute, _NAMES[k], round(total / 60.0, 2)])
                    rows += 1
    return History(out_dir, demand.vehicles, rows)
