"""The scenario report as one self-contained HTML page (and ``report.json`` beside it).

The plots are PNGs embedded as data URIs, so the page is one file that opens
anywhere. matplotlib (the ``sim`` extra) is imported only when a plot is drawn.
:func:`html_table`, :func:`html_img`, :func:`plot_figure`, :func:`plot_png` and
:func:`shade_faults`
are for simulation plugins drawing their own section.

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
from pathlib import Path
from typing import Any

from mesh.scenario._report import ReportPaths, ScenarioReport, headline, percentile, routes

__all__ = [
    "html_img",
    "html_table",
    "plot_figure",
    "plot_png",
    "shade_faults",
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
        parts.append(html_img(_plot_latency(report), "latency against the SLO"))
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
        parts.append(html_img(_plot_cpu(report), "agent CPU"))
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
    parts.append("</body></html>")
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


def html_img(png: bytes | None, alt: str) -> str:
    """A PNG inline as a data URI (nothing for None)."""
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


# -- plots ------------------------------------------------------------------------


def plot_figure(height: float = 3.2) -> tuple[Any, Any]:
    """A matplotlib figure and axes of the report's width (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, height), dpi=90)
    return fig, ax


def plot_png(fig: Any) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def shade_faults(ax: Any, report: ScenarioReport) -> None:
    """Shade each fault's window on a plot over simulated time."""
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


def _plot_latency(report: ScenarioReport) -> bytes | None:
    if not any(m.samples for m in report.modules.values()):
        return None
    fig, ax = plot_figure()
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
    shade_faults(ax, report)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    return plot_png(fig)


def _plot_cpu(report: ScenarioReport) -> bytes | None:
    fig, ax = plot_figure(2.8)
    for agent, series in sorted(report.agent_cpu.items()):
        if series:
            ax.plot([t for t, _ in series], [c for _, c in series], lw=0.9, label=agent)
    shade_faults(ax, report)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("agent CPU %")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    return plot_png(fig)
