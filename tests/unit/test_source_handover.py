"""Handing a pipeline's source to a replica (route ``remote``): the agent's split of
frames, the replica's leases, the control plane's handover and the installer's
switches; with fakes (no broker)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._pipelines import Pipeline
from edge_agent._sources import Sample
from edge_agent.protocol import Event, PipelineSpec, Route, SourceSpec, Tensor, encode_frame
from mesh.core._errors import MeshError
from mesh.edge._handover import SourceHandover
from mesh.edge._install import EdgeInstaller
from mesh.serving._contract import DeployError, ReplicaMqtt
from mesh.serving._leases import Lease, LeaseList, PipelineSource, lease_topic
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._pipelines import ReplicaPipelines
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.support.agent_fixtures import build_tiny_model
from tests.unit.test_offload_routes import FakeAgentGateway, FakeHost, artifact

# ---------------------------------------------------------------- the agent's side


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def frame(at: float) -> Sample:
    x = Tensor.from_numpy("x", np.full((1, 1), at, np.float32))
    return Sample((x,), time.time(), captured_ts=at)


def pipeline(host: FakeHost) -> Pipeline:
    spec = PipelineSpec(name="p", module="m", source=SourceSpec(kind="mqtt", topic="in"))
    return Pipeline(spec, source=None, host=host, topic="ev")  # type: ignore[arg-type]


def test_a_remote_route_splits_frames_by_capture_time_and_gives_held_ones_back() -> None:
    host = FakeHost(Route())
    pipe = pipeline(host)
    pipe._process(frame(1.0))
    host.route = Route(mode="remote", target="r1", epoch=2, since_ts=3.0)
    pipe._process(frame(2.0))  # captured before the split: still the agent's
    pipe._process(frame(3.0))  # the replica's from here on: held, not run
    pipe._process(frame(4.0))
    pipe._process(frame(5.0))
    assert host.calls == ["local", "local"] and pipe.handed_over == 3
    assert "ev" in host.watching  # the replica's answers come on the pipeline's topic
    host.answer("r1", 3.0, 4.0)

    # Back from 5.0: the agent runs 5.0 (held) on; 4.5, captured before the split
    # and still in flight, is the replica's, but it never answers it: after the
    # grace period it runs here, late. Nothing runs twice, nothing is lost.
    host.route = Route(mode="local", epoch=3, since_ts=5.0)
    pipe._process(frame(4.5))
    pipe._process(frame(6.0))  # (the grace period passed: test clocks are in 1970)
    events = [json.loads(e) for e in host.events]
    assert [e["source_ts"] for e in events] == [1.0, 2.0, 5.0, 4.5, 6.0]
    assert [e["outputs"]["y"]["data"] for e in events] == [[1.0]] * 5
    assert host.watching == {}


def test_frames_a_dead_replica_did_not_answer_run_on_the_agent_late() -> None:
    host = FakeHost(Route(mode="remote", target="r1", epoch=2, since_ts=3.0))
    pipe = pipeline(host)
    for at in (3.0, 4.0, 5.0):
        pipe._process(frame(at))
    host.answer("r1", 3.0)  # then its node died
    # Moved to r2 from 6.0: the agent runs what r1 left, at once.
    host.route = Route(mode="remote", target="r2", epoch=3, since_ts=6.0)
    pipe._process(frame(6.0))
    assert [json.loads(e)["source_ts"] for e in host.events] == [4.0, 5.0]
    host.answer("r2", 6.0)
    # Back to local from 7.0: r2 answered 6.0; nothing runs twice.
    host.route = Route(mode="local", epoch=4, since_ts=7.0)
    pipe._process(frame(7.0))
    assert [json.loads(e)["source_ts"] for e in host.events] == [4.0, 5.0, 7.0]
    assert host.calls == ["local"] * 3


def test_a_frame_the_replica_skipped_runs_on_the_agent_while_it_stays_remote() -> None:
    host = FakeHost(Route(mode="remote", target="r1", epoch=2, since_ts=3.0))
    pipe = pipeline(host)
    for at in (3.0, 4.0, 5.0):
        pipe._process(frame(at))
    pipe._process(frame(6.0))
    assert host.events == []  # no answers seen yet: nothing to judge by
    # r1 answered 3.0 and 5.0 but not 4.0 (its queue was full): 4.0 runs here.
    host.answer("r1", 3.0, 5.0)
    pipe._process(frame(7.0))
    assert [json.loads(e)["source_ts"] for e in host.events] == [4.0]
    host.answer("r1", 6.0, 7.0)
    pipe._process(frame(8.0))
    assert len(host.events) == 1 and host.calls == ["local"]


def test_a_remote_only_module_runs_pre_split_frames_on_the_replica() -> None:
    host = FakeHost(Route(mode="remote", target="r1", epoch=1, since_ts=10.0), local=False)
    pipe = pipeline(host)
    pipe._process(frame(9.0))
    pipe._process(frame(11.0))
    assert host.calls == ["offload:r1"] and pipe.handed_over == 1


def test_route_remote_needs_a_target() -> None:
    with pytest.raises(ValueError, match="route mode 'remote' needs a target"):
        Route(mode="remote")


# ---------------------------------------------------------------- the replica's side


class FakeResponder:
    replica_id = "m-v1-abc"

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self.frames: list[Callable[[dict[str, Any] | None, str | None], None]] = []

    def mqtt_subscribe(self, topic: str) -> int | None:
        self.subscribed.append(topic)
        return len(self.subscribed)

    def mqtt_unsubscribe(self, topic: str) -> None:
        self.unsubscribed.append(topic)

    def mqtt_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))

    def submit_frame(self, tensors: Sequence[Tensor], done: Any) -> None:
        self.frames.append(done)


def camera(at: float | None) -> bytes:
    header = {"kind": "frame"} if at is None else {"kind": "frame", "ts": at}
    return encode_frame(header, [Tensor.from_numpy("x", np.zeros((1, 4), np.float32))])


LEASE = Lease(
    site="B1", agent="j-B1", topic="mesh/v1/sensors/B1/camera", stream="counts", since_ts=5.0
)


def test_replica_follows_its_lease_list_and_acknowledges_once_subscribed() -> None:
    host = FakeResponder()
    pipes = ReplicaPipelines(host, prefix="mesh/v1", model="m", version="v1")
    pipes.on_connected()
    assert host.subscribed == [pipes.control_topic] == [lease_topic("mesh/v1", "m", "m-v1-abc")]

    pipes.on_message(pipes.control_topic, LeaseList("m-v1-abc", 7, (LEASE,)).to_json())
    assert host.subscribed[-1] == LEASE.topic and not host.published  # no SUBACK yet
    pipes.on_subscribed(2)
    topic, payload, retained = host.published[-1]
    assert topic.endswith("/pipelines/m-v1-abc/observed") and retained
    assert json.loads(payload)["version"] == 7

    # Frames the lease covers (by capture time) run; others do not.
    pipes.on_message(LEASE.topic, camera(4.9))
    pipes.on_message(LEASE.topic, camera(5.0))
    assert len(host.frames) == 1
    host.frames[0]({"y": np.ones((1, 4), np.float32)}, None)
    topic, payload, _ = host.published[-1]
    event = Event.model_validate_json(payload)
    assert topic == "mesh/v1/events/B1/counts" and event.route == "remote:m-v1-abc"
    assert (event.agent, event.site, event.seq, event.module) == ("j-B1", "B1", 1, "m")
    assert event.latency_ms is not None and event.source_ts == 5.0

    # An older or broken list changes nothing; a newer one ends the lease.
    pipes.on_message(pipes.control_topic, LeaseList("m-v1-abc", 6).to_json())
    pipes.on_message(pipes.control_topic, b'{"kind": "replica_pipelines"}')
    assert pipes.describe()["sites"] == ["B1"]
    pipes.on_message(pipes.control_topic, b"")
    assert host.unsubscribed == [LEASE.topic] and pipes.describe()["sites"] == []


def test_lease_lists_parse_with_clear_errors() -> None:
    doc = LeaseList("r", 3, (LEASE,))
    assert LeaseList.from_json(doc.to_json()) == doc
    with pytest.raises(ValueError, match=r"pipelines\[0\]: needs site"):
        LeaseList.from_json(
            b'{"schema_version":1,"kind":"replica_pipelines","version":1,"pipelines":[{}]}'
        )
    with pytest.raises(ValueError, match="schema_version 2, expected 1"):
        LeaseList.from_json(b'{"schema_version":2,"kind":"replica_pipelines","version":1}')


def test_a_real_responder_runs_handed_over_frames(tiny: Path) -> None:
    runner = ModelRunner(tiny, cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id="m-v1-abc")
    app.warmup()
    sent: list[tuple[str, bytes]] = []
    got = threading.Event()

    def publish(topic: str, payload: bytes, _corr: bytes | None) -> None:
        sent.append((topic, payload))
        if "/events/" in topic:
            got.set()

    responder = MqttResponder(app, ReplicaMqtt("mqtt://127.0.0.1:1"), publish=publish)
    try:
        pipes = responder.pipelines
        pipes.on_message(pipes.control_topic, LeaseList("m-v1-abc", 1, (LEASE,)).to_json())
        pipes.on_message(LEASE.topic, camera(time.time()))
        assert got.wait(5.0)
        _, payload = next(s for s in sent if "/events/" in s[0])
        event = Event.model_validate_json(payload)
        assert event.outputs["y"].shape == [1, 4] and event.route == "remote:m-v1-abc"
        assert responder.describe()["pipelines"]["events"] == 1
    finally:
        responder.stop(timeout_s=2.0)
        app.close()


# ---------------------------------------------------------------- the control plane's side


class FakeBus:
    """The edge gateway's publish/subscribe, with a replica that acknowledges (or not)."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.published: list[tuple[str, bytes, bool]] = []
        self.handler: Callable[[str, bytes], None] | None = None
        self.lists: Callable[[str, bytes], None] | None = None
        self.prefix = "mesh/v1"

    def subscribe(self, pattern: str, handler: Any, *, timeout_s: float = 5.0) -> Any:
        if pattern == "mesh/v1/modules/+/pipelines/+":
            self.lists = handler  # the broker's retained lists arrive here
        else:
            assert pattern == "mesh/v1/modules/+/pipelines/+/observed"
            self.handler = handler
        return lambda: None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))
        if self.answer and payload and self.handler is not None:
            version = json.loads(payload)["version"]
            self.handler(f"{topic}/observed", json.dumps({"version": version}).encode())

    def leases(self) -> list[Lease]:
        return list(LeaseList.from_json(self.published[-1][1]).leases)


