"""The agent end to end on the in-memory transport: desired state, inference, bad input,
hot swap, pipelines, offline buffering, restart from cache, offload, heartbeats."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import Agent, AgentSettings, MemoryBroker, MemoryTransport
from edge_agent._sources import write_replay
from edge_agent._transport import Message
from edge_agent.protocol import (
    ErrorCode,
    Event,
    Heartbeat,
    InferReply,
    InferRequest,
    ObservedState,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    parse_header,
)
from tests.support.agent_fixtures import (
    ArtifactServer,
    SigningKey,
    build_tiny_model,
    desired,
    module_spec,
)

T = Topics()
AGENT = "cam-1"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("models")
    return {
        "v1": build_tiny_model(d / "v1.onnx", scale=2.0).read_bytes(),
        "v2": build_tiny_model(d / "v2.onnx", scale=3.0).read_bytes(),
        "fog": build_tiny_model(d / "fog.onnx", scale=10.0).read_bytes(),
        "custom": build_tiny_model(d / "c.onnx", op_domain="com.example.unknown").read_bytes(),
    }


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer()
    yield s
    s.close()


def wait(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


class Client:
    """A test client on the memory broker."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.t = MemoryTransport(broker, f"client-{uuid.uuid4().hex[:6]}")
        self.t.start()
        self.msgs: list[Message] = []
        self.replies: dict[str, tuple[InferReply, list[Tensor]]] = {}
        self.reply_topic = T.reply(self.t.client_id)
        self.lock = threading.Lock()
        self.t.subscribe("mesh/v1/#", self._on)

    def _on(self, m: Message) -> None:
        with self.lock:
            self.msgs.append(m)
            if m.topic == self.reply_topic:
                h, ts = decode_frame(m.payload)
                r = parse_header(h, InferReply)
                self.replies[r.correlation_id or ""] = (
                    r,
                    [Tensor(t.name, t.dtype, t.shape, bytes(t.data)) for t in ts],
                )

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.msgs if m.topic == topic]

    def observed(self) -> ObservedState | None:
        got = self.on(T.observed(AGENT))
        return ObservedState.model_validate_json(got[-1]) if got else None

    def wait_observed(self, pred: Callable[[ObservedState], bool]) -> ObservedState:
        assert wait(lambda: (o := self.observed()) is not None and pred(o)), self.observed()
        obs = self.observed()
        assert obs is not None
        return obs

    def publish_desired(self, doc: dict[str, Any] | bytes) -> None:
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.t.publish(T.desired(AGENT), raw, retain=True)

    def send(
        self, module: str, tensors: list[Tensor], payload: bytes | None = None, **header: Any
    ) -> str:
        corr = uuid.uuid4().hex
        req = InferRequest(module=module, reply_to=self.reply_topic, correlation_id=corr)
        body = {**req.model_dump(mode="json", exclude_none=True), **header}
        self.t.publish(T.infer(module, AGENT), payload or encode_frame(body, tensors))
        return corr

    def infer(
        self, module: str, tensors: list[Tensor], **header: Any
    ) -> tuple[InferReply, list[Tensor]]:
        corr = self.send(module, tensors, **header)
        assert wait(lambda: corr in self.replies), f"no reply for {module}"
        return self.replies.pop(corr)

    def events(self, stream: str = "counts") -> list[Event]:
        return [Event.model_validate_json(p) for p in self.on(T.events("s1", stream))]


def x(value: float = 1.0, width: int = 4) -> Tensor:
    return Tensor.from_numpy("x", np.full((1, width), value, dtype=np.float32))


@pytest.fixture
def env(tmp_path: Path, key: SigningKey) -> Iterator[dict[str, Any]]:
    broker = MemoryBroker()
    agents: list[Agent] = []

    def make(**kw: Any) -> Agent:
        fields: dict[str, Any] = {
            "id": AGENT,
            "site": "s1",
            "cache_dir": tmp_path / "cache",
            "public_key": key.public_b64,
            "heartbeat_period_s": 60,
            **kw,
        }
        settings = AgentSettings(**fields)
        will = (
            T.status(AGENT),
            b'{"schema_version":1,"kind":"status","agent":"cam-1","state":"offline"}',
        )
        agent = Agent(settings, transport=MemoryTransport(broker, AGENT, will=will))
        agents.append(agent)
        agent.start()
        return agent

    client = Client(broker)
    try:
        yield {"broker": broker, "make": make, "client": client}
    finally:
        for a in agents:
            a.stop()
        client.t.stop()


def installed(obs: ObservedState) -> dict[str, str]:
    return {m.name: m.version for m in obs.installed}


