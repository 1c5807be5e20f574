"""SUMO traffic as a mesh simulation plugin: what ``functions.traffic.sim:plugin`` is.

The mesh's scenario harness (:mod:`mesh.scenario`) knows nothing of traffic;
this plugin does it all:

* **check** its settings (:class:`~functions.traffic.sim.config.TrafficConfig`):
  a network file that SUMO can read, the camera module has an MQTT source,
  no baseline listed twice, frames no faster than SUMO steps;
* **prepare**: the grid network (every junction signalised), the routes every
  controller shares, and days of recorded history for the forecaster
  (``{history}`` in training arguments); the cameras' impairments as
  ``{camera_impairments}`` (JSON, or ``none``), so the counter trains on them;
* **start**: the camera relay (frames out on the counter's source topic, its
  counts in to the signal controller's stream with the forecaster's
  forecasts), the plans subscription, and SUMO under external control;
* **step**: frames when due, plans applied, one SUMO step
  (:class:`~functions.traffic.sim.live.TrafficStepper`);
* **kpis**: the adaptive run's figures and SUMO's own programs (the baselines)
  on the same routes; **report_section**: the Traffic table and queue plot,
  and the camera count error (the counter's counts against SUMO's, per approach:
  :mod:`~functions.traffic.sim.count_error`), over time per site;
* **drift** (the scenario's ``drift`` fault): a junction's camera changes
  (:class:`~functions.traffic.camera_drift.CameraDrift` at the fault's
  severity); every frame's exact counts go out late on the cameras' ``truth``
  topic (:class:`~functions.traffic.sim.truth.TruthFeed`), the labels of the
  counter's drift check and retraining.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from functions.traffic.sim.config import Cameras, TrafficConfig
from functions.traffic.sim.kpis import (
    ControllerKpis,
    camera_section_parts,
    controller_kpis,
    traffic_section,
)
from mesh.scenario import (
    Issue,
    LiveContext,
    PrepareContext,
    ReportSection,
    Scenario,
    ScenarioReport,
)

__all__ = ["SumoTraffic", "TrafficRun", "plugin", "read_junctions"]

logger = logging.getLogger(__name__)

#: SUMO's program names for the scenario's baseline names.
_BASELINE_CONTROL = {"fixed": "static", "actuated": "actuated", "delay_based": "delay_based"}


def read_junctions(path: Path) -> list[str]:
    """Ids of the signalised (traffic_light) junctions of a SUMO ``.net.xml``.

    Raises:
        ValueError: the file is not a SUMO network.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"not a SUMO network (XML error: {exc})") from exc
    if root.tag != "net":
        raise ValueError(f"not a SUMO network: the root element is <{root.tag}>, expected <net>")
    return [
        j.get("id", "")
        for j in root.iter("junction")
        if j.get("type") == "traffic_light" and not j.get("id", ":").startswith(":")
    ]


class SumoTraffic:
    """The plugin (see the module docstring); :data:`plugin` is its one instance."""

    name = "sumo-traffic"
    config_model = TrafficConfig

    def check(self, config: TrafficConfig, scenario: Scenario) -> list[Issue]:
        """Network file, camera module, baselines, frame period."""
        issues: list[Issue] = []
        network = config.network
        if network.file is not None:
            path = scenario.resolve_path(network.file)
            try:
                read_junctions(path)
            except (OSError, ValueError) as exc:
                if isinstance(exc, FileNotFoundError):
                    base = scenario.base_dir
                    where = "the working directory" if str(base) == "." else f"{base}/"
                    why = f"no such file {network.file!r} (relative to {where})"
                else:
                    why = f"cannot read {network.file!r}: {exc}"
                issues.append(Issue(("simulation", "network", "file"), why))
        seen: set[str] = set()
        for name in config.baselines:
            if name in seen:
                issues.append(Issue(("simulation", "baselines"), f"{name!r} is listed twice"))
            seen.add(name)
        if config.camera_every_s < config.step_s:
            issues.append(
                Issue(
                    ("simulation", "camera_every_s"),
                    f"expected at least step_s ({config.step_s:g} s), got "
                    f"{config.camera_every_s:g}",
                )
            )
        if config.cameras is None:
            return issues
        module = next((m for m in scenario.modules if m.name == config.cameras.module), None)
        loc = ("simulation", "cameras", "module")
        if module is None:
            names = ", ".join(m.name for m in scenario.modules) or "none"
            issues.append(
                Issue(
                    loc,
                    f"no module {config.cameras.module!r} (modules: {names}); name the module "
                    "the cameras feed, or set cameras: null for a simulation without cameras",
                )
            )
        elif module.source is None or module.source.kind != "mqtt":
            issues.append(
                Issue(
                    loc,
                    f"module {module.name!r} needs an mqtt source (the topic the cameras "
                    "publish on), e.g. source: {kind: mqtt, topic: 'sensors/{site}/camera'}",
                )
            )
        return issues

    def sites(self, config: TrafficConfig, scenario: Scenario) -> list[str]:
        """The signalised junctions."""
        if config.network.file is not None:
            return read_junctions(scenario.resolve_path(config.network.file))
        return config.sites()

    def duration_s(self, config: TrafficConfig) -> float:
        """The demand's horizon."""
        return config.demand.duration_s

    def create(self, config: TrafficConfig, scenario: Scenario) -> TrafficRun:
        """A run on this scenario."""
        return TrafficRun(config, scenario)


