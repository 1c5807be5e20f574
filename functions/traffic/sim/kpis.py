"""The traffic KPIs of a run and their part of the scenario report.

:class:`ControllerKpis` is one signal controller's figures over the whole
simulation (the mesh's adaptive control, and each SUMO baseline on the same
routes); :func:`traffic_section` turns them into the report's "Traffic"
section: a table, the halted-vehicles plot with the faults shaded, the
headline lines, and the summary figures ``mean_wait_s``,
``adaptive_vs_best_baseline`` and ``best_baseline``.

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

from mesh.scenario import (
    ReportSection,
    ScenarioReport,
    html_img,
    html_table,
    plot_figure,
    plot_png,
    shade_faults,
)

__all__ = ["ControllerKpis", "controller_kpis", "traffic_section", "traffic_summary"]


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


def traffic_summary(traffic: Mapping[str, ControllerKpis]) -> dict[str, Any]:
    """Mean waits by controller; adaptive against the best baseline other than fixed."""
    baselines = {k: v.mean_wait_s for k, v in traffic.items() if k != "adaptive"}
    adaptive = traffic.get("adaptive")
    best_name = min(
        (k for k in baselines if k != "fixed"), key=lambda k: baselines[k], default=None
    )
    return {
        "mean_wait_s": {k: round(v.mean_wait_s, 2) for k, v in traffic.items()},
        "adaptive_vs_best_baseline": (
            round(adaptive.mean_wait_s / baselines[best_name], 3)
            if adaptive is not None and best_name is not None and baselines[best_name] > 0
            else None
        ),
        "best_baseline": best_name,
    }


def traffic_section(
    traffic: Mapping[str, ControllerKpis], report: ScenarioReport, *, subtitle: str, plots: bool
) -> ReportSection:
    """The report's Traffic section (see the module docstring)."""
    summary = traffic_summary(traffic)
    headline: list[str] = []
    if traffic:
        waits = ", ".join(f"{k} {v:.1f} s" for k, v in summary["mean_wait_s"].items())
        headline.append(f"mean waiting time: {waits}")
        if summary["adaptive_vs_best_baseline"] is not None:
            headline.append(
                f"adaptive / best SUMO baseline ({summary['best_baseline']}): "
                f"{summary['adaptive_vs_best_baseline']:.2f}x"
            )
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
    plot = html_img(_plot_queues(traffic, report), "vehicles halted over time") if plots else ""
    return ReportSection(
        title="Traffic" if traffic else "",
        html=table + plot,
        headline=tuple(headline),
        summary=summary,
        subtitle=subtitle,
    )


def _plot_queues(traffic: Mapping[str, ControllerKpis], report: ScenarioReport) -> bytes | None:
    if not any(k.queue for k in traffic.values()):
        return None
    fig, ax = plot_figure()
    for name, k in traffic.items():
        if k.queue:
            ax.plot([t for t, _ in k.queue], [q for _, q in k.queue], label=name, lw=1.2)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("vehicles halted")
    ax.legend(loc="upper left", fontsize=8)
    shade_faults(ax, report)
    return plot_png(fig)
