"""An edge agent's pipeline switched to a Ray replica and back, over a real Mosquitto.

Real Ray (the session's cloud + fog cluster), a real Mosquitto, a real agent process:
the agent runs a pipeline with module ``tiny`` locally -> a replica of ``tiny`` starts
on the fog node, answering MQTT -> ``set_route`` to offload -> the pipeline's outputs
keep coming, now computed by the replica (the events say so, and the replica counts
them) -> ``set_route`` back to local; every pipeline input gives exactly one output
across both switches. Also: the round trip agent-style client -> replica over
Mosquitto, against the replica's own HTTP path.
"""

from __future__ import annotations

import http.client
import json
import statistics
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
from mesh.edge._artifact_api import UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings
from mesh.edge._install import EdgeInstaller, offload_target
from mesh.edge.broker._broker import MosquittoBroker
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.sdk import ModuleSpec
from mesh.serving._contract import ModelArtifact, ReplicaMqtt
from mesh.serving._manager import HttpProbe, ServingManager
from mesh.serving._oip import HEADER_LENGTH, decode_response, encode_request
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import AgentProcess, build_tiny_model, requester

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

# Shared fixtures, bound here so pytest finds them.
mosquitto = brokers.mosquitto
agent_processes = af.agent_processes
pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.timeout(300)]

T = Topics()
AGENT = "cam-offload"
SITE = "int-9"
MODULE = "tiny"
RATE_HZ = 40.0

SPEC = ModuleSpec(
    name=MODULE,
    model=MODULE,
    qos=QoS(p95_latency_ms=50),
    tiers=("edge", "fog", "cloud"),
    resources=Resources(cpus=0.25),
)


def wait(cond: Callable[[], object], timeout_s: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{log()[-4000:]}")


def frame(i: int) -> bytes:
    return encode_frame({}, [Tensor.from_numpy("x", np.full((1, 4), float(i), np.float32))])


class Feeder:
    """Publishes input ``i`` (a row of i's) to the pipeline's topic at RATE_HZ, in order."""

    def __init__(self, client: Any, topic: str) -> None:
        self.client, self.topic = client, topic
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.publish(self.topic, frame(self.sent), qos=1).wait_for_publish(5)
            self.sent += 1
            self._stop.wait(1 / RATE_HZ)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def events(r: Any) -> list[Event]:
    topic = T.events(SITE, "counts")
    return [Event.model_validate_json(p) for t, p in list(r.events) if t == topic]


def input_of(event: Event) -> int:
    y = event.outputs["y"].data
    assert len(set(y)) == 1, y
    return round(float(y[0]) / 2.0)  # the model doubles its input


def http_round_trips(endpoint: ReplicaEndpoint, n: int) -> list[float]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=10)
    body, length = encode_request({"x": np.full((1, 4), 1.0, np.float32)})
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(length)}
    if endpoint.authorization:  # the replica's key, as the gateway sends it
        headers["Authorization"] = endpoint.authorization.decode()
    out = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.request("POST", f"/v2/models/{MODULE}/infer", body, headers)
            response = conn.getresponse()
            data = response.read()
            out.append((time.perf_counter() - started) * 1e3)
            assert response.status == 200, data
        raw = response.getheader(HEADER_LENGTH)
        assert np.allclose(decode_response(data, int(raw) if raw else None)["y"], 2.0)
    finally:
        conn.close()
    return out


class OneAgent:
    """Only AGENT is enrolled (its downloads come with URLs pre-signed for it)."""

    def agent_for_token(self, token: str) -> str | None:
        return None

    def is_enrolled(self, agent_id: str) -> bool:
        return agent_id == AGENT


@pytest.fixture
def control_plane(
    tmp_path: Path, mosquitto: MosquittoBroker, ray_backend: RayBackend
) -> Iterator[tuple[EdgeBus, EdgeInstaller, ServingManager, str]]:
    from mesh.ray._replicas import RayReplicaLauncher

    settings = EdgeSettings(data_dir=tmp_path / "cp", broker_url=mosquitto.url)
    edge = EdgeBus(mosquitto.url, keepalive_s=5).start()
    artifacts = serve_in_thread(create_artifact_app(settings, auth=OneAgent()), port=0)
    signer = ArtifactSigner.load_or_create(settings.data_dir)
    installer = EdgeInstaller(
        edge,
        store=ArtifactStore(settings.data_dir / "artifacts"),
        signer=signer,
        url_signer=UrlSigner.load_or_create(settings.data_dir),
        base_url=artifacts.url,
        module_options={"warmup_runs": 1},
    )
    manager = ServingManager(
        RouteTable(),
        RayReplicaLauncher(nodes=ray_backend.nodes, mqtt=ReplicaMqtt(mosquitto.url)),
        period_s=0.25,
        start_timeout_s=120,
    ).start()
    try:
        yield edge, installer, manager, signer.public_key_b64()
    finally:
        manager.close()
        artifacts.stop()
        edge.stop()


