"""A scenario's live phase: streams running, the simulation stepped, faults on time.

:class:`LivePhase` starts the stream functions, counts every sourced module's
events (:class:`~mesh.scenario._events.ModuleEvents`: latency against the SLO,
inputs never answered), relays a module's outputs to its ``output`` topic,
starts the simulation run with a :class:`~mesh.scenario.LiveContext`, and
steps it in a :class:`~mesh.scenario._live.LiveLoop` with the fault timeline.
When the run ends, placement stops first (a move under way finishes while the
agents still run), then the report gets the mesh's figures: per-module
latency, events sent, received and lost by route, migrations, agent CPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh.compute._runner import Runner
from mesh.scenario._actions import ScenarioActions, Testbed
from mesh.scenario._events import STALE_AFTER_S, ModuleEvents
from mesh.scenario._faults import FaultTimeline
from mesh.scenario._infra import Infrastructure, pipeline_for
from mesh.scenario._live import LiveLoop, LiveStats
from mesh.scenario._narration import Narrator
from mesh.scenario._plugin import LiveContext, SimulationRun
from mesh.scenario._report import MigrationRecord, ScenarioReport, percentile
from mesh.scenario._schema import Scenario

__all__ = ["LivePhase"]

logger = logging.getLogger(__name__)


class LivePhase:
    """The live stage of one scenario run (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        infra: Infrastructure,
        sim: SimulationRun,
        testbed: Testbed,
        report: ScenarioReport,
        *,
        runner: Runner,
        versions: dict[str, str],
        substitutions: dict[str, str],
        out_dir: Path,
        stack: ExitStack,
        console: Console,
    ) -> None:
        """Nothing starts before :meth:`run`."""
        self.scenario = scenario
        self.infra = infra
        self.sim = sim
        self.testbed = testbed
        self.report = report
        self.runner = runner
        self.versions = versions
        self._substitutions = substitutions
        self.out_dir = out_dir
        self.console = console
        self._stack = stack
        self._loop: LiveLoop | None = None
        self._watch: Any = None
        self._narrator: Narrator | None = None
        self._feed = infra.services.scenario  # the dashboard's Scenario page
        self._kpis: Any = None
        self._events = [
            ModuleEvents(decl.name, decl.stream_name(), report.modules[decl.name], self.sim_time_at)
            for decl in scenario.source_modules()
        ]
        self._by_module = {e.module: e for e in self._events}
        self._outputs = {d.name: d.output for d in scenario.source_modules() if d.output}
        self._last_progress = -5.0
        self._streams: dict[str, int] = {d.name: 0 for d in scenario.streams if d.output}
        self._lock = threading.Lock()

    def sim_time_at(self, wall_ts: float) -> float:
        """Simulated time at a wall time (0 before the loop starts)."""
        return self._loop.sim_time_at(wall_ts) if self._loop is not None else 0.0

    # -- the phase ---------------------------------------------------------------------

    def listen(self) -> None:
        """Count the sourced modules' events from now on (pipelines start at the roll-out)."""
        self._stack.callback(self.infra.services.edge.on_event(self._on_event))

    def run(self) -> None:
        """Start the streams and the simulation, step to the end, collect the figures."""
        from mesh.compute._streams import StreamWorker

        edge = self.infra.services.edge
        for decl in self.scenario.streams:
            if decl.output:
                self._stack.callback(edge.subscribe(decl.output, self._counter(decl.name)))
            worker = StreamWorker(self.runner, decl.name, edge)
            worker.start()
            self._stack.callback(worker.stop)
        timeline = FaultTimeline(self.scenario.faults)
        services = self.infra.services
        narrator = self._narrator = Narrator(
            self.console,
            self.sim_time_at,
            migrations=lambda: services.controller.history(limit=100),
            routes=services.manager.routes.routes,
            on_line=self._feed.fault,
        )
        self._watch = self._lifecycle_watch()
        self._kpis = getattr(self.sim, "live_kpis", None)  # optional in a plugin
        self.testbed.simulation = self.sim  # a drift fault asks it to change its sensors
        self._feed.begin(
            self.scenario.name,
            duration_s=self.scenario.end_s(),
            planned=[f.model_dump(exclude_none=True) for f in self.scenario.faults],
        )
        self._loop = LiveLoop(
            self.sim,
            timeline,
            ScenarioActions(self.testbed),
            on_progress=self._progress,
            on_fault=narrator.fault,
        )
        from mesh.scenario._live_triggers import LiveTriggers

        decls = self.scenario.triggers
        if not self.scenario.lifecycle:  # no retraining on drift events
            decls = [d for d in decls if not (d.topic or "").startswith("lifecycle/")]
        triggers = LiveTriggers(
            decls, self.runner, self.sim_time_at, self._substitutions, subscribe=edge.subscribe
        ).start()
        self.sim.start(self._context())
        try:
            stats = self._loop.run()
        finally:
            self.report.notes.extend(triggers.stop())
            self.sim.stop()
        # Placement stops with the simulation: a move under way finishes while
        # the agents still run, before anything is torn down.
        services.controller.close()
        narrator.poll()
        self._feed.end()
        edge.barrier()
        time.sleep(1.0)  # the last events and outputs in flight
        self._collect(stats, timeline)
        self.report.lifecycle = self._watch.finish()

    def _lifecycle_watch(self) -> Any:
        """The drift scores and lifecycle marks of the modules that have a lifecycle."""
        from mesh.scenario._lifecycle import LifecycleWatch
        from mesh.sdk._specs import drift_topic

        models = {
            d.name: self.versions.get(d.name, d.name).partition("@")[0]
            for d in self.scenario.modules
            if d.drift is not None or d.canary is not None
        }
        watch = LifecycleWatch(self.infra.services, models, self.sim_time_at)
        for module in models:
            edge = self.infra.services.edge
            self._stack.callback(edge.subscribe(drift_topic(module), watch.on_drift_event))
        return watch

    def _context(self) -> LiveContext:
        edge = self.infra.services.edge
        prefix = self.scenario.broker.prefix

        def publish(topic: str, payload: bytes, qos: int) -> None:
            edge.publish(topic, payload, qos=qos)

        return LiveContext(
            scenario=self.scenario,
            out_dir=self.out_dir,
            state_dir=self.infra.settings.data_dir,
            console=self.console,
            notes=self.report.notes,
            gateway_url=self.infra.gateway_url,
            versions=dict(self.versions),
            latency=self.report.modules,
            publish=publish,
            subscribe=edge.subscribe,
            on_event=edge.on_event,
            sent=self._sent,
            sim_time_at=self.sim_time_at,
            topic=lambda rest: f"{prefix}/{rest}",
            stack=self._stack,
        )

    def _sent(self, module: str, site: str, ts: float) -> None:
        events = self._by_module.get(module)
        if events is not None:
            events.tally.sent(site, ts)

    def _counter(self, stream: str) -> Any:
        def count(_topic: str, _payload: bytes) -> None:
            with self._lock:
                self._streams[stream] += 1

        return count

    def _on_event(self, event: Any) -> None:
        for events in self._events:
            if events.on_event(event) is None:
                continue
            output = self._outputs.get(events.module)
            if output is not None and event.site is not None:
                self._relay(output, event)
            return

    def _relay(self, output: str, event: Any) -> None:
        """A module's outputs, as JSON, on its ``output`` topic (``{site}`` filled in)."""
        message = {
            "site": event.site,
            "module": event.module,
            "ts": event.source_ts,
            "route": event.route,
            "outputs": {name: list(t.data) for name, t in event.outputs.items()},
        }
        topic = output.replace("{site}", event.site)
        self.infra.services.edge.publish(topic, json.dumps(message).encode())

    def _live_kpis(self) -> dict[str, Any]:
        """The simulation's live KPIs for the dashboard (``{}`` without; never raises)."""
        if self._kpis is None:
            return {}
        try:
            return dict(self._kpis())
        except Exception as exc:  # the page must not stop the run
            logger.debug("live KPIs: %s", exc)
            return {}

    def _progress(self, stats: LiveStats) -> None:
        if self._narrator is not None:
            self._narrator.poll()
        self._watch.poll()
        self._feed.update(sim_s=stats.sim_s, wall_s=stats.wall_s, kpis=self._live_kpis())
        if stats.wall_s - self._last_progress < 5.0:
            return
        self._last_progress = stats.wall_s
        received = sum(e.tally.received for e in self._events)
        p95 = "-"
        if self._events:
            recent = [v for _, v in self._events[0].latency.samples[-200:]]
            if recent:
                p95 = f"{self._events[0].module} {percentile(recent, 95):.1f} ms"
        self.console.print(
            f"  sim {stats.sim_s:4.0f} s · wall {stats.wall_s:4.0f} s · events {received} · "
            f"p95 {p95}",
            soft_wrap=True,
        )

    # -- figures ------------------------------------------------------------------------

    def _expect_replays(self) -> None:
        """A finite replay file's every frame must be answered: count them per site."""
        from edge_agent import read_replay

        for decl in self.scenario.source_modules():
            src = decl.source
            if src is None or src.kind != "file" or src.loop:
                continue
            for agent in self.scenario.agent_nodes():
                spec = pipeline_for(
                    decl,
                    agent.site,
                    prefix=self.scenario.broker.prefix,
                    substitutions=self._substitutions,
                    base_dir=self.scenario.base_dir.resolve(),
                )
                path = Path(spec["source"]["path"])
                try:
                    frames = sum(1 for _ in read_replay(path))
                except (OSError, ValueError) as exc:
                    self.report.notes.append(f"{decl.name} at {agent.site}: {path}: {exc}")
                    continue
                self._by_module[decl.name].tally.expect(agent.site, frames)

    def _collect(self, stats: LiveStats, timeline: FaultTimeline) -> None:
        report = self.report
        self._expect_replays()
        report.sim_seconds = stats.sim_s
        report.faults = timeline.windows
        report.notes.extend(timeline.errors)
        report.streams = dict(self._streams)
        for events in self._events:
            tally = events.tally
            report.events_sent += tally.inputs()
            report.events_received += tally.received
            lost = tally.lost()
            report.lost_events += lost
            events.latency.lost_events += lost  # each misses the module's SLO
            for route, n in tally.by_route.items():
                report.events_by_route[route] = report.events_by_route.get(route, 0) + n
            for route, n in tally.over_slo.items():
                report.over_slo_by_route[route] = report.over_slo_by_route.get(route, 0) + n
            name = events.module
            if gaps := tally.gaps():
                report.notes.append(f"{name} events: {gaps} sequence gap(s)")
            if tally.stale:
                report.notes.append(
                    f"{name} events: {tally.stale} made over {STALE_AFTER_S:.0f} s after "
                    "their input's capture (counted over the SLO by their age)"
                )
            for site, missing in tally.unanswered_by_site().items():
                first, last = (self.sim_time_at(missing[i]) for i in (0, -1))
                report.notes.append(
                    f"{name} at {site}: {len(missing)} input(s) never answered "
                    f"(sim {first:.0f}-{last:.0f} s)"
                )
        report.migrations = self._migrations()
        self._agent_cpu()

    def _migrations(self) -> list[MigrationRecord]:
        controller = self.infra.services.controller
        out = []
        for m in reversed(controller.history(limit=500)):
            at = m.switched_at or m.decided_at
            out.append(
                MigrationRecord(
                    t=self.sim_time_at(at),
                    module=m.module,
                    site=m.site,
                    source=f"{m.from_tier or '?'} {(m.from_node or '-')[:12]}",
                    target=f"{m.to_tier} {m.to_node[:12]}",
                    reason=f"{m.status}: {m.reason}"[:200],
                    switch_s=(m.switched_at - m.decided_at) if m.switched_at else None,
                )
            )
        return out

    def _agent_cpu(self) -> None:
        """Host CPU as the agents report it (they share this host: one series)."""
        fleet = self.testbed.fleet
        if fleet is None or not fleet.agents:
            return
        agent_id = next(iter(fleet.agents))
        series = [
            (self.sim_time_at(sample.received_at), float(sample.cpu_percent))
            for sample in self.infra.services.edge.metrics(agent_id)
        ]
        self.report.agent_cpu["host (all agents)"] = series
