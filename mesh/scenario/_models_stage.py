"""A scenario's functions and models: triggers, training, registration, roll-out.

:class:`ModelsStage` builds one :class:`~mesh.compute._runner.Runner` over the
scenario's function modules and its stream and trigger functions; runs the
triggers due at the start and each module's (tune and) train function on its
tier, registering the exports; then rolls the modules out: a warm replica on a
compute tier, the model installed on every agent for a module that starts at
the edge, and each sourced module's pipelines tracked per site by the
placement controller; a module with a ``drift:`` or ``canary:`` block is
handed to the lifecycle services (:func:`~mesh.scenario._lifecycle.track_lifecycle`),
its first version promoted to production when a canary needs one to compare with.

``{name}`` in a trigger's or train function's string arguments is replaced by
the run's substitutions: ``{out}`` (the output directory) and what the
simulation adds (the traffic one: ``{history}``).
"""

from __future__ import annotations

import contextlib
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh.compute._runner import Runner
from mesh.core._errors import MeshError
from mesh.scenario._actions import Testbed
from mesh.scenario._decls import ModuleDecl
from mesh.scenario._infra import Infrastructure
from mesh.scenario._live_triggers import is_start_trigger
from mesh.scenario._report import ScenarioReport
from mesh.scenario._schema import Scenario
from mesh.scenario._util import resolve, summarise
from mesh.sdk._specs import ModuleSpec

__all__ = ["ModelsStage"]


