"""Route switches for agents' pipelines, the replica's MQTT responder, and retries on the
other side; with fakes (no broker, no Ray)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._pipelines import Pipeline
from edge_agent._runtime import JobResult
from edge_agent._sources import Sample
from edge_agent.protocol import (
    DesiredState,
    ErrorCode,
    InferReply,
    InferRequest,
    InstalledModule,
    ModuleError,
    ObservedState,
    PipelineSpec,
    ProtocolError,
    Route,
    SourceSpec,
    Tensor,
    decode_frame,
    encode_frame,
    parse_header,
)
from mesh.edge._install import EdgeInstaller, offload_target
from mesh.edge._records import EdgeRequestTimeoutError
from mesh.models._export import ModelSignature, TensorSpec
from mesh.serving._contract import DeployError, ModelArtifact, ReplicaMqtt
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.support.agent_fixtures import build_tiny_model

SIG = ModelSignature(
    inputs=(TensorSpec("x", "float32", ("N", 4)),),
    outputs=(TensorSpec("y", "float32", ("N", 4)),),
    opset=17,
)


def artifact(version: str) -> ModelArtifact:
    data = b"onnx-" + version.encode()
    return ModelArtifact("counter", version, hashlib.sha256(data).hexdigest(), data, SIG)


# ---------------------------------------------------------------- an agent behind a fake gateway


class FakeAgentGateway:
    """The part of EdgeBus the installer uses, with an agent that applies desired states
    as the real one does: modules with an artifact install, routes move to a newer epoch only.

    ``mode``: ``apply``, ``stale`` (acknowledges the version but keeps its routes) or
    ``silent`` (never answers: the wait times out).
    """

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.mode = "apply"
        self.published: list[DesiredState] = []
        self.observed: ObservedState | None = None
        self.routes: dict[str, Route] = {}
        self.view = SimpleNamespace(observed=None, desired_version=None)

    def agent(self, agent_id: str) -> Any:
        self.view.observed = self.observed
        return self.view

    def publish_desired(self, agent_id: str, desired: DesiredState) -> None:
        self.published.append(desired)

    def wait_for_observed(self, agent_id: str, version: int, *, timeout_s: float) -> Any:
        if self.mode == "silent":
            raise EdgeRequestTimeoutError(
                module="desired", node=agent_id, correlation_id=str(version), timeout_s=timeout_s
            )
        desired = self.published[-1]
        installed, errors = [], []
        for m in desired.modules:
            held = self.routes.get(m.name)
            if self.mode == "apply" and (held is None or m.route.epoch >= held.epoch):
                self.routes[m.name] = m.route
            route = self.routes.get(m.name, Route())
            if m.url is not None and m.version == "bad":
                errors.append(ModuleError(module=m.name, code="integrity", message="bad"))
                continue
            installed.append(
                InstalledModule(
                    name=m.name,
                    version=m.version,
                    route_mode=route.mode,
                    route_epoch=route.epoch,
                )
            )
        self.observed = ObservedState(
            agent=agent_id, version=version, installed=installed, errors=errors
        )
        return self.observed


@pytest.fixture
def edge() -> FakeAgentGateway:
    return FakeAgentGateway()


@pytest.fixture
def installer(tmp_path: Path, edge: FakeAgentGateway) -> EdgeInstaller:
    from mesh.edge._artifact_api import UrlSigner
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore

    return EdgeInstaller(
        edge,  # type: ignore[arg-type]
        store=ArtifactStore(tmp_path / "artifacts"),
        signer=ArtifactSigner.generate(),
        url_signer=UrlSigner(b"u" * 32),
        base_url="http://cp:8471",
    )


def module_of(desired: DesiredState, name: str) -> Any:
    return next(m for m in desired.modules if m.name == name)


def test_set_route_switches_with_the_next_epoch_and_keeps_the_artifact(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-1", "other", artifact("v1"), 5.0)
    local = module_of(edge.published[-1], "counter")
    assert local.route == Route()

    assert installer.set_route("cam-1", "counter", "offload", "counter-v1-abc", 5.0) == 1
    desired = edge.published[-1]
    entry = module_of(desired, "counter")
    assert entry.route.mode == "offload" and entry.route.target == "counter-v1-abc"
    assert entry.route.epoch == 1
    # Same modules, same artifact: only the route changed.
    assert [m.name for m in desired.modules] == ["counter", "other"]
    assert entry.model_copy(update={"route": Route()}) == local
    assert module_of(desired, "other").route == Route()
    assert desired.version > edge.published[-2].version

    assert installer.set_route("cam-1", "counter", "local", None, 5.0) == 2
    back = module_of(edge.published[-1], "counter").route
    assert (back.mode, back.target, back.epoch) == ("local", None, 2)

    # An install (a new version, another module) keeps the route it had on the agent.
    installer.set_route("cam-1", "counter", "offload", "counter-v2-def", 5.0)
    installer.install("cam-1", "counter", artifact("v2"), 5.0)
    kept = module_of(edge.published[-1], "counter")
    assert kept.version == "v2" and kept.route.target == "counter-v2-def"
    assert kept.route.epoch == 3 and edge.routes["counter"].epoch == 3


def test_set_route_epochs_are_per_agent_and_module_and_follow_the_agent(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-1", "other", artifact("v1"), 5.0)
    assert installer.set_route("cam-1", "counter", "offload", "r1", 5.0) == 1
    assert installer.set_route("cam-1", "other", "offload", "r2", 5.0) == 1
    assert installer.set_route("cam-1", "counter", "offload", "r3", 5.0) == 2
    # The agent already follows epoch 7 (e.g. set before the control plane restarted):
    # the next switch goes past it, or the agent would keep its route.
    edge.routes["counter"] = Route(mode="offload", target="old", epoch=7)
    edge.observed = ObservedState(
        agent="cam-1",
        version=99,
        installed=[InstalledModule(name="counter", version="v1", route_epoch=7)],
    )
    assert installer.set_route("cam-1", "counter", "local", None, 5.0) == 8
    assert edge.routes["counter"].mode == "local"


def test_set_route_failures_change_nothing_in_the_installer(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    edge.mode = "silent"
    with pytest.raises(DeployError, match="route of counter .*offload to r1"):
        installer.set_route("cam-1", "counter", "offload", "r1", 0.1)
    edge.mode = "stale"  # acknowledges the version, still on epoch 0
    with pytest.raises(DeployError, match="did not switch counter.*reports epoch 0"):
        installer.set_route("cam-1", "counter", "offload", "r1", 0.1)
    edge.mode = "apply"
    installer.install("cam-1", "other", artifact("v1"), 5.0)
    assert module_of(edge.published[-1], "counter").route == Route()  # nothing was kept
    assert installer.set_route("cam-1", "counter", "offload", "r1", 5.0) == 1

    published = len(edge.published)
    with pytest.raises(DeployError, match="needs a target"):
        installer.set_route("cam-1", "counter", "offload", None, 5.0)
    assert len(edge.published) == published  # refused before anything was sent


def test_a_remote_only_module_has_no_artifact_and_must_offload(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert installer.set_route("cam-1", "plates", "offload", "plates-v3-abc", 5.0) == 1
    entry = module_of(edge.published[-1], "plates")
    assert not entry.has_artifact and entry.version == "remote"
    assert entry.route.target == "plates-v3-abc"
    published = len(edge.published)
    with pytest.raises(DeployError, match="no artifact, so its route must offload"):
        installer.set_route("cam-1", "plates", "local", None, 5.0)
    assert len(edge.published) == published
    assert installer.set_route("cam-1", "plates", "offload", "plates-v4-def", 5.0) == 2
    assert [m.name for m in edge.published[-1].modules] == ["counter", "plates"]


def test_offload_target_is_the_replica_or_agent_id() -> None:
    assert offload_target(ReplicaEndpoint("m-v1-abc", "node", "10.0.0.1", 80, "v1")) == "m-v1-abc"
    assert offload_target(AgentEndpoint("cam-2", "v1")) == "cam-2"


# ---------------------------------------------------------------- the replica's responder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=3.0)


class Replies:
    """A fake broker side of the responder: replies by correlation id."""

    def __init__(self) -> None:
        self.got: dict[str, tuple[InferReply, list[Tensor], bytes | None]] = {}
        self.cond = threading.Condition()

    def publish(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        assert topic == "mesh/v1/replies/cam-1/offload"
        header, tensors = decode_frame(payload)
        reply = parse_header(header, InferReply)
        with self.cond:
            owned = [Tensor(t.name, t.dtype, t.shape, bytes(t.data)) for t in tensors]
            self.got[reply.correlation_id or ""] = (reply, owned, correlation_data)
            self.cond.notify_all()

    def wait(self, corr: str) -> tuple[InferReply, list[Tensor], bytes | None]:
        with self.cond:
            assert self.cond.wait_for(lambda: corr in self.got, 5.0), f"no reply {corr}"
            return self.got.pop(corr)


def request(corr: str, tensors: Sequence[Tensor], **header: Any) -> bytes:
    req = InferRequest(
        module=header.pop("module", "m"),
        reply_to="mesh/v1/replies/cam-1/offload",
        correlation_id=corr,
        **header,
    )
    return encode_frame(req, tensors)


def x(value: float, rows: int = 1) -> Tensor:
    return Tensor.from_numpy("anything", np.full((rows, 4), value, dtype=np.float32))


@pytest.fixture
def responder(tiny: Path) -> Any:
    runner = ModelRunner(tiny, cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id="m-v1-abc")
    app.warmup()
    replies = Replies()
    r = MqttResponder(app, ReplicaMqtt("mqtt://127.0.0.1:1"), publish=replies.publish)
    r.replies = replies  # type: ignore[attr-defined]
    yield r
    r.stop(timeout_s=2.0)
    app.close()


def test_responder_answers_like_an_agent(responder: Any) -> None:
    replies: Replies = responder.replies
    assert responder.topic == "mesh/v1/modules/m/infer/m-v1-abc"
    responder.handle(request("c1", [x(2.0)]), None, b"c1")
    reply, (y,), corr_data = replies.wait("c1")
    assert reply.ok and reply.node == "m-v1-abc" and reply.version == "v1"
    assert reply.module == "m" and corr_data == b"c1"
    assert y.name == "y" and np.allclose(y.to_numpy(), 6.0)
    assert reply.compute_ms is not None and reply.queue_ms is not None

    # Batches of rows, and the version pinned right.
    responder.handle(request("c2", [x(1.0, rows=3)], version="v1"))
    assert replies.wait("c2")[1][0].shape == (3, 4)
    # The reply topic and correlation id may come as MQTT 5 properties only.
    bare = encode_frame(InferRequest(module="m"), [x(1.0)])
    responder.handle(bare, "mesh/v1/replies/cam-1/offload", b"c3")
    assert replies.wait("c3")[0].ok
    stats = responder._app.describe()["mqtt"]
    assert stats["requests"] == 3 and stats["errors"] == 0 and stats["queue"] == 0
    assert responder._app.stats.window()["requests"] == 3  # counted in the replica's /stats


def test_responder_refuses_with_codes(responder: Any) -> None:
    replies: Replies = responder.replies
    responder.handle(request("bad", [Tensor.from_numpy("x", np.zeros((1, 3), np.float32))]))
    reply, tensors, _ = replies.wait("bad")
    assert reply.error is not None and reply.error.code == ErrorCode.BAD_INPUT and not tensors
    assert "shape [1, 3]" in reply.error.message and "x: FP32[-1,4]" in reply.error.message
    assert reply.error.expected is not None and reply.error.expected[0].name == "x"

    responder.handle(request("v9", [x(1.0)], version="v9"))
    err = replies.wait("v9")[0].error
    assert err is not None and err.code == ErrorCode.UNKNOWN_MODULE and "serving v1" in err.message

    responder.handle(request("other", [x(1.0)], module="n"))
    assert replies.wait("other")[0].error.code == ErrorCode.BAD_REQUEST  # type: ignore[union-attr]

    broken = request("broken", [x(1.0)])[:-3]
    responder.handle(broken)
    assert replies.wait("broken")[0].error.code == ErrorCode.MALFORMED  # type: ignore[union-attr]

    old = {"schema_version": 0, "kind": "infer_request", "module": "m"}
    responder.handle(encode_frame({**old, "reply_to": "mesh/v1/replies/cam-1/offload"}))
    # No correlation id to answer under, but the refusal still goes to reply_to.
    assert replies.wait("")[0].error.code == ErrorCode.SCHEMA_VERSION  # type: ignore[union-attr]
    assert responder.counts["errors"] == 5 and responder.counts["requests"] == 0


def test_responder_drops_duplicates_and_expired_requests(responder: Any) -> None:
    replies: Replies = responder.replies
    frame = request("once", [x(1.0)])
    responder.handle(frame)
    responder.handle(frame)  # a QoS 1 redelivery: same request id
    replies.wait("once")
    responder.handle(request("late", [x(1.0)], deadline_ts=time.time() - 1))
    responder.handle(request("after", [x(1.0)]))
    replies.wait("after")
    assert "late" not in replies.got
    assert responder.counts == {"requests": 2, "errors": 0, "expired": 1, "duplicates": 1}


def test_responder_stop_finishes_what_it_took(tiny: Path) -> None:
    runner = ModelRunner(tiny, cpus=0.5, warmup_runs=1, batching="on")
    app = ReplicaApp(runner, model="m", version="v1", replica_id="m-v1-abc")
    app.warmup()
    replies = Replies()
    gate = threading.Event()
    slow_run = runner.run

    def run(feeds: Any) -> Any:
        gate.wait(5.0)
        return slow_run(feeds)

    runner.run = run  # type: ignore[method-assign]
    r = MqttResponder(app, ReplicaMqtt("mqtt://127.0.0.1:1"), publish=replies.publish)
    for i in range(5):
        r.handle(request(f"q{i}", [x(float(i))]))
    assert app.stats.window()["in_flight"] == 5  # a draining replica waits for these
    threading.Timer(0.2, gate.set).start()
    r.stop(timeout_s=5.0)
    assert sorted(replies.got) == [f"q{i}" for i in range(5)]
    assert all(
        np.allclose(t[0].to_numpy(), 3.0 * int(c[1:])) for c, (_, t, _) in replies.got.items()
    )
    assert app.stats.window()["in_flight"] == 0
    r.handle(request("after-stop", [x(1.0)]))
    assert replies.wait("after-stop")[0].error.code == ErrorCode.NOT_READY  # type: ignore[union-attr]
    app.close()


def test_replica_mqtt_settings() -> None:
    cfg = ReplicaMqtt("mqtt://u:p%40ss@broker:1884", prefix="site/v1")
    assert cfg.endpoint() == ("broker", 1884, "u", "p@ss")
    assert ReplicaMqtt("mqtt://b", username="x", password="y").endpoint() == ("b", 1883, "x", "y")
    assert "p@ss" not in repr(ReplicaMqtt("mqtt://b", password="p@ss"))
    with pytest.raises(ValueError, match="expected mqtt://"):
        ReplicaMqtt("http://broker")


# ---------------------------------------------------------------- the agent's pipelines


class FakeHost:
    """A PipelineHost whose local and remote runs can fail, and whose route can change."""

    agent_id = "cam-1"
    site = "s1"

    def __init__(self, route: Route, *, local: bool = True) -> None:
        self.route: Route | None = route
        self.local = local
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.during: Route | None = None  # the route switches while the first call runs
        self.events: list[bytes] = []
        self.watching: dict[str, Any] = {}  # topic -> handler, while watched

    def _result(self, where: str) -> JobResult:
        self.calls.append(where)
        if self.during is not None:
            self.route, self.during = self.during, None
        if where in self.fail:
            return JobResult(None, ProtocolError(ErrorCode.OFFLOAD_FAILED, where), None, 0, 0)
        out = Tensor.from_numpy("y", np.ones((1, 1), np.float32))
        return JobResult([out], None, "v1", 0.0, 0.1)

    def route_for(self, module: str) -> Route | None:
        return self.route

    def run_local(self, module: str, tensors: Sequence[Tensor], timeout_s: float) -> JobResult:
        return self._result("local")

    def run_offload(self, module: str, route: Route, tensors: Sequence[Tensor]) -> JobResult:
        return self._result(f"offload:{route.target}")

    def has_local(self, module: str) -> bool:
        return self.local

    def emit(self, topic: str, make_payload: Any, qos: int) -> int:
        self.events.append(make_payload(len(self.events)))
        return len(self.events)

    def watch(self, topic: str, handler: Any) -> Any:
        self.watching[topic] = handler
        return lambda: self.watching.pop(topic)

    def answer(self, replica: str, *captured: float) -> None:
        """The replica's events for these frames, as the agent sees them on its topic."""
        for at in captured:
            event = {"stream": "p", "route": f"remote:{replica}", "source_ts": at}
            self.watching["ev"](json.dumps(event).encode())


