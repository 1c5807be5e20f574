"""Issue #5: an agent's pipeline offloads under a real CPU hog and returns after the dwell.

Real Ray (the session's cloud + fog cluster), a real Mosquitto, two real agent
processes, each running a pipeline of the same module for its own site and each
inside its own device CPU budget (a cgroup v1 ``cpu`` group, 0.5 CPU), a fog
replica of the module answering MQTT, and the placement controller tracking
both sites' pipelines:

both sites run locally and meet the SLO -> real burner processes start inside
agent 1's device group (only agent 1 slows) -> its site's observed p95 passes
the SLO -> the site offloads to the fog replica (a migration record with the
site) while agent 2 stays local -> the hog stops -> canaries see agent 1
recover -> after the dwell the site returns to local. Every input of both
pipelines gives exactly one event, in order (none lost, none repeated).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import tests.support.agent_fixtures as af
import tests.support.brokers as brokers
from edge_agent.protocol import Event, Tensor, Topics, encode_frame
from mesh import QoS, Resources
from mesh.control._controller import ControllerSettings, PlacementController
from mesh.control._migrations import MigrationExecutor
from mesh.control._monitors import Monitors
from mesh.control._probes import EdgeCanary, PathProbe
from mesh.control._store import PlacementStore
from mesh.edge._artifact_api import UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings
from mesh.edge._install import EdgeInstaller, offload_target
from mesh.edge.broker._broker import MosquittoBroker
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.scenario._procs import CpuHog, DeviceCgroup
from mesh.sdk import ModuleSpec
from mesh.serving._contract import ModelArtifact, ReplicaMqtt
from mesh.serving._manager import HttpProbe, ServingManager
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import AgentProcess, build_cnn, requester

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

mosquitto = brokers.mosquitto
agent_processes = af.agent_processes
pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(300)]

T = Topics()
MODULE = "cnn-idx"
HOG, CALM = "cam-hog", "cam-calm"
SITES = {HOG: "int-hog", CALM: "int-calm"}
RATE_HZ = 10.0
SLO_MS = 40.0
DWELL_S = 8.0
DEVICE_CPUS = 0.5

SPEC = ModuleSpec(
    name=MODULE,
    model=MODULE,
    qos=QoS(p95_latency_ms=SLO_MS),
    tiers=("edge", "fog"),
    resources=Resources(cpus=0.25),
)


def build_indexed_cnn(path: Path) -> Path:
    """The test CNN plus a pass-through: input ``i`` float32[N,1] comes back as ``idx``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(build_cnn(path)))
    model.graph.input.append(helper.make_tensor_value_info("i", TensorProto.FLOAT, ["N", 1]))
    model.graph.node.append(helper.make_node("Identity", ["i"], ["idx"]))
    model.graph.output.append(helper.make_tensor_value_info("idx", TensorProto.FLOAT, ["N", 1]))
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def wait(cond: Callable[[], object], timeout_s: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{log()[-4000:]}")


class Feeder:
    """Publishes input ``i`` to each agent's source topic at RATE_HZ, in order."""

    def __init__(self, client: Any, topics: dict[str, str]) -> None:
        self.client, self.topics = client, topics
        self.sent = dict.fromkeys(topics, 0)
        rng = np.random.default_rng(0)
        self._x = rng.random((1, 1, 32, 32), dtype=np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for agent, topic in self.topics.items():
                i = np.full((1, 1), float(self.sent[agent]), np.float32)
                frame = encode_frame(
                    {}, [Tensor.from_numpy("input", self._x), Tensor.from_numpy("i", i)]
                )
                self.client.publish(topic, frame, qos=1).wait_for_publish(5)
                self.sent[agent] += 1
            self._stop.wait(1 / RATE_HZ)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def events(r: Any, agent: str) -> list[Event]:
    topic = T.events(SITES[agent], "out")
    return [Event.model_validate_json(p) for t, p in list(r.events) if t == topic]


class Enrolled:
    """Both agents are enrolled (their downloads come with URLs pre-signed for them)."""

    def agent_for_token(self, token: str) -> str | None:
        return None

    def is_enrolled(self, agent_id: str) -> bool:
        return agent_id in SITES


@pytest.fixture
def cgroups() -> Iterator[dict[str, DeviceCgroup]]:
    made = {a: DeviceCgroup.create(f"{a}-{uuid.uuid4().hex[:6]}", DEVICE_CPUS) for a in SITES}
    groups = {a: g for a, g in made.items() if g is not None}
    try:
        if len(groups) < len(made):
            pytest.skip(
                "cgroup v1 cpu groups cannot be created here (needs root and "
                "/sys/fs/cgroup/cpu); the slow-link variant is test_placement_migration.py"
            )
        yield groups
    finally:
        for g in groups.values():
            g.remove()


def test_a_hogged_agent_s_pipeline_offloads_to_fog_and_returns_after_the_dwell(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    ray_backend: RayBackend,
    agent_processes: Callable[..., AgentProcess],
    cgroups: dict[str, DeviceCgroup],
) -> None:
    from mesh.ray._probe import RayNodeProbe
    from mesh.ray._replicas import RayReplicaLauncher

    settings = EdgeSettings(data_dir=tmp_path / "cp", broker_url=mosquitto.url)
    edge = EdgeBus(mosquitto.url, keepalive_s=5).start()
    undo: list[Callable[[], object]] = [edge.stop]
    hog = CpuHog(workers=1, cgroup=cgroups[HOG])
    undo.append(hog.stop)
    try:
        artifacts = serve_in_thread(create_artifact_app(settings, auth=Enrolled()), port=0)
        undo.append(artifacts.stop)
        signer = ArtifactSigner.load_or_create(settings.data_dir)
        installer = EdgeInstaller(
            edge,
            store=ArtifactStore(settings.data_dir / "artifacts"),
            signer=signer,
            url_signer=UrlSigner.load_or_create(settings.data_dir),
            base_url=artifacts.url,
            module_options={"warmup_runs": 2, "threads": 1},
        )
        manager = ServingManager(
            RouteTable(),
            RayReplicaLauncher(nodes=ray_backend.nodes, mqtt=ReplicaMqtt(mosquitto.url)),
            period_s=0.25,
            start_timeout_s=120,
        ).start()
        undo.append(manager.close)

        agents: dict[str, AgentProcess] = {}
        topics: dict[str, str] = {}
        for agent, site in SITES.items():
            topics[agent] = f"test/{uuid.uuid4().hex[:8]}/frames"
            pipeline = {
                "name": "p",
                "module": MODULE,
                "stream": "out",
                "source": {"kind": "mqtt", "topic": topics[agent], "options": {"buffer": 100000}},
            }
            proc = agent_processes(
                [
                    *("--id", agent, "--site", site, "--broker", mosquitto.url),
                    *(
                        "--cache-dir",
                        str(tmp_path / agent),
                        "--public-key",
                        signer.public_key_b64(),
                    ),
                    *("--heartbeat-period-s", "0.5", "--log-level", "INFO"),
                ],
                tmp_path / f"{agent}.log",
                env={"EDGE_AGENT_PIPELINES": json.dumps([pipeline])},
            ).start()
            assert proc.proc is not None and cgroups[agent].add(proc.proc.pid)
            agents[agent] = proc

        def log() -> str:
            return "\n".join(f"--- {a}\n{p.log()[-2000:]}" for a, p in agents.items())

        for agent in SITES:
            edge.wait_for_agent(agent, timeout_s=30)
        artifact = ModelArtifact.from_file(
            build_indexed_cnn(tmp_path / "cnn.onnx"), model=MODULE, version="v1"
        )
        for agent in SITES:
            installer.install(agent, MODULE, artifact, 60.0)
        route = manager.deploy(SPEC, artifact, tier="fog")
        (endpoint,) = route.endpoints
        assert isinstance(endpoint, ReplicaEndpoint)
        stats = HttpProbe().stats(endpoint, 5.0)
        assert stats is not None and stats["mqtt"]["subscribed"], stats
        offloaded = f"offload:{offload_target(endpoint)}"

        probe = RayNodeProbe(ray_backend.nodes)
        undo.append(probe.close)

        def signature(module: str) -> Any:
            current = manager.routes.get(module)
            return current.signature if current is not None else None

        monitors = Monitors(
            node_probe=probe,
            agents=edge,
            rtt=PathProbe(manager.routes, node_probe=probe, edge=edge),
            canary=EdgeCanary(edge, signature),
            host_cpu=False,
        )
        undo.append(edge.on_event(monitors.observe_event))
        store = PlacementStore(tmp_path / "placement.db")
        undo.append(store.close)
        executor = MigrationExecutor(manager, store, requests=monitors, installer=installer)
        controller = PlacementController(
            manager,
            monitors,
            executor,
            store,
            settings=ControllerSettings(
                tick_s=0.1,
                period_s=600.0,
                window_s=2.0,
                min_samples=10,
                dwell_s=DWELL_S,
                poll_s=0.5,
                canary_period_s=0.3,
                saturation_ttl_s=120.0,
            ),
        )
        undo.append(controller.close)
        controller.pin(MODULE, tier="fog")  # the replicas the sites offload to stay put
        controller.track_pipelines(MODULE, SITES, rate_per_s=RATE_HZ)

        with requester(mosquitto.host, mosquitto.port) as r:
            for site in SITES.values():
                r.subscribe(T.events(site, "out"))
            feeder = Feeder(r.client, topics).start()
            try:
                wait(lambda: all(len(events(r, a)) >= 30 for a in SITES), 60, "local outputs", log)
                controller.start()
                time.sleep(4.0)
                assert controller.history() == [], controller.history()
                calm_p95 = {a: _p95(events(r, a)[-40:]) for a in SITES}
                assert all(p < SLO_MS for p in calm_p95.values()), calm_p95

                # ---- a runaway job on agent 1's device: its site offloads, agent 2 stays
                hog.start()
                t_hog = time.monotonic()
                wait(
                    lambda: route_of(controller, HOG) == offloaded,
                    60,
                    "agent 1's site offloaded",
                    log,
                )
                t_off = time.monotonic()
                [to_fog] = controller.history()
                assert to_fog.status == "done" and to_fog.site == SITES[HOG], to_fog
                assert to_fog.from_node == HOG and to_fog.to_node == endpoint.node_id
                assert to_fog.to_tier == "fog" and "observed p95" in to_fog.reason
                assert route_of(controller, CALM) == "local"
                time.sleep(4.0)
                # Past the backlog the hog left queued on the agent (those wait their turn).
                hogged_offload = [e for e in events(r, HOG) if e.route == offloaded][-20:]
                offload_p95 = _p95(hogged_offload)
                hogged_local = [e for e in events(r, HOG) if e.route == "local"]
                local_p95 = _p95(hogged_local[-20:])

                # ---- the hog stops: canaries see it, and after the dwell the site returns
                hog.stop()
                t_stop = time.monotonic()
                wait(
                    lambda: route_of(controller, HOG) == "local",
                    90,
                    "agent 1's site back on the agent",
                    log,
                )
                t_back = time.monotonic()
                # Newest first: the return is the move after the one to fog. A busy CI
                # host may move the site again once it is back (its own slow samples);
                # such later moves are of the hogged site only (checked below).
                *_later, back, first = controller.history()
                assert first == to_fog, controller.history()
                assert back.status == "done" and back.site == SITES[HOG] and back.to_node == HOG
                assert t_back - t_off >= DWELL_S - 0.5
                assert route_of(controller, CALM) == "local"
                assert all(m.site == SITES[HOG] for m in controller.history())
                n_hog = len(events(r, HOG))
                time.sleep(2.0)
                back_p95 = _p95(events(r, HOG)[n_hog:])
            finally:
                feeder.stop()
            wait(
                lambda: all(len(events(r, a)) >= feeder.sent[a] for a in SITES),
                30,
                "the last outputs",
                log,
            )
            for agent in SITES:
                evs = sorted(events(r, agent), key=lambda e: e.seq)
                inputs = [round(float(e.outputs["idx"].data[0])) for e in evs]
                assert inputs == list(range(feeder.sent[agent])), (
                    f"{agent}: an input was lost, repeated or reordered"
                )
            hog_evs = sorted(events(r, HOG), key=lambda e: e.seq)
            phases = [
                e.route for i, e in enumerate(hog_evs) if i == 0 or e.route != hog_evs[i - 1].route
            ]
            assert phases == ["local", offloaded, "local"], phases
            assert {e.route for e in events(r, CALM)} == {"local"}
        assert back_p95 < SLO_MS, back_p95
        print(
            f"\nhog -> offloaded: {t_off - t_hog:.2f} s (local p95 under the hog "
            f"{local_p95:.0f} ms, offloaded p95 {offload_p95:.0f} ms, SLO {SLO_MS:g} ms); "
            f"hog stopped -> back local: {t_back - t_stop:.2f} s (p95 {back_p95:.1f} ms); "
            f"calm p95 {calm_p95[CALM]:.1f} ms; inputs {feeder.sent}, none lost"
        )
    finally:
        for action in reversed(undo):
            try:
                action()
            except Exception as exc:  # stop the rest anyway
                print(f"stopping failed: {exc!r}", flush=True)


def route_of(controller: PlacementController, agent: str) -> str | None:
    """The site's route as the controller describes it (``local``, ``offload:<replica>``)."""
    routes = [p["route"] for p in controller.describe()["pipelines"] if p["agent"] == agent]
    return routes[0] if routes else None


def _p95(evs: list[Event]) -> float:
    ms = sorted(e.latency_ms for e in evs if e.latency_ms is not None)
    return ms[max(0, int(0.95 * len(ms)) - 1)] if ms else float("nan")
