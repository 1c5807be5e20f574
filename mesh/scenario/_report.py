"""The scenario report: one JSON file and a self-contained HTML page with PNG plots.

A scenario run fills a :class:`ScenarioReport` (traffic KPIs per controller,
per-module latency samples against the SLO, the placement timeline with its
migrations, lost requests and events, agent CPU, the fault windows) and
:func:`write_report` writes ``report.json`` and ``report.html`` — the plots
are PNGs embedded as data URIs, so the page is one file that opens anywhere.

matplotlib (the ``sim`` extra) is imported only when the report is written.

Example:
    >>> report = ScenarioReport(name="small", sim_seconds=120.0)  # doctest: +SKIP
    >>> paths = write_report(report, Path(".mesh/scenarios/small"))  # doctest: +SKIP
    >>> paths.html  # doctest: +SKIP
    PosixPath('.mesh/scenarios/small/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ControllerKpis",
    "FaultWindow",
    "MigrationRecord",
    "ModuleLatency",
    "ReportPaths",
    "ScenarioReport",
    "headline",
    "percentile",
    "write_report",
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


class ModuleLatency(BaseModel):
    """Latency samples of one inference module (edge pipeline events or requests)."""

    model_config = ConfigDict(extra="forbid")

    slo_ms: float = Field(description="The module's p95 target.")
    samples: list[tuple[float, float]] = Field(
        default_factory=list, description="(sim second, latency ms)."
    )
    failed: list[float] = Field(
        default_factory=list,
        description="Sim seconds of calls that failed or were dropped: each misses the SLO.",
    )

    def within(self) -> int:
        """Samples within the SLO."""
        return sum(1 for _, v in self.samples if v <= self.slo_ms)

    def calls(self) -> int:
        """Samples and failed calls."""
        return len(self.samples) + len(self.failed)

    def attainment(self) -> float | None:
        """Share of calls answered within the SLO (None without any)."""
        return self.within() / self.calls() if self.calls() else None

    def windows(self, width_s: float) -> list[tuple[float, float, float]]:
        """(window start, p50, p95) per ``width_s`` window of sim time."""
        buckets: dict[int, list[float]] = {}
        for t, v in self.samples:
            buckets.setdefault(int(t // width_s), []).append(v)
        return [
            (k * width_s, percentile(vs, 50), percentile(vs, 95))
            for k, vs in sorted(buckets.items())
        ]


class MigrationRecord(BaseModel):
    """A placement change seen during the run."""

    model_config = ConfigDict(extra="forbid")

    t: float = Field(description="Sim second of the switch.")
    module: str
    site: str | None = None
    source: str = Field(description="Where it ran before (node or tier).")
    target: str = Field(description="Where it runs after.")
    reason: str = ""
    switch_s: float | None = Field(None, description="Wall seconds from decision to new route.")


class FaultWindow(BaseModel):
    """A scripted fault, from start to end in sim seconds."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    target: str
    start: float
    end: float