def run_sample(host: FakeHost) -> Pipeline:
    spec = PipelineSpec(name="p", module="m", source=SourceSpec(kind="mqtt", topic="in"))
    pipe = Pipeline(spec, source=None, host=host, topic="ev")  # type: ignore[arg-type]
    pipe._process(Sample((Tensor.from_numpy("x", np.ones((1, 1), np.float32)),), time.time()))
    return pipe


OFFLOAD_R1 = Route(mode="offload", target="r1", epoch=1)


def test_a_failed_offload_runs_locally_once() -> None:
    host = FakeHost(OFFLOAD_R1)
    host.fail = {"offload:r1"}
    pipe = run_sample(host)
    assert host.calls == ["offload:r1", "local"] and pipe.processed == 1 and pipe.retried == 1
    assert b'"route":"local"' in host.events[0]

    host = FakeHost(OFFLOAD_R1, local=False)  # remote-only: nowhere else to go
    host.fail = {"offload:r1"}
    pipe = run_sample(host)
    assert host.calls == ["offload:r1"] and pipe.failed == 1 and not host.events

    host = FakeHost(OFFLOAD_R1.model_copy(update={"fallback_local": False}))
    host.fail = {"offload:r1"}
    assert run_sample(host).failed == 1 and host.calls == ["offload:r1"]


