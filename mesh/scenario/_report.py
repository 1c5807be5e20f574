"""The scenario report: what a run measured, as ``report.json``.

A scenario run fills a :class:`ScenarioReport` (per-module latency samples
against the SLO, the placement timeline with its migrations, lost requests and
events, agent CPU, the fault windows, and the simulation plugin's own part).
A request that failed or timed out is lost (:meth:`ScenarioReport.lost_requests`
counts every module's failed calls), and misses its module's SLO, as does a
pipeline input that no event answered; SLO attainment is reported per module
(the pooled share is labelled as such).
:func:`~mesh.scenario._report_html.write_report` writes ``report.json`` and a
self-contained ``report.html``.

Example:
    >>> report = ScenarioReport(name="small", sim_seconds=120.0,
    ...     modules={"counter": ModuleLatency(slo_ms=20.0, samples=[(1.0, 5.0)], failed=[2.0])})
    >>> report.slo_attainment(), report.summary()["lost_requests"]
    (0.5, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FaultWindow",
    "MigrationRecord",
    "ModuleLatency",
    "ReportPaths",
    "ScenarioReport",
    "SimulationReport",
    "headline",
    "percentile",
    "routes",
]


class ModuleLatency(BaseModel):
    """Latency samples of one inference module (edge pipeline events or requests)."""

    model_config = ConfigDict(extra="forbid")

    slo_ms: float = Field(description="The module's p95 target.")
    samples: list[tuple[float, float]] = Field(
        default_factory=list, description="(sim second, latency ms)."
    )
    failed: list[float] = Field(
        default_factory=list,
        description="Sim seconds of calls that failed, timed out or were dropped: each is "
        "a lost request and misses the SLO.",
    )
    lost_events: int = Field(
        0, description="Pipeline inputs no event answered (lost events): each misses the SLO."
    )

    def within(self) -> int:
        """Samples within the SLO."""
        return sum(1 for _, v in self.samples if v <= self.slo_ms)

    def calls(self) -> int:
        """Samples, failed calls and lost events: everything that should have been answered."""
        return len(self.samples) + len(self.failed) + self.lost_events

    def attainment(self) -> float | None:
        """Share of calls answered within the SLO (None without any): a lost one misses it."""
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


class SimulationReport(BaseModel):
    """A simulation plugin's part of the report (see :class:`~mesh.scenario.ReportSection`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The plugin's name.")
    subtitle: str = Field("", description="A phrase for the report's first line.")
    kpis: dict[str, Any] = Field(default_factory=dict, description="The plugin's figures.")
    summary: dict[str, Any] = Field(
        default_factory=dict, description="Figures merged into the report's summary."
    )
    headline: list[str] = Field(default_factory=list, description="Its headline lines.")
    title: str = Field("", description="Its section's heading.")
    html: str = Field("", exclude=True, description="Its section's body (HTML page only).")


class ScenarioReport(BaseModel):
    """Everything a scenario run reports (``report.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sim_seconds: float
    wall_seconds: float = 0.0
    simulation: SimulationReport | None = Field(
        None, description="What the simulation plugin reported (None without one)."
    )
    streams: dict[str, int] = Field(
        default_factory=dict, description="Stream name -> outputs its function published."
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
    lost_events: int = 0
    events_sent: int = 0
    events_received: int = 0
    events_by_route: dict[str, int] = Field(
        default_factory=dict,
        description="Pipeline events by where they ran: local, offload (input by input), "
        "remote (a replica took the source's inputs).",
    )
    over_slo_by_route: dict[str, int] = Field(
        default_factory=dict,
        description="Of those, the events whose latency was over their module's SLO.",
    )
    lifecycle: dict[str, Any] = Field(
        default_factory=dict,
        description="The model lifecycle (mesh.scenario._lifecycle): drift_scores, marks, "
        "detect_s, candidate_s, promoted_s, rolled_back_s; empty without one.",
    )
    notes: list[str] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(
        default_factory=list, description="Pipeline steps: name, tier, node, seconds, summary."
    )

    def lost_requests(self) -> int:
        """Requests lost: every module's calls that failed, timed out or were dropped."""
        return sum(len(m.failed) for m in self.modules.values())

    def slo_attainment(self) -> float | None:
        """Pooled share of all modules' calls answered within their SLO (a lost call misses it).

        A busy module outweighs a quiet one here: :meth:`attainment_by_module` tells each.
        """
        total = sum(m.calls() for m in self.modules.values())
        if not total:
            return None
        return sum(m.within() for m in self.modules.values()) / total

    def attainment_by_module(self) -> dict[str, float | None]:
        """Each module's share of calls answered within its SLO (None: it had no calls)."""
        return {name: m.attainment() for name, m in self.modules.items()}

    def summary(self) -> dict[str, Any]:
        """The headline figures (also at the top of ``report.json``): the simulation's too.

        ``slo_attainment_by_module`` is each module's share; ``slo_attainment_worst``
        the lowest of them; ``slo_attainment_pooled`` all calls together.
        """
        by_module = self.attainment_by_module()
        shares = [a for a in by_module.values() if a is not None]
        return {
            **(self.simulation.summary if self.simulation is not None else {}),
            "slo_attainment_by_module": by_module,
            "slo_attainment_worst": min(shares) if shares else None,
            "slo_attainment_pooled": self.slo_attainment(),
            "migrations": len(self.migrations),
            "lost_requests": self.lost_requests(),
            "lost_events": self.lost_events,
            **(
                {
                    "lifecycle": {
                        k: self.lifecycle.get(k)
                        for k in ("detect_s", "candidate_s", "promoted_s", "rolled_back_s")
                    }
                }
                if self.lifecycle
                else {}
            ),
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
    """Lines `mesh run` prints at the end."""
    lines = list(report.simulation.headline) if report.simulation is not None else []
    for name, m in report.modules.items():
        a = m.attainment()
        if a is not None:
            p95 = percentile([v for _, v in m.samples], 95)
            lost = [f"{len(m.failed)} failed"] if m.failed else []
            lost += [f"{m.lost_events} events lost"] if m.lost_events else []
            lines.append(
                f"{name}: p95 {p95:.1f} ms (SLO {m.slo_ms:g} ms), {a * 100:.2f}% within SLO"
                + (f" ({', '.join(lost)})" if lost else "")
            )
    pooled = report.slo_attainment()
    lines.append(
        f"migrations: {len(report.migrations)}; lost requests: {report.lost_requests()}; "
        f"lost events: {report.lost_events} of {report.events_sent}"
        f"{routes(report.events_by_route, report.over_slo_by_route)}"
        + (f"; SLO attainment pooled over modules {pooled:.2%}" if pooled is not None else "")
    )
    return lines


def routes(by_route: dict[str, int], over: dict[str, int]) -> str:
    """`` (ran: local 200, 3 over SLO; remote 40)``, or nothing."""
    if not by_route:
        return ""
    ran = [
        f"{k} {v}" + (f", {over[k]} over SLO" if over.get(k) else "")
        for k, v in sorted(by_route.items())
    ]
    return " (ran: " + "; ".join(ran) + ")"