class ScenarioReport(BaseModel):
    """Everything a scenario run reports (``report.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sim_seconds: float
    wall_seconds: float = 0.0
    grid: str = ""
    demand: str = ""
    traffic: dict[str, ControllerKpis] = Field(
        default_factory=dict, description="KPIs by controller: adaptive, fixed, actuated…"
    )
    modules: dict[str, ModuleLatency] = Field(default_factory=dict)
    migrations: list[MigrationRecord] = Field(default_factory=list)
    placements: list[tuple[float, str, str]] = Field(
        default_factory=list, description="(sim second, module@site, where) at each change."
    )
    faults: list[FaultWindow] = Field(default_factory=list)
    agent_cpu: dict[str, list[tuple[float, float]]] = Field(
        default_factory=dict, description="Agent id -> (sim second, CPU %)."
    )
    lost_requests: int = 0
    lost_events: int = 0
    events_sent: int = 0
    events_received: int = 0
    events_by_route: dict[str, int] = Field(
        default_factory=dict,
        description="Camera events by where they ran: local, offload (frame by frame), "
        "remote (a replica took the camera's frames).",
    )
    over_slo_by_route: dict[str, int] = Field(
        default_factory=dict,
        description="Of those, the events whose latency was over the camera module's SLO.",
    )
    notes: list[str] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(
        default_factory=list, description="Pipeline steps: name, tier, node, seconds, summary."
    )

    def slo_attainment(self) -> float | None:
        """Share of all modules' calls answered within their SLO (a failed call misses it)."""
        total = sum(m.calls() for m in self.modules.values())
        if not total:
            return None
        return sum(m.within() for m in self.modules.values()) / total

    def summary(self) -> dict[str, Any]:
        """The headline figures (also at the top of ``report.json``)."""
        baselines = {k: v.mean_wait_s for k, v in self.traffic.items() if k != "adaptive"}
        adaptive = self.traffic.get("adaptive")
        best_name = min(
            (k for k in baselines if k != "fixed"), key=lambda k: baselines[k], default=None
        )
        return {
            "mean_wait_s": {k: round(v.mean_wait_s, 2) for k, v in self.traffic.items()},
            "adaptive_vs_best_baseline": (
                round(adaptive.mean_wait_s / baselines[best_name], 3)
                if adaptive is not None and best_name is not None and baselines[best_name] > 0
                else None
            ),
            "best_baseline": best_name,
            "slo_attainment": self.slo_attainment(),
            "migrations": len(self.migrations),
            "lost_requests": self.lost_requests,
            "lost_events": self.lost_events,
        }


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """Where the report was written."""

    json: Path
    html: Path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def headline(report: ScenarioReport) -> list[str]:
    """Lines `mesh demo` prints at the end."""
    s = report.summary()
    lines = []
    if report.traffic:
        waits = ", ".join(f"{k} {v:.1f} s" for k, v in s["mean_wait_s"].items())
        lines.append(f"mean waiting time: {waits}")
        if s["adaptive_vs_best_baseline"] is not None:
            lines.append(
                f"adaptive / best SUMO baseline ({s['best_baseline']}): "
                f"{s['adaptive_vs_best_baseline']:.2f}x"
            )
    for name, m in report.modules.items():
        a = m.attainment()
        if a is not None:
            p95 = percentile([v for _, v in m.samples], 95)
            lines.append(
                f"{name}: p95 {p95:.1f} ms (SLO {m.slo_ms:g} ms), {a * 100:.2f}% within SLO"
                + (f" ({len(m.failed)} failed)" if m.failed else "")
            )
    lines.append(
        f"migrations: {len(report.migrations)}; lost requests: {report.lost_requests}; "
        f"lost events: {report.lost_events} of {report.events_sent}"
        f"{_routes(report.events_by_route, report.over_slo_by_route)}"
    )
    return lines


def _routes(by_route: dict[str, int], over: dict[str, int]) -> str:
    """`` (ran: local 200, 3 over SLO; remote 40)``, or nothing."""
    if not by_route:
        return ""
    ran = [
        f"{k} {v}" + (f", {over[k]} over SLO" if over.get(k) else "")
        for k, v in sorted(by_route.items())
    ]
    return " (ran: " + "; ".join(ran) + ")"


def write_report(report: ScenarioReport, out_dir: Path) -> ReportPaths:
    """Write ``report.json`` and ``report.html`` (plots inline) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    body = {"summary": report.summary(), **report.model_dump(mode="json")}
    json_path.write_text(json.dumps(body, indent=1))
    html_path = out_dir / "report.html"
    html_path.write_text(_html(report))
    return ReportPaths(json_path, html_path)


# -- HTML -------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.note { color: #666; }
"""