def test_handover_assigns_when_the_replica_listens_and_releases_at_the_split() -> None:
    now = [100.0]
    bus = FakeBus()
    handover = SourceHandover(bus, clock=lambda: now[0])
    split = handover.assign("m", "r1", Lease(**{**_lease_args(), "since_ts": 100.3}), 1.0)
    assert split == 100.3 and bus.published[-1][2]  # retained
    assert bus.leases()[0].since_ts == 100.3

    now[0] = 110.0
    handover.release("m", "r1", "B1", "counts", 110.3)
    assert bus.leases()[0].until_ts == 110.3
    now[0] = 110.3 + 31.0  # long past: the next list leaves it out
    other = Lease(**{**_lease_args(), "site": "C2", "since_ts": 141.6})
    handover.assign("m", "r1", other, 1.0)
    assert [lease.site for lease in bus.leases()] == ["C2"]


def test_handover_times_out_and_withdraws_the_lease() -> None:
    bus = FakeBus(answer=False)
    handover = SourceHandover(bus)
    lease = Lease(**{**_lease_args(), "since_ts": time.time() + 0.3})
    with pytest.raises(MeshError, match="did not take the source of B1 within 0.1 s"):
        handover.assign("m", "r1", lease, 0.1)
    (withdrawn,) = bus.leases()
    assert withdrawn.until_ts == withdrawn.since_ts  # covers no frame