def test_a_sample_failing_during_a_switch_follows_the_new_route() -> None:
    # Offload to the old replica fails while the route moves to the new one.
    host = FakeHost(OFFLOAD_R1)
    host.fail = {"offload:r1"}
    host.during = Route(mode="offload", target="r2", epoch=2)
    pipe = run_sample(host)
    assert host.calls == ["offload:r1", "offload:r2"] and pipe.offloaded == 1
    assert b'"route":"offload:r2"' in host.events[0]

    # A local run fails (the module went remote-only) while the route moves to offload.
    host = FakeHost(Route())
    host.fail = {"local"}
    host.during = OFFLOAD_R1
    pipe = run_sample(host)
    assert host.calls == ["local", "offload:r1"] and pipe.processed == 1

    # Retried once only: both sides failing loses the sample (and says so).
    host = FakeHost(OFFLOAD_R1)
    host.fail = {"offload:r1", "local"}
    pipe = run_sample(host)
    assert host.calls == ["offload:r1", "local"] and pipe.failed == 1

    # A local failure with no switch has no other side.
    host = FakeHost(Route())
    host.fail = {"local"}
    assert run_sample(host).failed == 1 and host.calls == ["local"]


def test_a_switch_applies_to_the_next_sample_only() -> None:
    host = FakeHost(Route())
    host.during = OFFLOAD_R1  # switched while the local run is in flight: it stays local
    spec = PipelineSpec(name="p", module="m", source=SourceSpec(kind="mqtt", topic="in"))
    pipe = Pipeline(spec, source=None, host=host, topic="ev")  # type: ignore[arg-type]
    sample = Sample((Tensor.from_numpy("x", np.ones((1, 1), np.float32)),), time.time())
    pipe._process(sample)
    pipe._process(sample)
    assert host.calls == ["local", "offload:r1"] and pipe.processed == 2
