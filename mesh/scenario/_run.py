"""`mesh run FILE`: a whole scenario, from an empty machine to a report.

In order, each stage shown as it runs and undone in reverse on the way out
(Ctrl-C included):

1. **check** the file (:func:`~mesh.scenario._load.load_scenario`) — nothing
   starts when it is wrong;
2. **infrastructure**: the MQTT broker (embedded, Mosquitto or external), a
   local Ray cluster with the scenario's cloud head and fog nodes (real
   raylets with tier labels), and the control plane's services in this
   process: edge gateway, registry, artifact endpoint, serving manager and
   the placement controller;
3. **network and demand**: the SUMO grid (every junction signalised) and the
   routes all controllers share;
4. **pipeline**: the triggers due at the start (batch analytics, tuning) and
   each module's training function on its tier; the exports are registered;
5. **agents**: one real edge agent process per camera, each behind its own
   emulated link, and the modules rolled out where they start;
6. **live control**: the fog stream functions, cameras → agents (CNN counts)
   → fog (signal plans) → SUMO, with the fault timeline and the placement
   engine reacting;
7. **baselines** (SUMO's own programs on the same routes) and the **report**.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from functions.traffic.sim.camera import CAMERA_STREAM, STALE_AFTER_S, CameraRelay, EventTally
from mesh.core._errors import MeshError
from mesh.scenario._actions import ScenarioActions
from mesh.scenario._faults import FaultTimeline
from mesh.scenario._linkem import LinkShape
from mesh.scenario._procs import AgentFleet, CpuHog
from mesh.scenario._report import (
    MigrationRecord,
    ModuleLatency,
    ScenarioReport,
    headline,
    write_report,
)
from mesh.scenario._schema import CPU_PROVIDER, ModuleDecl, RayNode, Scenario
from mesh.scenario._util import (
    controller_kpis,
    environment,
    link_shape,
    on_path,
    quietly,
    resolve,
    summarise,
)

__all__ = ["ScenarioRun", "run_scenario"]

logger = logging.getLogger(__name__)

#: SUMO's program names for the scenario's baseline names.
_BASELINE_CONTROL = {"fixed": "static", "actuated": "actuated", "delay_based": "delay_based"}


class ScenarioRun:
    """One run of a scenario (see the module docstring).

    Args:
        scenario: a checked scenario.
        console: where progress goes.
        fresh: start from an empty state directory (registry, runs, caches).
    """

    def __init__(self, scenario: Scenario, *, console: Console, fresh: bool = True) -> None:
        """Nothing starts before :meth:`run`."""
        self.scenario = scenario
        self.console = console
        self.out_dir = scenario.output_dir().resolve()
        self.state_dir = self.out_dir / "state"
        self._fresh = fresh
        self.report = ScenarioReport(name=scenario.name, sim_seconds=0.0)
        self._hogs: dict[str, CpuHog] = {}
        self._fleet: AgentFleet | None = None
        self._services: Any = None
        self._cluster: Any = None
        self._fog_nodes: dict[str, str] = {}
        self._agent_link: dict[str, LinkShape] = {}
        self._events = EventTally()
        self._latency: dict[str, ModuleLatency] = {}
        self._runner_obj: Any = None
        self._started = time.monotonic()

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
        with contextlib.ExitStack() as stack:
            self._stack = stack
            stack.enter_context(environment(MESH_DATA_DIR=str(self.state_dir)))
            stack.enter_context(on_path(Path.cwd()))
            self._stage("infrastructure", self._start_infrastructure)
            sim = self.scenario.simulation
            if sim is not None:
                self._stage("network and demand", self._prepare_simulation)
                self._stage("history", self._collect_history)
            self._stage("models", self._train_models)
            if self.scenario.agent_nodes():
                self._stage("agents", self._start_agents)
            self._stage("roll-out", self._roll_out)
            if sim is not None:
                self._stage("live control", self._live)
        if self.scenario.simulation is not None and self.scenario.simulation.baselines:
            self._stage("baselines", self._baselines)
        self.report.wall_seconds = time.monotonic() - self._started
        if self.scenario.outputs.report:
            paths = write_report(self.report, self.out_dir)
            self.report.notes.append(f"report: {paths.html}")
            self.console.print(f"report: [bold]{paths.html}[/] (JSON: {paths.json})")
        return self.report

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        self.console.rule(name)
        t0 = time.monotonic()
        try:
            fn()
        except MeshError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise MeshError(f"scenario {self.scenario.name}: {name} failed: {exc}") from exc
        self.console.print(f"  [green]✓[/] {name} ({time.monotonic() - t0:.1f} s)")

    # -- 2. infrastructure ----------------------------------------------------------

    def _start_infrastructure(self) -> None:
        from mesh.compute._backend import connect_backend
        from mesh.core._http_server import serve_asgi
        from mesh.edge.broker._broker import free_port, start_embedded_broker
        from mesh.runtime._control_plane import ControlPlaneSettings, build_services

        sc = self.scenario
        head = sc.head_node() or RayNode(name="cloud", tier="cloud")
        broker_kind = sc.broker.kind
        if broker_kind == "external":
            assert sc.broker.url is not None
            broker_url = sc.broker.url
        elif broker_kind == "mosquitto":
            from mesh.edge.broker._broker import start_mosquitto

            broker = start_mosquitto(sc.broker.port or 0, workdir=self.state_dir / "mosquitto")
            self._stack.callback(broker.stop)
            broker_url = broker.url
        else:
            embedded = start_embedded_broker(port=sc.broker.port or 0)
            self._stack.callback(embedded.stop)
            broker_url = embedded.url
        self.console.print(f"  broker ({broker_kind}) at {broker_url}")
        self._broker_url = broker_url
        port = free_port()
        settings = ControlPlaneSettings(
            data_dir=self.state_dir,
            cloud_cpus=head.cpus,
            cloud_gpus=head.gpus,
            fog_nodes=0,
            gateway_port=port,
            broker_url=broker_url,
            topic_prefix=sc.broker.prefix,
            placement_period_s=5.0,
            placement_window_s=5.0,
            placement_min_samples=6,
            placement_dwell_s=20.0,
            placement_restore=False,
        )
        self._settings = settings
        with self.console.status("starting the Ray cluster (cloud head + fog nodes)…"):
            backend = connect_backend(settings)
            self._stack.callback(backend.close)
            self._backend = backend
            cluster = getattr(backend, "cluster", None)
            if cluster is None:
                raise MeshError("scenarios need the embedded Ray cluster (unset MESH_RAY_ADDRESS)")
            self._cluster = cluster
            for node in sc.nodes.ray:
                if node.tier == "fog":
                    info = cluster.add_fog_node(site=node.site_name, cpus=node.cpus)
                    self._fog_nodes[node.name] = info.node_id
        for info in cluster.nodes:
            self.console.print(
                f"  Ray node {info.node_id[:8]}: {info.tier}"
                f"{' site ' + info.site if info.site else ''}, {info.cpus:g} CPU"
            )
        undo: list[tuple[str, Callable[[], object]]] = []
        protocol = "3.1.1" if broker_kind == "embedded" else "auto"
        try:
            services = build_services(settings, backend, broker_url, protocol, undo, host_cpu=False)
        finally:
            for what, stop in reversed(undo):
                self._stack.callback(quietly(what, stop))
        self._services = services
        server = serve_asgi(services.app, host="127.0.0.1", port=port)
        self._stack.callback(server.stop)
        self._gateway_url = server.url
        self.console.print(f"  control plane at {server.url} (REST, /v2 inference, artifacts)")

    # -- 3. network and demand ---------------------------------------------------------

    def _prepare_simulation(self) -> None:
        from functions.traffic.sim.network import build_grid, make_demand

        sim = self.scenario.simulation
        assert sim is not None
        net_dir = self.out_dir / "net"
        grid_decl = sim.network.grid
        if grid_decl is None:
            raise MeshError("scenarios run generated grids only for now (simulation.network.grid)")
        self._grid = build_grid(
            net_dir,
            rows=grid_decl.rows,
            cols=grid_decl.cols,
            edge_length_m=grid_decl.length_m,
            lanes=grid_decl.lanes,
        )
        seed = sim.demand.seed if sim.demand.seed is not None else self.scenario.seed
        self._demand = make_demand(
            net_dir,
            self._grid,
            level=sim.demand.level,
            seed=seed,
            horizon_s=sim.demand.duration_s,
            scale=sim.demand.scale,
        )
        self.report.grid = f"{grid_decl.rows}x{grid_decl.cols}"
        self.report.demand = f"{sim.demand.level}, {self._demand.vehicles} vehicles"
        self.console.print(
            f"  {self._grid.name}: {len(self._grid.junctions)} signalised junctions; "
            f"{sim.demand.level} demand: {self._demand.vehicles} vehicles over "
            f"{sim.demand.duration_s:g} s"
        )

    def _collect_history(self) -> None:
        """Record what the cameras see on days like the scenario's (other seeds)."""
        from functions.traffic.sim.history import collect_history, history_days

        sim = self.scenario.simulation
        assert sim is not None
        seed = (sim.demand.seed if sim.demand.seed is not None else self.scenario.seed) + 1
        history = collect_history(
            self._grid,
            self.out_dir / "history",
            level=sim.demand.level,
            seed=seed,
            horizon_s=sim.demand.duration_s,
            scale=sim.demand.scale,
            days=history_days(sim.demand.duration_s),
        )
        self._history_dir = history.directory
        self.console.print(
            f"  {history.days} days, {history.vehicles} vehicles, {history.series} junction "
            f"series: {history.rows} per-minute approach counts in {history.directory}"
        )

    # -- 4. models ------------------------------------------------------------------------

    def _runner(self) -> Any:
        from mesh.compute._runner import Runner
        from mesh.compute._runs import SQLiteStore
        from mesh.sdk._app import Mesh
        from mesh.sdk._loader import load_apps

        if self._runner_obj is not None:
            return self._runner_obj
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
            fn = resolve(decl.function)
            scenario_app.add_stream(
                fn,
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
        store = SQLiteStore(self._settings.store_path)
        self._stack.callback(store.close)
        self._runner_obj = Runner([*apps, scenario_app], backend=self._backend, store=store)
        return self._runner_obj

    def _train_models(self) -> None:
        from mesh.models._registry import ModelRegistry

        runner = self._runner()
        registry: ModelRegistry = self._services.registry
        for trig in self.scenario.triggers:
            if trig.after is None and not trig.at_s and trig.every_s is None:
                args = {k: self._substitute(v) for k, v in trig.args.items()}
                self._run_function(runner, trig.function.partition(":")[2], args)
            else:
                # Not yet: runs during the live phase (at_s > 0, every_s, after).
                note = f"trigger {trig.name}: timed and chained runs are not implemented; skipped"
                self.report.notes.append(note)
                self.console.print(f"  [yellow]![/] {note}")
        self._versions: dict[str, str] = {}
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
            self._versions[decl.name] = f"{model_name}@{version}"
            self.console.print(f"  {decl.name}: model {model_name} {version}")

    def _substitute(self, value: Any) -> Any:
        """``{history}`` and ``{out}`` in a trigger's or a training function's string arguments."""
        if not isinstance(value, str):
            return value
        history = getattr(self, "_history_dir", self.out_dir / "history")
        return value.replace("{history}", str(history)).replace("{out}", str(self.out_dir))

    def _run_function(self, runner: Any, name: str, kwargs: dict[str, Any]) -> Any:
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

    # -- 5. agents ---------------------------------------------------------------------------

    def _link_shape(self, a: str, b: str) -> LinkShape:
        return link_shape(self.scenario.links, a, b)

    def _start_agents(self) -> None:
        from mesh.edge._enrolment import enroll
        from mesh.models._artifacts import ArtifactSigner

        host, _, port = self._broker_url.removeprefix("mqtt://").partition(":")
        signer = ArtifactSigner.load_or_create(self.state_dir)
        public_key = signer.public_key_b64()
        fleet = AgentFleet(
            (host, int(port or 1883)),
            self.out_dir,
            prefix=self.scenario.broker.prefix,
            public_key=public_key,
            options={"heartbeat_period_s": 1.0, "keepalive_s": 5, "protocol": "3.1.1"},
        )
        self._stack.callback(fleet.close)
        self._fleet = fleet
        cameras = {a.site for a in self.scenario.agent_nodes()}
        prefix = self.scenario.broker.prefix
        cores = os.cpu_count() or 1
        for i, agent in enumerate(self.scenario.agent_nodes()):
            # Enrolled: the artifact endpoint serves signed URLs to enrolled agents only.
            enroll(agent.id, site=agent.site, settings=self._settings, public_key=public_key)
            # The broker sits with the fog: an agent's link to it is its edge-fog link.
            shape = self._link_shape(f"agent:{agent.id}", "fog")
            self._agent_link[agent.id] = shape
            pipelines = [self._camera_pipeline(agent.site, prefix)] if agent.site in cameras else []
            fleet.add(
                agent.id,
                agent.site,
                link=shape,
                cores=[i % cores],
                env={"EDGE_AGENT_PIPELINES": json.dumps(pipelines)},
                cpus=agent.cpus,
            )
        edge = self._services.edge
        with self.console.status(f"waiting for {len(fleet.agents)} agents to come online…"):
            for agent_id in fleet.agents:
                edge.wait_for_agent(agent_id, timeout_s=30.0)
        self.console.print(f"  {len(fleet.agents)} agents online: {', '.join(fleet.agents)}")

    def _camera_pipeline(self, site: str, prefix: str) -> dict[str, Any]:
        counter = self._camera_module()
        return {
            "name": CAMERA_STREAM,
            "module": counter.name if counter is not None else "counter",
            # Room for a minute of frames: a starved device falls behind (its
            # latency counts against the SLO until its site moves) but sheds none,
            # so every frame sent is answered or counted lost.
            "source": {
                "kind": "mqtt",
                "topic": f"{prefix}/sensors/{site}/camera",
                "options": {"buffer": 128},
            },
            "stream": CAMERA_STREAM,
            "qos": 1,
        }

    def _camera_module(self) -> ModuleDecl | None:
        """The module the cameras feed: the first one that may run at the edge."""
        return next((m for m in self.scenario.modules if "edge" in m.tiers), None)

    # -- 5b. roll-out ------------------------------------------------------------------------

    def _module_spec(self, decl: ModuleDecl) -> Any:
        from mesh.sdk._specs import ModuleSpec, QoS, Resources

        model, _, _ = self._versions[decl.name].partition("@")
        return ModuleSpec(
            name=decl.name,
            model=model,
            qos=QoS(p95_latency_ms=decl.qos.p95_ms),
            tiers=tuple(decl.tiers),
            resources=Resources(cpus=decl.cpus),
        )

    def _roll_out(self) -> None:
        from mesh.serving._contract import ModelArtifact

        manager = self._services.manager
        sim = self.scenario.simulation
        for decl in self.scenario.modules:
            spec = self._module_spec(decl)
            version = self._versions[decl.name].partition("@")[2]
            self._latency[decl.name] = ModuleLatency(slo_ms=decl.qos.p95_ms)
            initial = decl.initial or decl.tiers[0]
            compute = [t for t in decl.tiers if t in ("fog", "cloud")]
            if compute:
                # A warm replica on a compute tier: the gateway's route and the agents'
                # offload target while the engine keeps the module at the edge.
                tier = initial if initial in compute else compute[0]
                with self.console.status(f"starting {decl.name} replica on {tier}…"):
                    route = manager.deploy(spec, version, tier=tier)
                self.console.print(
                    f"  {decl.name} {version}: {tier} replica ready (route epoch {route.epoch})"
                )
            if initial == "edge" and self._fleet is not None:
                installer = self._services.installer
                artifact = ModelArtifact.from_registry(self._services.registry, spec.model, version)
                with self.console.status(f"installing {decl.name} on the agents…"):
                    for agent_id in self._fleet.agents:
                        installer.install(agent_id, decl.name, artifact, 60.0)
                self.console.print(
                    f"  {decl.name} {version}: installed on {len(self._fleet.agents)} agents"
                )
                if decl is self._camera_module():
                    # Each camera's pipeline is placed per site: local, or on a
                    # replica that then takes the camera's frames itself.
                    from mesh.edge._install import PipelineSource

                    prefix = self.scenario.broker.prefix
                    sites = {a.id: a.site for a in self.scenario.agent_nodes()}
                    sources = {
                        agent: PipelineSource(
                            site, f"{prefix}/sensors/{site}/camera", CAMERA_STREAM
                        )
                        for agent, site in sites.items()
                    }
                    rate = 1.0 / sim.camera_every_s if sim is not None else None
                    self._services.controller.track_pipelines(
                        decl.name, sites, rate_per_s=rate, sources=sources
                    )

    # -- 6. live control -----------------------------------------------------------------------

    def _live(self) -> None:
        from edge_agent.protocol import Tensor, encode_frame
        from functions.traffic.signals import ControllerConfig
        from functions.traffic.sim.live import CameraFrame, LiveStats, TrafficLoop
        from functions.traffic.sim.session import SumoSession
        from mesh.compute._streams import StreamWorker

        sim = self.scenario.simulation
        assert sim is not None
        edge = self._services.edge
        runner = self._runner()
        prefix = self.scenario.broker.prefix
        counter = self._camera_module()
        cameras = {a.site: a.id for a in self.scenario.agent_nodes()}
        loop_box: list[TrafficLoop] = []
        feed = self._forecast_feed()
        if counter is not None:
            self._events.slo_ms = counter.qos.p95_ms

        relay = CameraRelay(
            junctions={
                j: {a.name: a.neighbour for a in arms if a.neighbour is not None}
                for j, arms in self._grid.junctions.items()
            },
            segments_m=ControllerConfig().segments_m,
            publish=edge.publish,
            output=counter.output if counter is not None and counter.output else None,
            tally=self._events,
            on_latency=self._latency[counter.name].samples.append if counter else None,
            sim_time_at=lambda ts: loop_box[0].sim_time_at(ts) if loop_box else 0.0,
            forecast=feed.observe if feed is not None else None,
        )
        self._stack.callback(edge.on_event(relay.on_event))

        def on_plan(_topic: str, payload: bytes) -> None:
            try:
                plan = json.loads(payload)
                junction, phase = str(plan["site"]), int(plan["phase"])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("bad signal plan %r: %s", payload[:200], exc)
                return
            if loop_box:
                loop_box[0].offer_plan(junction, phase, plan.get("frame_ts"))

        for decl in self.scenario.streams:
            if decl.output:
                self._stack.callback(edge.subscribe(decl.output, on_plan))
            worker = StreamWorker(runner, decl.name, edge)
            worker.start()
            self._stack.callback(worker.stop)

        def publish(frame: CameraFrame) -> None:
            tensor = Tensor.from_numpy("occupancy", frame.frame)
            ts = time.time()
            self._events.sent(frame.junction, ts)
            header = {"kind": "frame", "sim_s": frame.sim_s, "ts": ts}
            payload = encode_frame(header, [tensor])
            # QoS 1: the agent's persistent session keeps frames sent while it
            # restarts (it runs them late, and they count so), rather than lose them.
            edge.publish(f"{prefix}/sensors/{frame.junction}/camera", payload, qos=1)

        session = SumoSession(
            self._grid,
            self._demand.path,
            control="external",
            seed=self.scenario.seed,
            end_s=sim.demand.duration_s,
            fallback_after_s=10.0,
            workdir=self.out_dir / "sumo-adaptive",
        )
        timeline = FaultTimeline(self.scenario.faults)
        session.start()
        try:
            loop = TrafficLoop(
                session,
                cameras=cameras,
                render=relay.render,
                publish_frame=publish,
                timeline=timeline,
                actions=ScenarioActions(self),
                speedup=sim.speedup,
                camera_every_s=sim.camera_every_s,
                on_progress=self._progress_printer(),
            )
            loop_box.append(loop)
            stats: LiveStats = loop.run()
        except BaseException:
            with contextlib.suppress(Exception):
                session.close()
            raise
        kpis = session.close()
        # Placement stops with the simulation: a move under way finishes while
        # the agents still run, before anything is torn down.
        self._services.controller.close()
        edge.barrier()
        time.sleep(1.0)  # the last events and plans in flight
        if feed is not None:
            feed.close()
            self.report.notes.append(f"{feed.name}: {feed.stats.describe()}")
        self.report.sim_seconds = stats.sim_s
        self.report.traffic["adaptive"] = controller_kpis(kpis)
        self.report.faults = timeline.windows
        self.report.notes.extend(timeline.errors)
        self.report.modules = self._latency
        self.report.events_sent = stats.frames_sent
        self.report.events_received = self._events.received
        self.report.events_by_route = dict(self._events.by_route)
        self.report.over_slo_by_route = dict(self._events.over_slo)
        self.report.lost_events = self._events.lost()
        if gaps := self._events.gaps():
            self.report.notes.append(f"camera events: {gaps} sequence gap(s)")
        if stale := self._events.stale:
            self.report.notes.append(
                f"camera events: {stale} made over {STALE_AFTER_S:.0f} s after their frame's "
                "capture (counted over the SLO by their age)"
            )
        for site, missing in self._events.unanswered_by_site().items():
            first, last = (loop.sim_time_at(missing[i]) for i in (0, -1))
            self.report.notes.append(
                f"camera {site}: {len(missing)} frame(s) never answered "
                f"(sim {first:.0f}-{last:.0f} s)"
            )
        self.report.migrations = self._migrations(loop)
        self._agent_cpu(loop)

    def _forecast_feed(self) -> Any:
        """Live forecasts through the gateway, when a module serves the flow forecaster."""
        from functions.traffic.app import FORECASTER_MODEL
        from functions.traffic.sim.forecast_feed import gateway_feed

        names = [m for m, v in self._versions.items() if v.startswith(f"{FORECASTER_MODEL}@")]
        if not names:
            return None
        latency = self._latency[names[0]]
        try:
            feed = gateway_feed(
                self._gateway_url,
                self.state_dir,
                names[0],
                on_latency=latency.samples.append,
                on_failure=latency.failed.append,
            )
        except (MeshError, OSError) as exc:
            self.report.notes.append(f"{names[0]}: no live forecasts ({exc})")
            self.console.print(f"  [yellow]![/] {self.report.notes[-1]}")
            return None
        self._stack.callback(feed.close)
        return feed

    def _progress_printer(self) -> Callable[[Any], None]:
        last = [0.0]

        def show(stats: Any) -> None:
            if stats.wall_s - last[0] < 5.0:
                return
            last[0] = stats.wall_s
            counter = self._camera_module()
            p95 = "-"
            if counter is not None:
                recent = [v for _, v in self._latency[counter.name].samples[-200:]]
                if recent:
                    p95 = f"{float(np.percentile(recent, 95)):.1f} ms"
            self.console.print(
                f"  sim {stats.sim_s:4.0f} s · wall {stats.wall_s:4.0f} s · frames "
                f"{stats.frames_sent} · events {self._events.received} · plans "
                f"{stats.plans_applied} · p95 {p95}",
                soft_wrap=True,
            )

        return show

    def _migrations(self, loop: Any) -> list[MigrationRecord]:
        controller = self._services.controller
        out = []
        for m in reversed(controller.history(limit=500)):
            at = m.switched_at or m.decided_at
            out.append(
                MigrationRecord(
                    t=loop.sim_time_at(at),
                    module=m.module,
                    site=m.site,
                    source=f"{m.from_tier or '?'} {(m.from_node or '-')[:12]}",
                    target=f"{m.to_tier} {m.to_node[:12]}",
                    reason=f"{m.status}: {m.reason}"[:200],
                    switch_s=(m.switched_at - m.decided_at) if m.switched_at else None,
                )
            )
        return out

    def _agent_cpu(self, loop: Any) -> None:
        """Host CPU as the agents report it (they share this host: one series)."""
        if self._fleet is None or not self._fleet.agents:
            return
        agent_id = next(iter(self._fleet.agents))
        series = [
            (loop.sim_time_at(sample.received_at), float(sample.cpu_percent))
            for sample in self._services.edge.metrics(agent_id)
        ]
        self.report.agent_cpu["host (all agents)"] = series

    # -- 7. baselines ----------------------------------------------------------------------------

    def _baselines(self) -> None:
        from functions.traffic.sim.session import SumoSession

        sim = self.scenario.simulation
        assert sim is not None
        for name in sim.baselines:
            with self.console.status(f"SUMO {name} on the same routes…"):
                session = SumoSession(
                    self._grid,
                    self._demand.path,
                    control=_BASELINE_CONTROL[name],  # type: ignore[arg-type]
                    seed=self.scenario.seed,
                    end_s=sim.demand.duration_s,
                    workdir=self.out_dir / f"sumo-{name}",
                )
                session.start()
                kpis = session.run()
            self.report.traffic[name] = controller_kpis(kpis)
            self.console.print(
                f"  {name}: mean wait {kpis.mean_wait_s:.1f} s, trip {kpis.mean_trip_s:.1f} s, "
                f"{kpis.arrivals} arrivals, {kpis.teleports} teleports"
            )


def run_scenario(path: Path, *, console: Console) -> ScenarioReport:
    """Check and run the scenario in ``path``; prints the headline figures at the end.

    Raises:
        ScenarioError: the file is invalid (nothing started).
        MeshError: a stage failed (everything started was stopped).
    """
    from mesh.scenario._load import load_scenario

    scenario = load_scenario(path)
    console.print(f"scenario [bold]{scenario.name}[/] from {path}: {scenario.description}")
    report = ScenarioRun(scenario, console=console).run()
    for line in headline(report):
        console.print(f"  {line}")
    _ = CPU_PROVIDER
    return report