def test_lease_lists_left_by_a_crashed_control_plane_are_cleared() -> None:
    bus = FakeBus()
    handover = SourceHandover(bus)
    assert bus.lists is not None
    stale = lease_topic("mesh/v1", "m", "r-old")
    bus.lists(stale, LeaseList("r-old", 7, (LEASE,)).to_json())  # retained, from before
    assert bus.published == [(stale, b"", True), (f"{stale}/observed", b"", True)]
    assert handover.swept == 1
    bus.published.clear()
    handover.assign("m", "r1", Lease(**{**_lease_args(), "since_ts": time.time() + 0.3}), 1.0)
    ours = bus.published[-1]
    bus.lists(ours[0], ours[1])  # the broker echoes our own list: it stays
    bus.lists(stale, b"")  # and the cleared one comes back empty: nothing to do
    assert bus.published[-1] == ours and handover.swept == 1


def _lease_args() -> dict[str, Any]:
    return {k: getattr(LEASE, k) for k in ("site", "agent", "topic", "stream", "since_ts")}


def test_installer_hands_the_source_over_and_back(tmp_path: Path) -> None:
    from mesh.edge._artifact_api import UrlSigner
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore

    edge, bus = FakeAgentGateway(), FakeBus()
    installer = EdgeInstaller(
        edge,  # type: ignore[arg-type]
        store=ArtifactStore(tmp_path / "artifacts"),
        signer=ArtifactSigner.generate(),
        url_signer=UrlSigner(b"u" * 32),
        base_url="http://cp:8471",
        handover=SourceHandover(bus),
    )
    installer.install("j-B1", "counter", artifact("v1"), 5.0)
    source = PipelineSource("B1", "mesh/v1/sensors/B1/camera", "counts")
    with pytest.raises(DeployError, match="cannot be remote: no source"):
        installer.set_route("j-B1", "counter", "remote", "r1", 5.0)

    installer.set_route("j-B1", "counter", "remote", "r1", 5.0, source=source)
    route = edge.routes["counter"]
    (lease,) = bus.leases()
    assert route.mode == "remote" and route.target == "r1"
    assert route.since_ts == lease.since_ts and lease.agent == "j-B1" and lease.until_ts is None

    installer.set_route("j-B1", "counter", "local", None, 5.0)
    route = edge.routes["counter"]
    (lease,) = bus.leases()
    assert route.mode == "local" and route.since_ts == lease.until_ts is not None
    assert route.since_ts > lease.since_ts

    # Offloading without a source hand-over leaves the leases alone.
    published = len(bus.published)
    installer.set_route("j-B1", "counter", "offload", "r1", 5.0)
    assert edge.routes["counter"].since_ts is None and len(bus.published) == published