def pipeline_agent(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    edge: EdgeBus,
    public_key: str,
    agent_processes: Callable[..., AgentProcess],
) -> tuple[str, Callable[[], str]]:
    """AGENT running pipeline ``count`` of MODULE on a fresh source topic; (topic, its log)."""
    source = f"test/{uuid.uuid4().hex[:8]}/frames"
    pipeline = {
        "name": "count",
        "module": MODULE,
        "stream": "counts",
        "source": {"kind": "mqtt", "topic": source, "options": {"buffer": 100000}},
    }
    agent = agent_processes(
        [
            *("--id", AGENT, "--site", SITE, "--broker", mosquitto.url),
            *("--cache-dir", str(tmp_path / "cache"), "--public-key", public_key),
            *("--heartbeat-period-s", "1", "--log-level", "INFO"),
        ],
        tmp_path / "agent.log",
        env={"EDGE_AGENT_PIPELINES": json.dumps([pipeline])},
    ).start()
    edge.wait_for_agent(AGENT, timeout_s=30)
    return source, agent.log


def wait_pipeline(edge: EdgeBus, log: Callable[[], str]) -> None:
    """Until AGENT reports its pipeline running."""
    wait(
        lambda: (v := edge.agent(AGENT)) and v.observed and v.observed.pipelines == ["count"],
        15,
        "the pipeline",
        log,
    )


