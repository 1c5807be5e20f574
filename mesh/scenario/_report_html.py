"""The scenario report as one self-contained HTML page (and ``report.json`` beside it).

The charts are drawn by the dashboard's own chart code
(``mesh/dashboard/static/charts.js``, one set for ``/ui`` and the report),
inlined into the page with each chart's data, so the page is one file that
opens anywhere, offline. :func:`html_table`, :func:`html_chart` and
:func:`fault_bands` are for simulation plugins drawing their own section.

Example:
    >>> report = ScenarioReport(name="small", sim_seconds=120.0)  # doctest: +SKIP
    >>> paths = write_report(report, Path(".mesh/scenarios/small"))  # doctest: +SKIP
    >>> paths.html  # doctest: +SKIP
    PosixPath('.mesh/scenarios/small/report.html')
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from mesh.scenario._report import ReportPaths, ScenarioReport, headline, percentile, routes

__all__ = [
    "fault_bands",
    "html_chart",
    "html_table",
    "write_report",
]


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
.chart svg { width: 100%; height: auto; display: block; }
.chart { margin: 0.5em 0 1.5em; }
.chart h3 { font-size: 14px; margin: 0 0 0.3em; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; color: #555; font-size: 13px; }
.legend i { display: inline-block; width: 14px; height: 3px; margin-right: 6px;
  vertical-align: middle; }
.empty { color: #666; }
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
        f"time{_subtitle(report)}.</p>",
        "<h2>Headline</h2><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in headline(report)),
        "</ul>",
    ]
    if report.steps:
        parts.append("<h2>Pipeline</h2>")
        parts.append(
            html_table(
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
    sim = report.simulation
    if sim is not None and sim.title:
        parts.append(f"<h2>{html.escape(sim.title)}</h2>")
        parts.append(sim.html)
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
                    str(m.lost_events),
                    f"{percentile(values, 50):.2f}",
                    f"{percentile(values, 95):.2f}",
                    f"{m.slo_ms:g}",
                    f"{a * 100:.2f}%" if a is not None else "-",
                ]
            )
        parts.append(
            html_table(
                [
                    "module",
                    "samples",
                    "failed",
                    "events lost",
                    "p50 ms",
                    "p95 ms",
                    "SLO ms",
                    "within SLO",
                ],
                rows,
            )
        )
        parts.extend(_latency_charts(report))
    parts.append("<h2>Placement</h2>")
    if report.migrations:
        parts.append(
            html_table(
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
            html_table(
                ["kind", "target", "from (sim s)", "to (sim s)"],
                [[f.kind, f.target, f"{f.start:.0f}", f"{f.end:.0f}"] for f in report.faults],
            )
        )
    if report.agent_cpu:
        parts.append(_cpu_chart(report))
    if report.lifecycle:
        parts.append(_lifecycle_chart(report))
    parts.append(
        f"<h2>Delivery</h2><p>events sent {report.events_sent}, received "
        f"{report.events_received}, lost {report.lost_events}"
        f"{routes(report.events_by_route, report.over_slo_by_route)}; requests lost "
        f"{report.lost_requests()}. SLO attainment pooled over modules: "
        f"{_pct(s['slo_attainment_pooled'])} (each module's is in its table).</p>"
    )
    if report.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{html.escape(n)}</li>" for n in report.notes)
        parts.append("</ul>")
    parts.append(f"<script>{_charts_js()}\ndrawCharts();</script></body></html>")
    return "\n".join(p for p in parts if p)


def _subtitle(report: ScenarioReport) -> str:
    sim = report.simulation
    return f"; {html.escape(sim.subtitle)}" if sim is not None and sim.subtitle else ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of text cells (escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_chart(
    series: list[dict[str, Any]],
    *,
    title: str = "",
    legend: list[str] | None = None,
    **options: Any,
) -> str:
    """A chart drawn in the page by ``charts.js`` (the dashboard's) from its data.

    Args:
        series: ``{"points": [[x, y], ...], "dash": bool}`` each, x in simulated seconds
            (colours follow the dashboard's palette in order unless ``color`` is set).
        title: a caption above it.
        legend: one label per series.
        options: ``charts.js · chart``'s options: ``slo``, ``unit``, ``marks``
            (``[{"at", "label"}]``), ``bands`` (``[{"from", "to", "label"}]``),
            ``height``, ``empty``.
    """
    spec: dict[str, Any] = {"series": series, "options": options}
    if legend is not None:
        spec["legend"] = [
            {"label": label, "series": i, "dash": bool(series[i].get("dash"))}
            for i, label in enumerate(legend)
        ]
    data = html.escape(json.dumps(spec, separators=(",", ":")), quote=True)
    caption = f"<h3>{html.escape(title)}</h3>" if title else ""
    return f"<div class='chart'>{caption}<div data-chart=\"{data}\"></div></div>"


def fault_bands(report: ScenarioReport) -> list[dict[str, Any]]:
    """The report's faults as shaded spans for :func:`html_chart` (``bands=``)."""
    return [{"from": f.start, "to": f.end, "label": f.kind} for f in report.faults]


def _charts_js() -> str:
    """The dashboard's chart code, inlined (``</`` cannot end the script early)."""
    text = resources.files("mesh.dashboard").joinpath("static", "charts.js").read_text("utf-8")
    return text.replace("</", "<\\/")


# -- charts -----------------------------------------------------------------------

_BLUE = "#1769aa"  # charts.js's first colour


def _latency_charts(report: ScenarioReport) -> list[str]:
    """One chart per module: p95 and p50 over simulated time, its SLO, migrations, faults."""
    width = max(5.0, report.sim_seconds / 60)
    out = []
    for name, m in report.modules.items():
        w = m.windows(width)
        if not w:
            continue
        marks = [
            {"at": mig.t, "label": f"→ {mig.target}"}
            for mig in report.migrations
            if mig.module == name
        ]
        out.append(
            html_chart(
                [  # one module, one colour: p50 dashed, as on the dashboard's module page
                    {"points": [[t, p95] for t, _, p95 in w], "color": _BLUE},
                    {"points": [[t, p50] for t, p50, _ in w], "color": _BLUE, "dash": True},
                ],
                title=f"{name}: latency against its SLO (ms, {width:.0f} s windows)",
                legend=["p95", "p50"],
                slo=m.slo_ms,
                unit="ms",
                marks=marks,
                bands=fault_bands(report),
                height=220,
            )
        )
    return out


def _cpu_chart(report: ScenarioReport) -> str:
    series = sorted(report.agent_cpu.items())
    return html_chart(
        [{"points": [[t, c] for t, c in points], "width": 1.2} for _, points in series],
        title="agent CPU (%)",
        legend=[agent for agent, _ in series],
        unit="%",
        bands=fault_bands(report),
        height=160,
        empty="No heartbeat.",
    )


def _lifecycle_chart(report: ScenarioReport) -> str:
    """Drift score per module@site over time, with the lifecycle's marks (drift, candidate...)."""
    life = report.lifecycle
    scores: dict[str, list[list[float]]] = life.get("drift_scores") or {}
    names = sorted(scores)
    times = ", ".join(
        f"{k.removesuffix('_s').replace('_', ' ')} at sim {life[k]:.0f} s"
        for k in ("detect_s", "candidate_s", "promoted_s", "rolled_back_s")
        if life.get(k) is not None
    )
    head = f"<h2>Model lifecycle</h2><p>{html.escape(times or 'no drift declared')}</p>"
    return head + html_chart(
        [{"points": scores[n]} for n in names],
        title="Drift score per module@site",
        legend=names,
        marks=[{"at": m["at"], "label": m["label"]} for m in life.get("marks", [])],
        bands=fault_bands(report),
        empty="no drift scores (no drift service)",
    )