class ModelsStage:
    """The models stage and the roll-out of one scenario run (see the module docstring).

    Args:
        scenario: the checked scenario.
        infra: the running test bed.
        report: where steps and notes go.
        stack: the run's exit stack (the run store closes on it).
        console: where progress goes.
    """

    def __init__(
        self,
        scenario: Scenario,
        infra: Infrastructure,
        report: ScenarioReport,
        stack: ExitStack,
        *,
        console: Console,
    ) -> None:
        """Nothing runs yet."""
        self.scenario = scenario
        self.infra = infra
        self.report = report
        self.console = console
        self._stack = stack
        self._runner: Runner | None = None
        self._substitutions: dict[str, str] = {}
        #: module -> ``model@version`` it serves (filled by :meth:`run`).
        self.versions: dict[str, str] = {}

    def runner(self) -> Runner:
        """The runner over the scenario's functions (built once)."""
        from mesh.compute._runs import SQLiteStore
        from mesh.sdk._app import Mesh
        from mesh.sdk._loader import load_apps

        if self._runner is not None:
            return self._runner
        apps: list[Mesh] = []
        seen: set[str] = set()
        for ref in self.scenario.functions:
            module = ref.partition(":")[0]
            if module not in seen:
                seen.add(module)
                with contextlib.suppress(MeshError):
                    apps.extend(load_apps(module))
        scenario_app = Mesh(f"scenario-{self.scenario.name}")
        registered = {name for a in apps for name in a.functions}
        for decl in self.scenario.streams:
            scenario_app.add_stream(
                resolve(decl.function),
                topic=decl.input,
                output_topic=decl.output,
                window_s=decl.window_s,
                name=decl.name,
                tier=decl.tier,
            )
        for trig in self.scenario.triggers:
            name = trig.function.partition(":")[2]
            if name not in registered:
                scenario_app.add_function(resolve(trig.function), name=name, tier=trig.tier)
                registered.add(name)
        store = SQLiteStore(self.infra.settings.store_path)
        self._stack.callback(store.close)
        self._runner = Runner([*apps, scenario_app], backend=self.infra.backend, store=store)
        return self._runner

    # -- triggers and training ------------------------------------------------------

    def run(self, substitutions: dict[str, str]) -> None:
        """Run the start triggers, then train (or load) and register each module's model."""
        self._substitutions = substitutions
        runner = self.runner()
        registry = self.infra.services.registry
        for trig in self.scenario.triggers:
            if is_start_trigger(trig):
                args = {k: self._substitute(v) for k, v in trig.args.items()}
                self._run_function(runner, trig.function.partition(":")[2], args)
            # The rest (at_s > 0, every_s, after) fire in the live phase: _live_triggers.py.
        for decl in self.scenario.modules:
            source = decl.model
            if source.train is not None:
                name = source.train.partition(":")[2]
                args = {k: self._substitute(v) for k, v in source.args.items()}
                if source.tune is not None:
                    tune_name = source.tune.partition(":")[2]
                    with self.console.status(f"tuning {decl.name} ({tune_name})…"):
                        tuned = self._run_function(runner, tune_name, {})
                    takes = runner.get(name).signature.parameters
                    best = {k: v for k, v in tuned.best_config.items() if k in takes}
                    args.update(best)
                    self.console.print(f"  {decl.name}: best config {best}")
                with self.console.status(f"training {decl.name} ({name})…"):
                    ref = self._run_function(runner, name, args)
                version = ref.get("registered_version") if isinstance(ref, dict) else None
                model_name = ref.get("model", decl.name) if isinstance(ref, dict) else decl.name
                if version is None and isinstance(ref, dict) and ref.get("onnx_path"):
                    version = registry.register(
                        model_name,
                        Path(ref["onnx_path"]),
                        code_version=ref.get("code_version", "?"),
                    ).version
                if version is None:
                    raise MeshError(f"{decl.name}: {source.train} returned no model to register")
            elif source.path is not None:
                path = self.scenario.resolve_path(source.path)
                model_name = decl.name
                version = registry.register(
                    model_name, path, code_version=f"file:{path.name}"
                ).version
            else:
                assert source.registry is not None
                model_name, _, version = source.registry.partition("@")
                version = f"v{version}" if version else "production"
            self.versions[decl.name] = f"{model_name}@{version}"
            self.console.print(f"  {decl.name}: model {model_name} {version}")

    def _substitute(self, value: Any) -> Any:
        """``{out}`` and the simulation's names in a string argument."""
        if not isinstance(value, str):
            return value
        for key, text in self._substitutions.items():
            value = value.replace(f"{{{key}}}", text)
        return value

    def _run_function(self, runner: Runner, name: str, kwargs: dict[str, Any]) -> Any:
        t0 = time.monotonic()
        run = runner.submit(name, **kwargs)
        value = run.result()
        labels = runner.node_labels(run.node_id or "")
        tier = labels.get("mesh.tier", "?")
        summary = summarise(value)
        self.console.print(
            f"  [green]✓[/] {name} on {tier} node {(run.node_id or '-')[:8]} "
            f"({time.monotonic() - t0:.1f} s): {summary}"
        )
        self.report.steps.append(
            {
                "name": name,
                "tier": tier,
                "node": (run.node_id or "-")[:8],
                "seconds": round(time.monotonic() - t0, 2),
                "summary": summary,
            }
        )
        return value

    # -- roll-out ------------------------------------------------------------------------

    def _module_spec(self, decl: ModuleDecl) -> ModuleSpec:
        from mesh.sdk._specs import QoS, Resources

        model, _, _ = self.versions[decl.name].partition("@")
        return ModuleSpec(
            name=decl.name,
            model=model,
            qos=QoS(p95_latency_ms=decl.qos.p95_ms),
            tiers=tuple(decl.tiers),
            resources=Resources(cpus=decl.cpus),
            drift=decl.drift,
            canary=decl.canary,
        )

    def roll_out(self, testbed: Testbed) -> None:
        """Start each module where it starts; track sourced pipelines per site."""
        from mesh.serving._contract import ModelArtifact

        services = self.infra.services
        fleet = testbed.fleet
        for decl in self.scenario.modules:
            spec = self._module_spec(decl)
            version = self.versions[decl.name].partition("@")[2]
            initial = decl.initial or decl.tiers[0]
            compute = [t for t in decl.tiers if t in ("fog", "cloud")]
            if compute:
                # A warm replica on a compute tier: the gateway's route and the agents'
                # offload target while the engine keeps the module at the edge.
                tier = initial if initial in compute else compute[0]
                with self.console.status(f"starting {decl.name} replica on {tier}…"):
                    route = services.manager.deploy(spec, version, tier=tier)
                self.console.print(
                    f"  {decl.name} {version}: {tier} replica ready (route epoch {route.epoch})"
                )
            if initial != "edge" or fleet is None:
                continue
            artifact = ModelArtifact.from_registry(services.registry, spec.model, version)
            with self.console.status(f"installing {decl.name} on the agents…"):
                for agent_id in fleet.agents:
                    services.installer.install(agent_id, decl.name, artifact, 60.0)
            self.console.print(f"  {decl.name} {version}: installed on {len(fleet.agents)} agents")
            if decl.source is not None:
                self._track(decl)
            self._lifecycle(decl, spec, version)

    def _lifecycle(self, decl: ModuleDecl, spec: ModuleSpec, version: str) -> None:
        """Drift check, fresh data and canary for a module that declares them."""
        from mesh.scenario._lifecycle import track_lifecycle

        if decl.drift is None and decl.canary is None:
            return
        registry = self.infra.services.registry
        if decl.canary is not None and self.scenario.lifecycle:
            served = registry.get(spec.model, version)
            if served.stage != "production":  # the canary compares candidates with it
                registry.promote(spec.model, served.version)
        sites = {a.id: a.site for a in self.scenario.agent_nodes()}
        notes = track_lifecycle(self.scenario, self.infra.services, decl, spec, version, sites)
        for note in notes:
            self.console.print(f"  [yellow]![/] {note}")
        self.report.notes.extend(notes)
        if not notes:
            what = [k for k in ("drift", "canary") if getattr(decl, k) is not None]
            self.console.print(f"  {decl.name}: lifecycle tracked ({', '.join(what)})")

    def _track(self, decl: ModuleDecl) -> None:
        """Each site's pipeline is placed per site: local, or offloaded to a replica.

        An MQTT source moves with its site (the replica then takes the frames
        itself); a file source stays on its agent, which offloads input by input.
        """
        from mesh.serving._leases import PipelineSource

        src = decl.source
        assert src is not None
        prefix = self.scenario.broker.prefix
        sites = {a.id: a.site for a in self.scenario.agent_nodes()}
        sources: dict[str, Any] | None = None
        if src.kind == "mqtt" and src.topic is not None:
            topic = src.topic
            sources = {
                agent: PipelineSource(
                    site, f"{prefix}/{topic.replace('{site}', site)}", decl.stream_name()
                )
                for agent, site in sites.items()
            }
        self.infra.services.controller.track_pipelines(
            decl.name, sites, rate_per_s=src.rate_hz, sources=sources
        )