def test_pipeline_offloads_to_a_replica_and_back_without_losing_inputs(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    control_plane: tuple[EdgeBus, EdgeInstaller, ServingManager, str],
    ray_backend: RayBackend,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    edge, installer, manager, public_key = control_plane
    source, log = pipeline_agent(tmp_path, mosquitto, edge, public_key, agent_processes)
    artifact = ModelArtifact.from_file(
        build_tiny_model(tmp_path / "tiny.onnx", scale=2.0), model=MODULE, version="v1"
    )
    installer.install(AGENT, MODULE, artifact, 60.0)

    with requester(mosquitto.host, mosquitto.port) as r:
        r.subscribe(T.events(SITE, "counts"))
        wait_pipeline(edge, log)
        feeder = Feeder(r.client, source).start()
        try:
            wait(lambda: len(events(r)) >= 20, 30, "local pipeline outputs", log)

            # A replica of the module on the fog node, answering MQTT on its replica id.
            route = manager.deploy(SPEC, artifact, tier="fog")
            (endpoint,) = route.endpoints
            assert isinstance(endpoint, ReplicaEndpoint)
            fog = {n.node_id for n in ray_backend.nodes() if n.alive and n.tier == "fog"}
            assert endpoint.node_id in fog
            stats = HttpProbe().stats(endpoint, 5.0)
            assert stats is not None and stats["mqtt"]["subscribed"], stats
            target = offload_target(endpoint)
            assert stats["mqtt"]["topic"] == T.infer(MODULE, target)

            assert installer.set_route(AGENT, MODULE, "offload", target, 30.0) == 1
            offloaded = f"offload:{target}"
            wait(
                lambda: sum(e.route == offloaded for e in events(r)) >= 40,
                30,
                "outputs computed by the replica",
                log,
            )
            stats = HttpProbe().stats(endpoint, 5.0)
            assert stats is not None and stats["mqtt"]["requests"] >= 40, stats

            assert installer.set_route(AGENT, MODULE, "local", None, 30.0) == 2
            n = len(events(r))
            wait(
                lambda: sum(e.route == "local" for e in events(r)[n:]) >= 20,
                30,
                "local outputs again",
                log,
            )
        finally:
            feeder.stop()
        wait(lambda: len(events(r)) >= feeder.sent, 30, "the last outputs", log)

        evs = sorted(events(r), key=lambda e: e.seq)
        inputs = [input_of(e) for e in evs]
        assert inputs == list(range(feeder.sent)), "an input was lost, repeated or reordered"
        # Local, then the replica, then local again: one switch each way.
        phases = [e.route for i, e in enumerate(evs) if i == 0 or e.route != evs[i - 1].route]
        assert phases == ["local", offloaded, "local"], phases
        by_replica = sum(e.route == offloaded for e in evs)
        stats = HttpProbe().stats(endpoint, 5.0)
        assert stats is not None and stats["mqtt"]["requests"] == by_replica
        assert stats["mqtt"]["errors"] == 0

        # The round trip an agent pays to the replica over Mosquitto, against HTTP.
        x = [Tensor.from_numpy("x", np.full((1, 4), 1.0, np.float32))]
        for _ in range(20):
            r.infer(MODULE, target, x)
        mqtt_ms = []
        for _ in range(300):
            started = time.perf_counter()
            reply, (y,) = r.infer(MODULE, target, x)
            mqtt_ms.append((time.perf_counter() - started) * 1e3)
            assert reply.ok and reply.node == target
        http_ms = http_round_trips(endpoint, 320)[20:]
        p50_mqtt, p50_http = statistics.median(mqtt_ms), statistics.median(http_ms)
        print(f"\nround trip p50: MQTT via Mosquitto {p50_mqtt:.2f} ms, HTTP {p50_http:.2f} ms")
        assert np.allclose(y.to_numpy(), 2.0)
        assert p50_mqtt < 25.0  # Nagle alone would make it ~40-90 ms

    manager.undeploy(MODULE)
    assert "Traceback" not in log(), log()[-4000:]


def test_a_redeploy_moves_the_offloaded_pipeline_before_the_old_replica_stops(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    control_plane: tuple[EdgeBus, EdgeInstaller, ServingManager, str],
    agent_processes: Callable[..., AgentProcess],
) -> None:
    # What the placement controller does at a promotion (mesh.control._pipeline_follow):
    # the new version's replica serves, the agent's route moves to it, then the old stops.
    edge, installer, manager, public_key = control_plane
    source, log = pipeline_agent(tmp_path, mosquitto, edge, public_key, agent_processes)
    v1, v2 = (
        ModelArtifact.from_file(
            build_tiny_model(tmp_path / f"tiny-{v}.onnx", scale=2.0), model=MODULE, version=v
        )
        for v in ("v1", "v2")
    )
    installer.install(AGENT, MODULE, v1, 60.0)
    (old,) = manager.deploy(SPEC, v1, tier="fog").endpoints
    assert isinstance(old, ReplicaEndpoint)
    followed: list[tuple[str, bool]] = []

    def follow(module: str) -> None:
        route = manager.routes.get(module)
        assert route is not None
        (new,) = route.endpoints
        assert isinstance(new, ReplicaEndpoint)
        installer.set_route(AGENT, MODULE, "offload", offload_target(new), 30.0)
        followed.append((new.replica_id, HttpProbe().stats(old, 5.0) is not None))

    manager.on_replacing(follow)
    with requester(mosquitto.host, mosquitto.port) as r:
        r.subscribe(T.events(SITE, "counts"))
        wait_pipeline(edge, log)
        feeder = Feeder(r.client, source).start()
        try:
            wait(lambda: len(events(r)) >= 20, 30, "local pipeline outputs", log)
            installer.set_route(AGENT, MODULE, "offload", offload_target(old), 30.0)
            first = f"offload:{offload_target(old)}"
            wait(lambda: sum(e.route == first for e in events(r)) >= 20, 30, "via v1", log)
            (new,) = manager.deploy(SPEC, v2, tier="fog").endpoints
            assert isinstance(new, ReplicaEndpoint) and new.replica_id != old.replica_id
            second = f"offload:{offload_target(new)}"
            wait(lambda: sum(e.route == second for e in events(r)) >= 20, 30, "via v2", log)
        finally:
            feeder.stop()
        wait(lambda: len(events(r)) >= feeder.sent, 30, "the last outputs", log)
        assert followed == [(new.replica_id, True)]  # moved while the old replica answered
        assert HttpProbe().stats(old, 2.0) is None  # then it stopped
        evs = sorted(events(r), key=lambda e: e.seq)
        inputs = [input_of(e) for e in evs]
        assert inputs == list(range(feeder.sent)), "an input was lost, repeated or reordered"
        phases = [e.route for i, e in enumerate(evs) if i == 0 or e.route != evs[i - 1].route]
        assert phases == ["local", first, second], phases  # never back to local between
    manager.undeploy(MODULE)
    assert "Traceback" not in log(), log()[-4000:]