#: What a scenario's ``simulation.plugin: functions.traffic.sim:plugin`` names.
plugin = SumoTraffic()


class TrafficRun:
    """One traffic simulation of a scenario run (see the module docstring)."""

    def __init__(self, config: TrafficConfig, scenario: Scenario) -> None:
        """Nothing built yet."""
        self.config = config
        self.scenario = scenario
        self._out_dir = scenario.output_dir().resolve()
        self._stepper: Any = None
        self._session: Any = None
        self._feed: Any = None
        self._notes: list[str] = []
        self._traffic: dict[str, ControllerKpis] = {}
        self._subtitle = ""
        self._console = Console(quiet=True)
        self._relay: Any = None
        self._truth: Any = None
        self._drift_marks: list[tuple[float, str, float]] = []
        #: The cameras' counter as it served at the start: (data dir, "model@version").
        self._counter_at_start: tuple[Path, str] | None = None

    @property
    def time_s(self) -> float:
        """SUMO's simulated time (0 before the live phase)."""
        return float(self._stepper.time_s) if self._stepper is not None else 0.0

    @property
    def speedup(self) -> float:
        """Simulated seconds per wall second."""
        return self.config.speedup

    def _seed(self) -> int:
        seed = self.config.demand.seed
        return seed if seed is not None else self.scenario.seed

    # -- prepare ---------------------------------------------------------------------

    def prepare(self, ctx: PrepareContext) -> None:
        """Network, demand, and the recorded days the forecaster trains on."""
        from functions.traffic.sim.history import collect_history, history_days
        from functions.traffic.sim.network import build_grid, make_demand

        cfg = self.config
        self._console = ctx.console
        grid_decl = cfg.network.grid
        if grid_decl is None:
            raise ValueError("traffic runs generated grids only for now (simulation.network.grid)")
        net_dir = ctx.out_dir / "net"
        self._grid = build_grid(
            net_dir,
            rows=grid_decl.rows,
            cols=grid_decl.cols,
            edge_length_m=grid_decl.length_m,
            lanes=grid_decl.lanes,
        )
        demand = cfg.demand
        self._demand = make_demand(
            net_dir,
            self._grid,
            level=demand.level,
            seed=self._seed(),
            horizon_s=demand.duration_s,
            scale=demand.scale,
        )
        self._subtitle = (
            f"grid {grid_decl.rows}x{grid_decl.cols}; demand {demand.level}, "
            f"{self._demand.vehicles} vehicles"
        )
        ctx.console.print(
            f"  {self._grid.name}: {len(self._grid.junctions)} signalised junctions; "
            f"{demand.level} demand: {self._demand.vehicles} vehicles over "
            f"{demand.duration_s:g} s"
        )
        # What the cameras see on days like the scenario's (other seeds).
        history = collect_history(
            self._grid,
            ctx.out_dir / "history",
            level=demand.level,
            seed=self._seed() + 1,
            horizon_s=demand.duration_s,
            scale=demand.scale,
            days=history_days(demand.duration_s),
        )
        ctx.substitutions["history"] = str(history.directory)
        impairments = cfg.cameras.camera_impairments() if cfg.cameras is not None else None
        ctx.substitutions["camera_impairments"] = (
            "none"
            if impairments is None or impairments.is_none
            else json.dumps(impairments.as_dict())
        )
        ctx.console.print(
            f"  history: {history.days} days, {history.vehicles} vehicles, {history.series} "
            f"junction series: {history.rows} per-minute approach counts in {history.directory}"
        )

    # -- live ------------------------------------------------------------------------

    def start(self, ctx: LiveContext) -> None:
        """Relay, plans, forecasts and SUMO under external control."""
        from functions.traffic.sim.live import TrafficStepper
        from functions.traffic.sim.session import SumoSession

        cfg = self.config
        self._notes = ctx.notes
        for decl in self.scenario.streams:
            if decl.output:
                ctx.stack.callback(ctx.subscribe(decl.output, self._on_plan))
        render: Any = None
        publish: Any = None
        cameras: dict[str, str] = {}
        if cfg.cameras is not None:
            render, publish = self._cameras(ctx, cfg.cameras)
            cameras = {a.site: a.id for a in self.scenario.agent_nodes()}
        self._session = SumoSession(
            self._grid,
            self._demand.path,
            control="external",
            seed=self.scenario.seed,
            end_s=cfg.demand.duration_s,
            fallback_after_s=10.0,
            workdir=ctx.out_dir / "sumo-adaptive",
        )
        self._session.start()
        self._stepper = TrafficStepper(
            self._session,
            cameras=cameras,
            render=render,
            publish_frame=publish,
            camera_every_s=cfg.camera_every_s,
        )

    def _cameras(self, ctx: LiveContext, cams: Cameras) -> tuple[Any, Any]:
        """The relay (frames rendered, counts relayed) and the frame publisher."""
        import numpy as np

        from edge_agent.protocol import Tensor, encode_frame
        from functions.traffic.control import ControllerConfig
        from functions.traffic.sim.camera import CameraRelay
        from functions.traffic.sim.live import CameraFrame

        module = next(m for m in self.scenario.modules if m.name == cams.module)
        assert module.source is not None and module.source.topic is not None
        camera_topic = module.source.topic
        feed = self._forecast_feed(ctx)
        relay = CameraRelay(
            junctions={
                j: {a.name: a.neighbour for a in arms if a.neighbour is not None}
                for j, arms in self._grid.junctions.items()
            },
            segments_m=ControllerConfig().segments_m,
            publish=lambda topic, payload: ctx.publish(topic, payload, 0),
            output=cams.counts,
            stream=module.stream_name(),
            sim_time_at=ctx.sim_time_at,
            forecast=feed.observe if feed is not None else None,
            impairments=cams.camera_impairments(),
            rng=np.random.default_rng([self.scenario.seed, 20]),
        )
        self._relay = relay
        served = ctx.versions.get(module.name)
        if served:
            self._counter_at_start = (ctx.state_dir, served)
        ctx.stack.callback(ctx.on_event(relay.on_event))
        if cams.truth is not None:
            from functions.traffic.sim.truth import TruthFeed

            self._truth = TruthFeed(
                cams.truth,
                lambda topic, payload: ctx.publish(topic, payload, 1),
                delay_s=cams.truth_delay_s,
            )

        def publish(frame: CameraFrame) -> None:
            tensor = Tensor.from_numpy("occupancy", frame.frame)
            ts = time.time()
            relay.expect(frame.junction, ts, frame.counts)
            if self._truth is not None:
                self._truth.add(frame.junction, ts, frame.counts, now=ts)
            ctx.sent(module.name, frame.junction, ts)
            header = {"kind": "frame", "sim_s": frame.sim_s, "ts": ts}
            # QoS 1: the agent's persistent session keeps frames sent while it
            # restarts (it runs them late, and they count so), rather than lose them.
            topic = ctx.topic(camera_topic.replace("{site}", frame.junction))
            ctx.publish(topic, encode_frame(header, [tensor]), 1)

        return relay.render, publish

    def _on_plan(self, _topic: str, payload: bytes) -> None:
        try:
            plan = json.loads(payload)
            junction, phase = str(plan["site"]), int(plan["phase"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("bad signal plan %r: %s", payload[:200], exc)
            return
        if self._stepper is not None:
            self._stepper.offer_plan(junction, phase, plan.get("frame_ts"))

    def _forecast_feed(self, ctx: LiveContext) -> Any:
        """Live forecasts through the gateway, when a module serves the flow forecaster."""
        from functions.traffic.app import FORECASTER_MODEL
        from functions.traffic.sim.forecast_feed import gateway_feed
        from mesh import MeshError

        names = [m for m, v in ctx.versions.items() if v.startswith(f"{FORECASTER_MODEL}@")]
        if not names:
            return None
        latency = ctx.latency[names[0]]
        try:
            feed = gateway_feed(
                ctx.gateway_url,
                ctx.state_dir,
                names[0],
                on_latency=latency.samples.append,
                on_failure=latency.failed.append,
            )
        except (MeshError, OSError) as exc:
            ctx.notes.append(f"{names[0]}: no live forecasts ({exc})")
            ctx.console.print(f"  [yellow]![/] {ctx.notes[-1]}")
            return None
        ctx.stack.callback(feed.close)
        self._feed = feed
        return feed

    def step(self) -> bool:
        """One SUMO step with its frames and plans; the ground truth that is due goes out."""
        more = bool(self._stepper.step())
        if self._truth is not None:
            self._truth.flush()
        return more

    def drift(self, site: str, severity: float) -> None:
        """The scenario's ``drift`` fault: ``site``'s camera changes (severity 0: back as it was).

        Raises:
            ValueError: no camera at ``site``, or a severity outside ``[0, 1]``.
        """
        from functions.traffic.camera_drift import CameraDrift

        if self._relay is None:
            raise ValueError("no cameras in this simulation: nothing can drift")
        if site not in self._grid.junctions:
            raise ValueError(
                f"no camera at {site!r} (junctions: {', '.join(self._grid.junctions)})"
            )
        change = CameraDrift.at(severity)
        if self._counter_at_start is not None and severity > 0:
            where, self._counter_at_start = self._counter_at_start, None
            self._relay.set_reference(_reference_counter(*where))
        self._relay.set_drift(site, change)
        self._drift_marks.append((self.time_s, site, severity))

    def stop(self) -> None:
        """Close SUMO: the adaptive run's figures (the forecast feed closes with the mesh)."""
        if self._session is not None:
            session, self._session = self._session, None
            kpis = session.close()
            self._traffic["adaptive"] = controller_kpis(kpis)
            stats = self._stepper.stats
            self._notes.append(
                f"traffic: {stats.frames_sent} camera frames, {stats.plans_applied} plans applied"
            )

    def live_kpis(self) -> dict[str, Any]:
        """The adaptive run so far, for the dashboard's Scenario page (the loop's thread)."""
        if self._session is None:
            return {}
        out: dict[str, Any] = dict(self._session.live())
        if self._relay is not None:
            mae = self._relay.count_error.summary().get("mae")
            if mae is not None:
                out["count_mae"] = round(float(mae), 3)
        return out

    # -- figures ----------------------------------------------------------------------

    def kpis(self) -> dict[str, Any]:
        """The adaptive run's figures and each baseline's on the same routes."""
        from functions.traffic.sim.session import SumoSession

        cfg = self.config
        if self._feed is not None:
            self._notes.append(f"{self._feed.name}: {self._feed.stats.describe()}")
        for name in cfg.baselines:
            session = SumoSession(
                self._grid,
                self._demand.path,
                control=_BASELINE_CONTROL[name],  # type: ignore[arg-type]
                seed=self.scenario.seed,
                end_s=cfg.demand.duration_s,
                workdir=self._out_dir / f"sumo-{name}",
            )
            with self._console.status(f"SUMO {name} on the same routes…"):
                session.start()
                kpis = session.run()
            self._traffic[name] = controller_kpis(kpis)
            self._console.print(
                f"  {name}: mean wait {kpis.mean_wait_s:.1f} s, trip {kpis.mean_trip_s:.1f} s, "
                f"{kpis.arrivals} arrivals, {kpis.teleports} teleports"
            )
        return {name: k.model_dump(mode="json") for name, k in self._traffic.items()}

    def report_section(self, report: ScenarioReport) -> ReportSection:
        """The Traffic section: KPIs by controller, halted vehicles over time."""
        section = traffic_section(
            self._traffic,
            report,
            subtitle=self._subtitle,
            plots=self.scenario.outputs.plots,
        )
        if self._relay is None or self.config.cameras is None:
            return section
        section = dataclasses.replace(
            section,
            **camera_section_parts(
                self._relay.count_error.summary(),
                self.config.cameras.camera_impairments(),
                section,
            ),
        )
        from functions.traffic.sim.drift_report import error_over_time_parts

        return dataclasses.replace(
            section,
            **error_over_time_parts(
                self._relay.error_series,
                self._drift_marks,
                report,
                section,
                self._truth,
                self._relay.undrifted_series,
            ),
        )


def _reference_counter(data_dir: Path, served: str) -> Any:
    """The counter that served at the start (``model@version``), run locally; None if gone.

    The camera relay counts the drifted cameras' frames as they would have been
    without the change with it (the undrifted error the report compares with).
    """
    import onnxruntime as ort

    from mesh import MeshSettings
    from mesh.models import ModelRegistry

    model, _, version = served.partition("@")
    try:
        registry = ModelRegistry.open(MeshSettings(data_dir=data_dir))
        try:
            _, path = registry.artifact_path(model, version or "production")
        finally:
            registry.close()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # a figure of the report: the run goes on without it
        logger.warning("no undrifted reference counter (%s): %s", served, exc)
        return None
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]
