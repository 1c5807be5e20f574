"""The fleet sweep's curves: each measure against N, its log-log growth, and a PNG.

``bench/fleet.py --sweep`` measures several fleet sizes; this module reads its
rows. A measure's *growth* is the slope of log(value) against log(N): 1 is
linear, 0 flat, 2 quadratic. ``top`` is the slope between the two largest sizes
that have the measure (what the fleet does at the largest N measured);
``overall`` is the least-squares slope over every size. A measure is flagged
``superlinear`` when ``top`` exceeds ``SUPERLINEAR`` (1.15: some slack for the
noise of a shared machine). A size that failed part way (a row with an
``error``) keeps the measures it took before the failing step; a missing, zero,
negative or non-finite value is left out of the fit.

Example:
    >>> rows = [{"agents": 100, "rollout_s": 1.0}, {"agents": 1000, "rollout_s": 100.0}]
    >>> g = growth(rows)["rollout_s"]
    >>> g["top"], g["superlinear"]
    (2.0, True)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: The measures plotted and fitted, with their axis labels.
MEASURES: dict[str, str] = {
    "cp_cpu_cores": "control plane CPU (cores)",
    "cp_rss_mb": "control plane RSS (MB)",
    "mosquitto_cpu_cores": "Mosquitto CPU (cores)",
    "mosquitto_rss_mb": "Mosquitto RSS (MB)",
    "heartbeat_lag_p95_s": "heartbeat lag p95 (s)",
    "reconcile_p95_s": "reconcile round p95 (s)",
    "rollout_s": "rollout (s)",
    "rollout_delivered_s": "rollout: last desired state delivered (s)",
    "offline_detect_s": "offline detected (s)",
    "metrics_scrape_p95_s": "metrics scrape p95 (s)",
    "listing_p95_s": "agents listed (/v1/dashboard/snapshot) p95 (s)",
    "route_switch_s": "route switch at every site (s)",
}

#: Above this log-log slope between the two largest sizes a measure is superlinear.
SUPERLINEAR = 1.15

_SAVES = "Mosquitto saves its whole database (N retained states) after each of N changes"
#: Why a measure is known to grow faster than N, printed beside a flag: Mosquitto saving
#: after every change (``broker_autosave`` "every-change").
REASONS_EVERY_CHANGE: dict[str, str] = {"rollout_s": _SAVES, "rollout_delivered_s": _SAVES}
#: Why, when it saves once a second (deploy/mosquitto.conf's).
REASONS: dict[str, str] = {
    "rollout_s": (
        "the simulator's installs: 8 download threads in the process that also drives the "
        "N connections, on the same 2 cores (rollout_delivered_s, the broker's part, is linear)"
    ),
    "heartbeat_lag_p95_s": (
        "one dispatcher thread takes every heartbeat: on 2 cores shared with the simulator "
        "and Mosquitto, its queue's wait grows faster than its load as that nears a core"
    ),
    "metrics_scrape_p95_s": (
        "four series per agent rendered on a worker thread that shares the GIL with the "
        "dispatcher and the bus's network thread, on 2 cores shared with the simulator"
    ),
}


def points(rows: list[dict[str, Any]], measure: str) -> list[tuple[float, float]]:
    """The (N, value) pairs of ``measure`` that can be fitted on a log-log scale, by N.

    Args:
        rows: The sweep's rows (``agents`` and the measures; failed ones carry ``error``).
        measure: A row key.

    Returns:
        One pair per usable row, sorted by N.
    """
    found = []
    for row in rows:
        value, agents = row.get(measure), row.get("agents")
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if not isinstance(agents, int) or agents < 1:
            continue
        if math.isfinite(value) and value > 0:
            found.append((float(agents), float(value)))
    return sorted(found)


def _slope(pairs: list[tuple[float, float]]) -> float:
    xs = [math.log(n) for n, _ in pairs]
    ys = [math.log(v) for _, v in pairs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def growth(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each measure's log-log slope against N: between the two largest sizes, and overall.

    Args:
        rows: The sweep's rows.

    Returns:
        Per measure of ``MEASURES``: ``sizes`` (the N fitted), ``top``, ``overall``
        (rounded to 3 places; None with fewer than two distinct sizes),
        ``superlinear`` and, when flagged and known, ``why``.
    """
    saves = {row.get("broker_autosave") for row in rows}
    reasons = REASONS_EVERY_CHANGE if saves == {"every-change"} else REASONS
    out: dict[str, dict[str, Any]] = {}
    for measure in MEASURES:
        pairs = points(rows, measure)
        sizes = sorted({int(n) for n, _ in pairs})
        entry: dict[str, Any] = {"sizes": sizes, "top": None, "overall": None}
        if len(sizes) >= 2:
            # the two largest sizes (a size measured twice: the later row)
            by_size = {n: (n, v) for n, v in pairs}
            entry["top"] = round(_slope([by_size[sizes[-2]], by_size[sizes[-1]]]), 3)
            entry["overall"] = round(_slope(pairs), 3)
        entry["superlinear"] = entry["top"] is not None and entry["top"] > SUPERLINEAR
        if entry["superlinear"] and measure in reasons:
            entry["why"] = reasons[measure]
        out[measure] = entry
    return out


def table(grown: dict[str, dict[str, Any]]) -> str:
    """The growth as a short text table, flagged measures marked.

    Args:
        grown: ``growth``'s result.

    Returns:
        One line per measure: slope between the two largest sizes, overall, a flag.
    """

    def fmt(slope: float | None) -> str:
        return "   -" if slope is None else f"{slope:5.2f}"

    lines = [f"{'measure':<24} {'top':>5} {'all':>5}  (log-log slope against N; 1 = linear)"]
    for measure, entry in grown.items():
        flag = "  SUPERLINEAR" if entry["superlinear"] else ""
        why = f": {entry['why']}" if "why" in entry else ""
        lines.append(f"{measure:<24} {fmt(entry['top'])} {fmt(entry['overall'])}{flag}{why}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Write one log-log panel per measure against N, with a linear guide, as a PNG.

    Args:
        rows: The sweep's rows.
        path: The PNG to write (its folder is created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    nrows = math.ceil(len(MEASURES) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.2 * nrows), squeeze=False)
    grown = growth(rows)
    for ax, (measure, label) in zip(axes.flat, MEASURES.items(), strict=False):
        pairs = points(rows, measure)
        ax.set_title(label, fontsize=9)
        if not pairs:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        ns, vs = [n for n, _ in pairs], [v for _, v in pairs]
        ax.loglog(ns, vs, "o-", label=measure)
        # a slope-1 guide through the smallest size: a curve steeper than it is superlinear
        ax.loglog([ns[0], ns[-1]], [vs[0], vs[0] * ns[-1] / ns[0]], ":", color="grey")
        top = grown[measure]["top"]
        if top is not None:
            ax.set_xlabel(f"agents (top slope {top:.2f})", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(MEASURES) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
