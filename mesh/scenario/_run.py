"""`mesh run FILE`: a whole scenario, from an empty machine to a report.

In order, each stage shown as it runs and undone in reverse on the way out
(Ctrl-C included):

1. **check** the file (:func:`~mesh.scenario._load.load_scenario`) — nothing
   starts when it is wrong;
2. **infrastructure**: the MQTT broker (embedded, Mosquitto or external), a
   local Ray cluster with the scenario's cloud head and fog nodes (real
   raylets with tier labels), and the control plane's services in this
   process: edge bus, registry, artifact endpoint, serving manager and the
   placement controller (:mod:`mesh.scenario._infra`);
3. **simulation**: the plugin builds its inputs (the traffic one: the SUMO
   network, demand and recorded history) — only with a simulation;
4. **models**: the triggers due at the start (batch analytics, tuning) and
   each module's training function on its tier; the exports are registered;
5. **agents**: one real edge agent process per device, each behind its own
   emulated link, running each sourced module on a pipeline of its own;
6. **roll-out**: modules started where they start; sourced pipelines tracked
   per site by the placement controller;
7. **live**: the stream functions, the simulation (or the wall clock for
   ``duration_s``) stepped with the fault timeline while the placement
   engine reacts (:mod:`mesh.scenario._live_phase`);
8. the simulation's **KPIs** (its baselines) and the **report**.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from mesh.core._errors import MeshError
from mesh.core._stderr_file import stderr_to_file
from mesh.scenario._actions import Testbed
from mesh.scenario._infra import Infrastructure, start_agents, start_infrastructure
from mesh.scenario._live_phase import LivePhase
from mesh.scenario._models_stage import ModelsStage
from mesh.scenario._plugin import PrepareContext, SimulationRun, WallClock
from mesh.scenario._report import ModuleLatency, ScenarioReport, SimulationReport, headline
from mesh.scenario._report_html import write_report
from mesh.scenario._schema import Scenario
from mesh.scenario._util import environment, on_path

__all__ = ["ScenarioRun", "run_scenario"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ScenarioRun:
    """One run of a scenario (see the module docstring).

    Args:
        scenario: a checked scenario.
        console: where progress goes.
        fresh: start from an empty state directory (registry, runs, caches).
        keep: once the report is written, keep the control plane (and its
            dashboard) up until Ctrl-C.
    """

    def __init__(
        self, scenario: Scenario, *, console: Console, fresh: bool = True, keep: bool = False
    ) -> None:
        """Nothing starts before :meth:`run`."""
        self.scenario = scenario
        self.console = console
        self._keep = keep
        self.out_dir = scenario.output_dir().resolve()
        self.state_dir = self.out_dir / "state"
        self._fresh = fresh
        self.report = ScenarioReport(name=scenario.name, sim_seconds=0.0)
        self.testbed = Testbed()
        self._started = time.monotonic()
        self._sim: SimulationRun = self._simulation_run()
        self._substitutions: dict[str, str] = {"out": str(self.out_dir)}

    def _simulation_run(self) -> SimulationRun:
        sc = self.scenario
        if sc.plugin is not None:
            run: SimulationRun = sc.plugin.create(sc.sim_config, sc)
            return run
        return WallClock(sc.duration_s or 0.0)

    # -- the whole run ------------------------------------------------------------

    def run(self) -> ScenarioReport:
        """Run every stage; returns the report (also written to ``outputs.dir``).

        Raises:
            MeshError: a stage failed; everything started so far is stopped.
        """
        if self._fresh:
            # A fresh control plane with agents that remember the last run (their
            # cached modules and route epochs) would disagree with them.
            for stale in (self.state_dir, self.out_dir / "agents"):
                if stale.exists():
                    shutil.rmtree(stale)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        sc = self.scenario
        live = sc.end_s() is not None
        with contextlib.ExitStack() as stack:
            stack.enter_context(environment(MESH_DATA_DIR=str(self.state_dir)))
            stack.enter_context(on_path(Path.cwd()))
            infra: Infrastructure = self._stage(
                "infrastructure",
                lambda: start_infrastructure(
                    sc, self.state_dir, self.testbed, stack, console=self.console
                ),
            )
            self.console.print(f"  dashboard: {self._dashboard_url(infra)}", soft_wrap=True)
            if sc.plugin is not None:
                self._stage(f"simulation ({sc.plugin.name})", self._prepare)
            models = ModelsStage(sc, infra, self.report, stack, console=self.console)
            self._stage("models", lambda: models.run(self._substitutions))
            latency = {decl.name: ModuleLatency(slo_ms=decl.qos.p95_ms) for decl in sc.modules}
            self.report.modules = latency
            phase = LivePhase(
                sc,
                infra,
                self._sim,
                self.testbed,
                self.report,
                runner=models.runner(),
                versions=models.versions,
                substitutions=self._substitutions,
                out_dir=self.out_dir,
                stack=stack,
                console=self.console,
            )
            # Pipelines start with the roll-out: count their events from the first.
            phase.listen()
            if sc.agent_nodes():
                self._stage(
                    "agents",
                    lambda: start_agents(
                        sc,
                        infra,
                        self.testbed,
                        stack,
                        self._substitutions,
                        self.out_dir,
                        console=self.console,
                    ),
                )
            self._stage("roll-out", lambda: models.roll_out(self.testbed))
            if live:
                self._stage("live", phase.run)
            if sc.plugin is not None:
                self._stage("simulation KPIs", self._kpis)
            self.report.wall_seconds = time.monotonic() - self._started
            if sc.outputs.report:
                paths = write_report(self.report, self.out_dir)
                self.report.notes.append(f"report: {paths.html}")
                self.console.print(f"report: [bold]{paths.html}[/] (JSON: {paths.json})")
            if self._keep:
                self._hold(infra)
        return self.report

    def _dashboard_url(self, infra: Infrastructure) -> str:
        """The control plane's ``/ui`` with a read token for the run in its fragment."""
        from mesh.security._auth import TokenSigner

        settings = infra.settings
        ttl_s = min(8 * 3600.0, settings.token_max_ttl_s)
        token = TokenSigner.load_or_create(settings.data_dir, max_ttl_s=ttl_s).issue(
            "dashboard", ["read"], ttl_s=ttl_s, now=time.time()
        )
        return f"{infra.gateway_url}/ui#token={token}"

    def _hold(self, infra: Infrastructure) -> None:
        """Keep everything up until Ctrl-C (``--keep``), then let the run tear down."""
        self.console.rule("kept up")
        self.console.print(
            f"  control plane at {infra.gateway_url}; dashboard: {self._dashboard_url(infra)}\n"
            f"  MESH_DATA_DIR={self.state_dir} for `mesh` commands against it; Ctrl-C to stop",
            soft_wrap=True,
        )
        stop = threading.Event()
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(3600.0):
                pass
        self.console.print("  stopping…")

    def _stage(self, name: str, fn: Callable[[], T]) -> T:
        self.console.rule(name)
        t0 = time.monotonic()
        try:
            result = fn()
        except MeshError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise MeshError(f"scenario {self.scenario.name}: {name} failed: {exc}") from exc
        self.console.print(f"  [green]✓[/] {name} ({time.monotonic() - t0:.1f} s)")
        return result

    def _prepare(self) -> None:
        ctx = PrepareContext(
            scenario=self.scenario,
            out_dir=self.out_dir,
            console=self.console,
            notes=self.report.notes,
            substitutions=self._substitutions,
        )
        self._sim.prepare(ctx)

    def _kpis(self) -> None:
        plugin = self.scenario.plugin
        kpis = self._sim.kpis()
        section = self._sim.report_section(self.report)
        self.report.simulation = SimulationReport(
            name=plugin.name if plugin is not None else "",
            subtitle=section.subtitle,
            kpis=kpis,
            summary=dict(section.summary),
            headline=list(section.headline),
            title=section.title,
            html=section.html,
        )


def run_scenario(path: Path, *, console: Console, keep: bool = False) -> ScenarioReport:
    """Check and run the scenario in ``path``; prints the headline figures at the end.

    The console tells the run's story (stages, faults, migrations, versions);
    what Ray, uvicorn and the broker write goes to ``<outputs.dir>/run.log``.

    Args:
        path: the scenario file.
        console: where the story goes.
        keep: keep the control plane up after the report, until Ctrl-C.

    Raises:
        ScenarioError: the file is invalid (nothing started).
        MeshError: a stage failed (everything started was stopped).
    """
    from mesh.scenario._load import load_scenario

    scenario = load_scenario(path)
    console.print(f"scenario [bold]{scenario.name}[/] from {path}: {scenario.description}")
    log = scenario.output_dir().resolve() / "run.log"
    console.print(f"log: {log} (Ray, uvicorn and broker lines)", soft_wrap=True)
    # The story keeps the terminal; what Ray prints to sys.stdout (a dead raylet's
    # last log lines, say) goes to the log with the rest.
    console.file = console.file
    with stderr_to_file(log, stdout=True):
        report = ScenarioRun(scenario, console=console, keep=keep).run()
    for line in headline(report):
        console.print(f"  {line}")
    return report
