"""A small traffic pipeline across the cloud and fog tiers (the foundation demo).

Fog nodes collect loop-detector counts per junction; the cloud turns them into
demand profiles (Ray Data), tunes and fits a short-term flow forecaster (Ray
Tune, numpy ridge regression); a fog stream function turns windows of live
counts into green splits. The SUMO scenario replaces this demo later.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import mesh
from mesh import Mesh, Resources

app = Mesh("traffic-demo")

APPROACHES = ("north", "east", "south", "west")


def synthetic_counts(site: str, minutes: int, seed: int) -> list[dict[str, Any]]:
    """Vehicles per minute per approach with a morning peak, deterministic per seed."""
    import numpy as np

    rng = np.random.default_rng([seed, sum(map(ord, site))])
    rows: list[dict[str, Any]] = []
    for minute in range(minutes):
        hour = 6 + minute // 60
        peak = math.exp(-(((minute / 60.0) - 2.0) ** 2) / 0.8)  # around 08:00
        for i, approach in enumerate(APPROACHES):
            base = (
                4.0 + (2.0 * i) % 3 + 14.0 * peak * (1.4 if approach in ("north", "east") else 0.7)
            )
            rows.append(
                {
                    "site": site,
                    "minute": minute,
                    "hour": hour,
                    "approach": approach,
                    "count": int(rng.poisson(base)),
                }
            )
    return rows


@app.function(tier="fog", resources=Resources(cpus=0.25), timeout_s=60)
def collect_counts(site: str, out_dir: str, minutes: int = 240, seed: int = 0) -> str:
    """Record a junction's per-minute counts (06:00 onwards) to a CSV file; returns its path."""
    path = Path(out_dir) / f"counts-{site}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = synthetic_counts(site, minutes, seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return str(path)


@app.batch(tier="cloud", resources=Resources(cpus=0.5), schedule="*/15 * * * *")
def demand_profiles(events: Any) -> Any:
    """Mean vehicles per minute by site, hour and approach."""
    return events.groupby(["site", "hour", "approach"]).mean("count")


def _lagged(series: Any, lags: int) -> tuple[Any, Any]:
    import numpy as np

    x = np.stack([series[i : len(series) - lags + i] for i in range(lags)], axis=1)
    return np.hstack([x, np.ones((len(x), 1))]), series[lags:]


def fit_ridge(series: Any, lags: int, ridge: float) -> tuple[list[float], float]:
    """Fit next-minute counts on the last ``lags`` minutes; returns (weights, held-out MAE)."""
    import numpy as np

    x, y = _lagged(np.asarray(series, dtype=float), lags)
    split = int(len(x) * 0.75)
    a = x[:split].T @ x[:split] + ridge * np.eye(x.shape[1])
    weights = np.linalg.solve(a, x[:split].T @ y[:split])
    mae = float(np.mean(np.abs(x[split:] @ weights - y[split:])))
    return [float(w) for w in weights], mae


def _total_series(seed: int = 0) -> list[int]:
    rows = synthetic_counts("j1", 240, seed)
    totals = [0] * 240
    for row in rows:
        totals[row["minute"]] += row["count"]
    return totals


@app.tune(
    metric="val_mae",
    mode="min",
    num_samples=4,
    search_space={"lags": app.choice([2, 4, 8]), "ridge": app.loguniform(1e-3, 10.0)},
    tier="cloud",
    resources=Resources(cpus=0.5),
)
def tune_forecaster(config: dict[str, Any]) -> None:
    """Search the forecaster's lags and ridge penalty by held-out MAE."""
    _, mae = fit_ridge(_total_series(), int(config["lags"]), float(config["ridge"]))
    mesh.report(val_mae=mae)


@app.function(tier="cloud", resources=Resources(cpus=0.5), retries=1, timeout_s=120)
def fit_forecaster(counts_csv: str, lags: int = 4, ridge: float = 0.1) -> dict[str, Any]:
    """Fit the flow forecaster on a junction's recorded counts."""
    totals: dict[int, int] = {}
    with open(counts_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            minute = int(row["minute"])
            totals[minute] = totals.get(minute, 0) + int(row["count"])
    series = [totals[m] for m in sorted(totals)]
    weights, mae = fit_ridge(series, lags, ridge)
    return {"lags": lags, "ridge": ridge, "weights": weights, "val_mae": mae}


@app.stream(tier="fog", topic="demo/+/counts", window_s=2.0, output_topic="demo/plans")
def signal_plan(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Green seconds per approach, proportional to the queued vehicles in the window.

    Each approach gets at least 7 s of a 60 s cycle (minus 4 x 3 s of yellow).
    """
    cycle_s, yellow_s, min_green_s = 60.0, 3.0, 7.0
    by_site: dict[str, dict[str, float]] = {}
    for message in window:
        site = str(message.get("site", "?"))
        counts = by_site.setdefault(site, dict.fromkeys(APPROACHES, 0.0))
        for approach in APPROACHES:
            counts[approach] += float(message.get(approach, 0))
    plans = []
    for site, counts in sorted(by_site.items()):
        spare = cycle_s - len(APPROACHES) * (yellow_s + min_green_s)
        total = sum(counts.values()) or 1.0
        greens = {a: round(min_green_s + spare * counts[a] / total, 1) for a in APPROACHES}
        plans.append({"site": site, "cycle_s": cycle_s, "green_s": greens})
    return plans
