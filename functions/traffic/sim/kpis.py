"""The traffic KPIs of a run and their part of the scenario report.

:class:`ControllerKpis` is one signal controller's figures over the whole
simulation (the mesh's adaptive control, and each SUMO baseline on the same
routes); :func:`traffic_section` turns them into the report's "Traffic"
section: a table, the halted-vehicles plot with the faults shaded, the
headline lines (waiting time, time loss and arrivals, each against the best
SUMO program on that measure), and the summary figures ``mean_wait_s``,
``mean_time_loss_s``, ``arrivals``, ``adaptive_vs_best`` (per measure),
``adaptive_vs_best_baseline`` and ``best_baseline`` (waiting time).
:func:`camera_section_parts` adds the cameras' count error and impairments.

Example:
    >>> k = {"adaptive": ControllerKpis(mean_wait_s=9.0, mean_time_loss_s=20.0,
    ...      mean_trip_s=80.0, arrivals=100),
    ...      "actuated": ControllerKpis(mean_wait_s=10.0, mean_time_loss_s=22.0,
    ...      mean_trip_s=82.0, arrivals=100)}
    >>> traffic_summary(k)["adaptive_vs_best_baseline"]
    0.9
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from functions.traffic.impairments import Impairments
from functions.traffic.sim.count_error import describe_summary
from mesh.scenario import ReportSection, ScenarioReport, fault_bands, html_chart, html_table

__all__ = [
    "ControllerKpis",
    "camera_section_parts",
    "controller_kpis",
    "traffic_headline",
    "traffic_section",
    "traffic_summary",
]


class ControllerKpis(BaseModel):
    """Traffic KPIs of one signal controller over the whole simulation."""

    model_config = ConfigDict(extra="forbid")

    mean_wait_s: float = Field(description="Mean waiting time per finished trip (s).")
    mean_time_loss_s: float = Field(description="Mean time lost to slowing per trip (s).")
    mean_trip_s: float = Field(description="Mean trip duration (s).")
    arrivals: int = Field(description="Trips finished.")
    teleports: int = Field(0, description="Vehicles SUMO teleported out of a jam.")
    queue: list[tuple[float, float]] = Field(
        default_factory=list, description="(sim second, vehicles halted in the network)."
    )


def controller_kpis(k: Any) -> ControllerKpis:
    """A SUMO session's :class:`~functions.traffic.sim.records.Kpis` as report figures."""
    return ControllerKpis(
        mean_wait_s=k.mean_wait_s,
        mean_time_loss_s=k.mean_time_loss_s,
        mean_trip_s=k.mean_trip_s,
        arrivals=k.arrivals,
        teleports=k.teleports,
        queue=[(float(t), float(q)) for t, q in k.queue_series],
    )


#: The measures compared with SUMO's programs, and whether lower is better.
MEASURES = {"mean_wait_s": True, "mean_time_loss_s": True, "arrivals": False}


def traffic_summary(traffic: Mapping[str, ControllerKpis]) -> dict[str, Any]:
    """Each measure by controller; adaptive against the best baseline other than fixed.

    ``adaptive_vs_best`` holds, per measure, adaptive's figure over the best
    SUMO program's on that measure (the lowest wait and time loss, the most
    arrivals), so ratios below 1 are better for waits and time loss and above 1
    for arrivals; ``adaptive_vs_best_baseline`` is the waiting-time one, against
    ``best_baseline``.
    """
    adaptive = traffic.get("adaptive")
    baselines = {k: v for k, v in traffic.items() if k not in ("adaptive", "fixed")}
    ratios: dict[str, float | None] = {}
    best_of: dict[str, str | None] = {}
    for measure, lower in MEASURES.items():
        figures = {k: float(getattr(v, measure)) for k, v in baselines.items()}
        pick = min if lower else max
        best = pick(figures, key=lambda k: figures[k], default=None)
        best_of[measure] = best
        ratios[measure] = (
            round(float(getattr(adaptive, measure)) / figures[best], 3)
            if adaptive is not None and best is not None and figures[best] > 0
            else None
        )
    return {
        "mean_wait_s": {k: round(v.mean_wait_s, 2) for k, v in traffic.items()},
        "mean_time_loss_s": {k: round(v.mean_time_loss_s, 2) for k, v in traffic.items()},
        "arrivals": {k: v.arrivals for k, v in traffic.items()},
        "adaptive_vs_best": ratios,
        "best_by_measure": best_of,
        "adaptive_vs_best_baseline": ratios["mean_wait_s"],
        "best_baseline": best_of["mean_wait_s"],
    }