def test_install_infer_and_status(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    agent = env["make"]()
    assert agent.wait_connected(5)
    assert wait(lambda: c.on(T.status(AGENT)))
    assert json.loads(c.on(T.status(AGENT))[-1])["state"] == "online"
    assert env["broker"].retained[T.status(AGENT)]
    c.publish_desired(desired(1, [module_spec(server, key, "tiny", "1", models["v1"])]))
    obs = c.wait_observed(lambda o: o.version == 1 and installed(o) == {"tiny": "1"})
    assert obs.installed[0].inputs[0].describe() == "x: float32[N,4]"
    reply, (y,) = c.infer("tiny", [x(1.5)])
    assert reply.ok and reply.version == "1" and reply.node == AGENT
    np.testing.assert_allclose(y.to_numpy(), 3.0)


def test_desired_versions_and_bad_desired_messages(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    agent: Agent = env["make"]()
    c.publish_desired(desired(5, [module_spec(server, key, "tiny", "1", models["v1"])]))
    c.wait_observed(lambda o: o.version == 5)
    hits = len(server.hits)
    for bad in [
        desired(4, [module_spec(server, key, "tiny", "2", models["v2"])]),  # older
        desired(5, []),  # same
        {**desired(9, []), "schema_version": 2},
        desired(9, [], agent="someone-else"),
        b"{not json",
        b"[]",
    ]:
        c.publish_desired(bad)
    c.t.flush()
    time.sleep(0.2)
    assert agent.version == 5 and len(server.hits) == hits
    reply, _ = c.infer("tiny", [x()])
    assert reply.ok and reply.version == "1"  # still serving, nothing changed


def test_bad_requests_get_clear_error_replies(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    env["make"](max_payload_bytes=4096)
    c.publish_desired(desired(1, [module_spec(server, key, "tiny", "1", models["v1"])]))
    c.wait_observed(lambda o: installed(o) == {"tiny": "1"})

    reply, _ = c.infer("tiny", [x(width=3)])
    assert reply.error is not None and reply.error.code is ErrorCode.BAD_INPUT
    assert "expected x: float32[N,4]" in reply.error.message
    assert reply.error.expected is not None and reply.error.expected[0].shape == ["N", 4]

    reply, _ = c.infer("tiny", [Tensor.from_numpy("x", np.zeros((1, 4), np.int64))])
    assert reply.error is not None and "dtype int64, expected float32" in reply.error.message

    reply, _ = c.infer("nope", [x()])
    assert reply.error is not None and reply.error.code is ErrorCode.UNKNOWN_MODULE
    assert "serving ['tiny']" in reply.error.message

    reply, _ = c.infer("tiny", [x()], schema_version=7)
    assert reply.error is not None and reply.error.code is ErrorCode.SCHEMA_VERSION

    big = Tensor.from_numpy("x", np.zeros((300, 4), np.float32))
    reply, _ = c.infer("tiny", [big])
    assert reply.error is not None and reply.error.code is ErrorCode.PAYLOAD_TOO_LARGE

    c.send(
        "tiny",
        [],
        payload=json.dumps(
            {"schema_version": 1, "reply_to": c.reply_topic, "correlation_id": "no-module"}
        ).encode(),
    )
    assert wait(lambda: "no-module" in c.replies)
    err = c.replies["no-module"][0].error
    assert err is not None and err.code is ErrorCode.BAD_REQUEST and "module" in err.message

    corr = c.send("tiny", [], payload=b"\x00garbage")  # no header: logged and dropped
    c.send(
        "tiny",
        [],
        payload=json.dumps(
            {
                "schema_version": 1,
                "kind": "infer_request",
                "module": "tiny",
                "reply_to": c.reply_topic,
                "correlation_id": "malformed",
                "tensors": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
            }
        ).encode(),
    )
    assert wait(lambda: "malformed" in c.replies)
    assert c.replies["malformed"][0].error.code is ErrorCode.MALFORMED  # type: ignore[union-attr]
    assert corr not in c.replies
    reply, _ = c.infer("tiny", [x()])  # the agent keeps running
    assert reply.ok


def test_bad_artifacts_keep_old_version_and_removal(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    env["make"]()
    c.publish_desired(desired(1, [module_spec(server, key, "tiny", "1", models["v1"])]))
    c.wait_observed(lambda o: installed(o) == {"tiny": "1"})
    cases = [
        (
            2,
            module_spec(
                server,
                key,
                "tiny",
                "2",
                models["v2"],
                sha256="0" * 64,
                signature=key.sign("tiny", "2", "0" * 64),
            ),
            "integrity",
            "sha256",
        ),
        (
            3,
            module_spec(
                server, key, "tiny", "3", models["v2"], signature=key.sign("tiny", "2", "1" * 64)
            ),
            "integrity",
            "signature",
        ),
        (4, module_spec(server, key, "tiny", "4", models["custom"]), "unsupported", "cannot load"),
        (
            5,
            module_spec(
                server, key, "tiny", "5", models["v2"], providers=["TensorrtExecutionProvider"]
            ),
            "unsupported",
            "providers",
        ),
    ]
    for version, spec, code, needle in cases:
        c.publish_desired(desired(version, [spec]))
        obs = c.wait_observed(lambda o, v=version: o.version == v)  # type: ignore[misc]
        assert installed(obs) == {"tiny": "1"}
        (err,) = obs.errors
        assert err.code == code and needle in err.message and err.version == str(version)
        reply, (y,) = c.infer("tiny", [x()])
        assert reply.ok and reply.version == "1"
        np.testing.assert_allclose(y.to_numpy(), 2.0)
    c.publish_desired(desired(6, [module_spec(server, key, "tiny", "6", models["v2"])]))
    obs = c.wait_observed(lambda o: o.version == 6)
    assert installed(obs) == {"tiny": "6"} and obs.errors == []
    c.publish_desired(desired(7, []))
    obs = c.wait_observed(lambda o: o.version == 7)
    assert obs.installed == []
    reply, _ = c.infer("tiny", [x()])
    assert reply.error is not None and reply.error.code is ErrorCode.UNKNOWN_MODULE


def test_hot_swap_under_continuous_requests(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    env["make"]()
    c.publish_desired(desired(1, [module_spec(server, key, "tiny", "1", models["v1"])]))
    c.wait_observed(lambda o: installed(o) == {"tiny": "1"})
    results: list[tuple[InferReply, list[Tensor]]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(c.infer("tiny", [x()]))

    t = threading.Thread(target=load)
    t.start()
    try:
        assert wait(lambda: len(results) > 20)
        c.publish_desired(desired(2, [module_spec(server, key, "tiny", "2", models["v2"])]))
        c.wait_observed(lambda o: installed(o) == {"tiny": "2"})
        n = len(results)
        assert wait(lambda: len(results) > n + 20)
    finally:
        stop.set()
        t.join()
    assert all(r.ok for r, _ in results)
    versions = [r.version for r, _ in results]
    assert "1" in versions and "2" in versions and versions == sorted(versions)
    for r, (y,) in results:
        np.testing.assert_allclose(y.to_numpy(), 2.0 if r.version == "1" else 3.0)


def _replay(tmp_path: Path, n: int = 5) -> str:
    path = tmp_path / "replay.bin"
    write_replay(path, [encode_frame({}, [x(float(i))]) for i in range(n)])
    return str(path)


def _pipeline(path: str, rate_hz: float = 100.0) -> dict[str, Any]:
    return {
        "name": "cam",
        "module": "tiny",
        "stream": "counts",
        "source": {"kind": "file", "path": path, "rate_hz": rate_hz, "loop": True},
    }


def test_pipeline_offline_buffer_and_ordered_replay(
    env: dict[str, Any],
    tmp_path: Path,
    server: ArtifactServer,
    key: SigningKey,
    models: dict[str, bytes],
) -> None:
    c: Client = env["client"]
    broker: MemoryBroker = env["broker"]
    agent: Agent = env["make"]()
    c.publish_desired(
        desired(
            1, [module_spec(server, key, "tiny", "1", models["v1"])], [_pipeline(_replay(tmp_path))]
        )
    )
    assert wait(lambda: len(c.events()) >= 5)
    ev = c.events()[0]
    assert ev.route == "local" and ev.module == "tiny" and ev.agent == AGENT
    assert ev.ack  # QoS 1: the agent keeps it until the control plane confirms it
    assert ev.outputs["y"].shape == [1, 4]
    broker.set_online(False)
    time.sleep(0.05)
    before = {e.seq for e in c.events()}
    assert wait(lambda: agent._outbox.stats().depth >= 20)  # buffered on disk meanwhile
    broker.set_online(True)
    assert wait(lambda: agent._outbox.stats().depth < 5)
    c.t.flush()
    events = c.events()
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    assert set(range(1, max(seqs) + 1)) == set(seqs)  # nothing lost
    assert len({e.id for e in events}) == len(set(seqs))
    assert len(set(seqs) - before) >= 20


def test_restart_serves_from_cache_before_the_broker(
    env: dict[str, Any],
    tmp_path: Path,
    server: ArtifactServer,
    key: SigningKey,
    models: dict[str, bytes],
) -> None:
    c: Client = env["client"]
    broker: MemoryBroker = env["broker"]
    first: Agent = env["make"]()
    c.publish_desired(
        desired(
            3,
            [module_spec(server, key, "tiny", "1", models["v1"])],
            [_pipeline(_replay(tmp_path), rate_hz=50)],
        )
    )
    assert wait(lambda: len(c.events()) >= 2)
    first.stop()
    broker.set_online(False)
    server.files.clear()  # the artifact server is gone too
    second: Agent = env["make"]()
    assert second.wait_ready(5) and second.has_local("tiny") and second.version == 3
    assert not second.wait_connected(0.1)
    assert wait(lambda: second._outbox.stats().depth >= 5)  # the pipeline runs offline
    offline_until = time.time()
    broker.set_online(True)
    assert second.wait_connected(5)
    assert wait(
        lambda: any(
            e.source_ts and e.source_ts < offline_until and e.agent == AGENT
            for e in c.events()[-50:]
        )
    )


def test_offload_route_and_local_fallback(
    env: dict[str, Any],
    tmp_path: Path,
    server: ArtifactServer,
    key: SigningKey,
    models: dict[str, bytes],
) -> None:
    c: Client = env["client"]
    broker: MemoryBroker = env["broker"]
    fog = MemoryTransport(broker, "fog-1")
    fog.start()
    answering = threading.Event()
    answering.set()

    def fog_answer(m: Message) -> None:  # a fake fog replica: y = 10 x
        if not answering.is_set():
            return
        h, (t,) = decode_frame(m.payload)
        req = parse_header(h, InferRequest)
        y = Tensor.from_numpy("y", t.to_numpy() * 10)
        body = {
            "schema_version": 1,
            "kind": "infer_reply",
            "correlation_id": req.correlation_id,
            "module": req.module,
            "version": "fog-1",
            "node": "fog-1",
        }
        assert req.reply_to
        fog.publish(req.reply_to, encode_frame(body, [y]))

    fog.subscribe(T.offloads_to("tiny", "fog-1"), fog_answer)
    env["make"]()
    route = {"mode": "offload", "target": "fog-1", "epoch": 1, "timeout_ms": 300}
    c.publish_desired(
        desired(
            1,
            [module_spec(server, key, "tiny", "1", models["v1"], route=route)],
            [_pipeline(_replay(tmp_path), rate_hz=50)],
        )
    )
    assert wait(lambda: any(e.route == "offload:fog-1" for e in c.events()))
    off = next(e for e in c.events() if e.route == "offload:fog-1")
    assert off.version == "fog-1"
    obs = c.wait_observed(lambda o: o.version == 1)
    assert obs.installed[0].route_mode == "offload" and obs.installed[0].route_epoch == 1
    answering.clear()  # the fog node goes quiet: fall back to the local copy
    n = len(c.events())
    assert wait(lambda: any(e.route == "local" for e in c.events()[n:]))
    # Route back to local with a newer epoch; an older epoch is ignored.
    spec = module_spec(server, key, "tiny", "1", models["v1"], route={"epoch": 2})
    c.publish_desired(desired(2, [spec], [_pipeline(_replay(tmp_path), rate_hz=50)]))
    obs = c.wait_observed(lambda o: o.version == 2)
    assert obs.installed[0].route_mode == "local" and obs.installed[0].route_epoch == 2
    stale = module_spec(server, key, "tiny", "1", models["v1"], route={**route, "epoch": 1})
    c.publish_desired(desired(3, [stale], [_pipeline(_replay(tmp_path), rate_hz=50)]))
    obs = c.wait_observed(lambda o: o.version == 3)
    assert obs.installed[0].route_mode == "local" and obs.installed[0].route_epoch == 2
    fog.stop()


def test_heartbeats_and_offline_on_stop_and_will(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, models: dict[str, bytes]
) -> None:
    c: Client = env["client"]
    agent: Agent = env["make"](heartbeat_period_s=0.05)
    c.publish_desired(desired(1, [module_spec(server, key, "tiny", "1", models["v1"])]))
    c.wait_observed(lambda o: o.version == 1)
    c.infer("tiny", [x()])

    def counted() -> Heartbeat | None:
        # The reply can reach us before the next heartbeat counts the request.
        beats = [
            Heartbeat.model_validate_json(p) for p in c.on(T.heartbeat(AGENT)) if b'"tiny"' in p
        ]
        return next((b for b in reversed(beats) if b.modules["tiny"].requests >= 1), None)

    assert wait(lambda: counted() is not None)
    beat = counted()
    assert beat is not None and beat.host.rss_mb > 0
    assert beat.modules["tiny"].version == "1" and beat.seq >= 1
    agent.stop()
    status = json.loads(env["broker"].retained[T.status(AGENT)])
    assert status["state"] == "offline" and status["reason"] == "shutdown"