def _html(report: ScenarioReport) -> str:
    s = report.summary()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>fogmesh scenario {html.escape(report.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Scenario <code>{html.escape(report.name)}</code></h1>",
        f"<p>{report.sim_seconds:.0f} simulated seconds in {report.wall_seconds:.0f} s of wall "
        f"time; grid {html.escape(report.grid)}; demand {html.escape(report.demand)}.</p>",
        "<h2>Headline</h2><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in headline(report)),
        "</ul>",
    ]
    if report.steps:
        parts.append("<h2>Pipeline</h2>")
        parts.append(
            _table(
                ["step", "tier", "node", "seconds", "result"],
                [
                    [
                        str(st.get("name", "")),
                        str(st.get("tier", "")),
                        str(st.get("node", "")),
                        f"{float(st.get('seconds', 0.0)):.1f}",
                        str(st.get("summary", "")),
                    ]
                    for st in report.steps
                ],
            )
        )
    if report.traffic:
        parts.append("<h2>Traffic</h2>")
        parts.append(
            _table(
                [
                    "controller",
                    "mean wait s",
                    "mean time loss s",
                    "mean trip s",
                    "arrivals",
                    "teleports",
                ],
                [
                    [
                        name,
                        f"{k.mean_wait_s:.2f}",
                        f"{k.mean_time_loss_s:.2f}",
                        f"{k.mean_trip_s:.1f}",
                        str(k.arrivals),
                        str(k.teleports),
                    ]
                    for name, k in report.traffic.items()
                ],
            )
        )
        parts.append(_img(_plot_queues(report), "vehicles halted over time"))
    if report.modules:
        parts.append("<h2>Inference modules</h2>")
        rows = []
        for name, m in report.modules.items():
            values = [v for _, v in m.samples]
            a = m.attainment()
            rows.append(
                [
                    name,
                    str(len(values)),
                    str(len(m.failed)),
                    f"{percentile(values, 50):.2f}",
                    f"{percentile(values, 95):.2f}",
                    f"{m.slo_ms:g}",
                    f"{a * 100:.2f}%" if a is not None else "-",
                ]
            )
        parts.append(
            _table(["module", "samples", "failed", "p50 ms", "p95 ms", "SLO ms", "within"], rows)
        )
        parts.append(_img(_plot_latency(report), "latency against the SLO"))
    parts.append("<h2>Placement</h2>")
    if report.migrations:
        parts.append(
            _table(
                ["t (sim s)", "module", "site", "from", "to", "switch s", "reason"],
                [
                    [
                        f"{m.t:.0f}",
                        m.module,
                        m.site or "-",
                        m.source,
                        m.target,
                        f"{m.switch_s:.2f}" if m.switch_s is not None else "-",
                        m.reason,
                    ]
                    for m in report.migrations
                ],
            )
        )
    else:
        parts.append("<p class='note'>No migrations.</p>")
    if report.faults:
        parts.append("<h2>Faults</h2>")
        parts.append(
            _table(
                ["kind", "target", "from (sim s)", "to (sim s)"],
                [[f.kind, f.target, f"{f.start:.0f}", f"{f.end:.0f}"] for f in report.faults],
            )
        )
    if report.agent_cpu:
        parts.append(_img(_plot_cpu(report), "agent CPU"))
    parts.append(
        f"<h2>Delivery</h2><p>events sent {report.events_sent}, received "
        f"{report.events_received}, lost {report.lost_events}"
        f"{_routes(report.events_by_route, report.over_slo_by_route)}; requests lost "
        f"{report.lost_requests}. SLO attainment: "
        f"{_pct(s['slo_attainment'])}.</p>"
    )
    if report.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{html.escape(n)}</li>" for n in report.notes)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


# -- plots ------------------------------------------------------------------------


def _figure(height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, height), dpi=90)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _shade_faults(ax: Any, report: ScenarioReport) -> None:
    for f in report.faults:
        ax.axvspan(f.start, f.end, color="tab:red", alpha=0.08)
        ax.text(
            f.start,
            1.0,
            f" {f.kind}",
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            va="top",
            color="tab:red",
        )


def _plot_queues(report: ScenarioReport) -> bytes | None:
    if not any(k.queue for k in report.traffic.values()):
        return None
    fig, ax = _figure()
    for name, k in report.traffic.items():
        if k.queue:
            ax.plot([t for t, _ in k.queue], [q for _, q in k.queue], label=name, lw=1.2)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("vehicles halted")
    ax.legend(loc="upper left", fontsize=8)
    _shade_faults(ax, report)
    return _png(fig)


def _plot_latency(report: ScenarioReport) -> bytes | None:
    if not any(m.samples for m in report.modules.values()):
        return None
    fig, ax = _figure()
    width = max(5.0, report.sim_seconds / 60)
    for i, (name, m) in enumerate(report.modules.items()):
        w = m.windows(width)
        if not w:
            continue
        color = f"C{i}"
        ax.plot([t for t, _, _ in w], [p95 for _, _, p95 in w], color=color, label=f"{name} p95")
        ax.plot(
            [t for t, _, _ in w],
            [p50 for _, p50, _ in w],
            color=color,
            ls=":",
            lw=1,
            label=f"{name} p50",
        )
        ax.axhline(m.slo_ms, color=color, ls="--", lw=0.8)
    for mig in report.migrations:
        ax.axvline(mig.t, color="k", lw=0.8, alpha=0.6)
        ax.text(
            mig.t,
            0.02,
            f" → {mig.target}",
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            rotation=90,
            va="bottom",
        )
    _shade_faults(ax, report)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _plot_cpu(report: ScenarioReport) -> bytes | None:
    fig, ax = _figure(2.8)
    for agent, series in sorted(report.agent_cpu.items()):
        if series:
            ax.plot([t for t, _ in series], [c for _, c in series], lw=0.9, label=agent)
    _shade_faults(ax, report)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("agent CPU %")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    return _png(fig)