def traffic_headline(summary: Mapping[str, Any]) -> list[str]:
    """The demo's traffic lines: waiting time, time loss and arrivals, then the ratios.

    Example:
        >>> k = {"adaptive": ControllerKpis(mean_wait_s=9.0, mean_time_loss_s=20.0,
        ...      mean_trip_s=80.0, arrivals=100),
        ...      "actuated": ControllerKpis(mean_wait_s=10.0, mean_time_loss_s=25.0,
        ...      mean_trip_s=82.0, arrivals=98)}
        >>> for line in traffic_headline(traffic_summary(k)): print(line)
        mean waiting time: adaptive 9.0 s, actuated 10.0 s
        time loss: adaptive 20.0 s, actuated 25.0 s; arrivals: adaptive 100, actuated 98
        adaptive / best SUMO program (actuated): waiting 0.90x, time loss 0.80x, arrivals 1.02x
    """
    waits = ", ".join(f"{k} {v:.1f} s" for k, v in summary["mean_wait_s"].items())
    losses = ", ".join(f"{k} {v:.1f} s" for k, v in summary["mean_time_loss_s"].items())
    arrivals = ", ".join(f"{k} {v}" for k, v in summary["arrivals"].items())
    lines = [f"mean waiting time: {waits}", f"time loss: {losses}; arrivals: {arrivals}"]
    names = {"mean_wait_s": "waiting", "mean_time_loss_s": "time loss", "arrivals": "arrivals"}
    known = {m: r for m, r in summary["adaptive_vs_best"].items() if r is not None}
    best = {summary["best_by_measure"][m] for m in known}
    if len(best) == 1:  # one program is the best on every measure: name it once
        ratios = [f"{names[m]} {r:.2f}x" for m, r in known.items()]
        lines.append(f"adaptive / best SUMO program ({best.pop()}): " + ", ".join(ratios))
    elif known:
        ratios = [
            f"{names[m]} {r:.2f}x ({summary['best_by_measure'][m]})" for m, r in known.items()
        ]
        lines.append("adaptive / best SUMO program: " + ", ".join(ratios))
    return lines


def traffic_section(
    traffic: Mapping[str, ControllerKpis], report: ScenarioReport, *, subtitle: str, plots: bool
) -> ReportSection:
    """The report's Traffic section (see the module docstring)."""
    summary = traffic_summary(traffic)
    headline = traffic_headline(summary) if traffic else []
    table = html_table(
        ["controller", "mean wait s", "mean time loss s", "mean trip s", "arrivals", "teleports"],
        [
            [
                name,
                f"{k.mean_wait_s:.2f}",
                f"{k.mean_time_loss_s:.2f}",
                f"{k.mean_trip_s:.1f}",
                str(k.arrivals),
                str(k.teleports),
            ]
            for name, k in traffic.items()
        ],
    )
    plot = _queue_chart(traffic, report) if plots else ""
    return ReportSection(
        title="Traffic" if traffic else "",
        html=table + plot,
        headline=tuple(headline),
        summary=summary,
        subtitle=subtitle,
    )


def _queue_chart(traffic: Mapping[str, ControllerKpis], report: ScenarioReport) -> str:
    """Vehicles halted over simulated time, per controller, with the faults shaded."""
    drawn = [(name, k.queue) for name, k in traffic.items() if k.queue]
    if not drawn:
        return ""
    return html_chart(
        [{"points": [[t, q] for t, q in queue], "width": 1.5} for _, queue in drawn],
        title="vehicles halted over time",
        legend=[name for name, _ in drawn],
        unit="vehicles",
        bands=fault_bands(report),
    )


def camera_section_parts(
    count_error: Mapping[str, Any], impairments: Impairments, section: ReportSection
) -> dict[str, Any]:
    """The Traffic section's fields with the camera count error added (for ``replace``).

    ``count_error`` is a :meth:`~functions.traffic.sim.count_error.CountError.summary`;
    the summary gains ``camera_count_error`` (with the impairments the cameras
    had), the headline its line, the HTML a table of the error per approach.
    """
    line = describe_summary(count_error)
    settings = (
        "perfect cameras"
        if impairments.is_none
        else ", ".join(
            f"{k} {v:g}" if v is not None else f"{k} none" for k, v in impairments.as_dict().items()
        )
    )
    by_approach = count_error.get("by_approach") or {}
    table = html_table(
        ["approach", "count MAE (vehicles)"],
        [[a, "n/a" if v is None else f"{v:.3f}"] for a, v in by_approach.items()],
    )
    return {
        "html": section.html + f"<p>{line}; impairments: {settings}</p>" + table,
        "headline": (*section.headline, line),
        "summary": {
            **section.summary,
            "camera_count_error": {**count_error, "impairments": impairments.as_dict()},
        },
    }
