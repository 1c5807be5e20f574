"""The agent copes with its device: damaged storage at start, a failing background loop,
and a clock some seconds off the control plane's (deadlines corrected within a bound;
an expired request is answered ``expired``, never dropped)."""

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
from edge_agent._clock import ClockOffset
from edge_agent._sources import Sample
from edge_agent._transport import Message, PublishHandle
from edge_agent.protocol import (
    ErrorCode,
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
    build_slow_model,
    build_tiny_model,
    desired,
    module_spec,
)

T = Topics()
AGENT = "cam-1"


def wait(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=2.0).read_bytes()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer()
    yield s
    s.close()


class FlakyTransport(MemoryTransport):
    """A memory transport whose publish on a topic raises a number of times."""

    def __init__(self, broker: MemoryBroker, client_id: str) -> None:
        super().__init__(broker, client_id)
        self.fail_topic: str | None = None
        self.failures = 0

    def publish(self, topic: str, payload: bytes, **kw: Any) -> PublishHandle | None:
        if topic == self.fail_topic and self.failures:
            self.failures -= 1
            raise RuntimeError("the network stack failed")
        return super().publish(topic, payload, **kw)


class Client:
    """Sends requests and collects replies and events on the memory broker."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.t = MemoryTransport(broker, f"client-{uuid.uuid4().hex[:6]}")
        self.t.start()
        self.reply_topic = T.reply(self.t.client_id)
        self.replies: dict[str, InferReply] = {}
        self.msgs: list[Message] = []
        self.lock = threading.Lock()
        self.t.subscribe("mesh/v1/#", self._on)

    def _on(self, m: Message) -> None:
        with self.lock:
            self.msgs.append(m)
            if m.topic == self.reply_topic:
                reply = parse_header(decode_frame(m.payload)[0], InferReply)
                self.replies[reply.correlation_id or ""] = reply

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.msgs if m.topic == topic]

    def install(
        self,
        server: ArtifactServer,
        key: SigningKey,
        data: bytes,
        module: str = "tiny",
        **extra: Any,
    ) -> None:
        doc = desired(1, [module_spec(server, key, module, "1", data)], **extra)
        self.t.publish(T.desired(AGENT), json.dumps(doc).encode(), retain=True)

        def serving() -> bool:
            got = self.on(T.observed(AGENT))
            return bool(got) and [
                m.name for m in ObservedState.model_validate_json(got[-1]).installed
            ] == [module]

        assert wait(serving), "the module was not installed"

    def send(self, module: str = "tiny", x: Tensor | None = None, **header: Any) -> str:
        corr = uuid.uuid4().hex
        req = InferRequest(module=module, reply_to=self.reply_topic, correlation_id=corr)
        body = {**req.model_dump(mode="json", exclude_none=True), **header}
        x = x or Tensor.from_numpy("x", np.ones((1, 4), dtype=np.float32))
        self.t.publish(T.infer(module, AGENT), encode_frame(body, [x]))
        return corr

    def reply(self, corr: str) -> InferReply:
        assert wait(lambda: corr in self.replies, 30), "no reply: the request was dropped"
        return self.replies.pop(corr)

    def infer(self, **header: Any) -> InferReply:
        return self.reply(self.send(**header))


@pytest.fixture
def env(tmp_path: Path, key: SigningKey) -> Iterator[dict[str, Any]]:
    broker = MemoryBroker()
    agents: list[Agent] = []

    def make(transport: MemoryTransport | None = None, **kw: Any) -> Agent:
        settings = AgentSettings(
            id=AGENT,
            site="s1",
            cache_dir=tmp_path / "cache",
            public_key=key.public_b64,
            heartbeat_period_s=60,
            **kw,
        )
        agent = Agent(settings, transport=transport or MemoryTransport(broker, AGENT))
        agents.append(agent)
        agent.start()
        assert agent.wait_connected(5)
        return agent

    client = Client(broker)
    try:
        yield {"broker": broker, "make": make, "client": client, "cache": tmp_path / "cache"}
    finally:
        for a in agents:
            a.stop()
        client.t.stop()


# ------------------------------------------------------------------ damaged storage


def test_an_agent_with_a_damaged_outbox_and_state_starts_and_serves(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, model: bytes
) -> None:
    cache: Path = env["cache"]
    cache.mkdir(parents=True)
    (cache / "outbox.db").write_bytes(b"\x00garbage, not SQLite" * 100)
    (cache / "state.json").write_bytes(b'{"desired": {"version": 3, "modu')
    agent: Agent = env["make"]()  # the code before: sqlite3.DatabaseError, the process exits
    c: Client = env["client"]
    c.install(server, key, model)
    reply = c.infer()
    assert reply.ok and reply.version == "1"

    faults = agent.heartbeat().faults
    moved = sorted(Path(p).name.split(".corrupt-")[0] for p in faults.quarantined)
    assert moved == ["outbox.db", "state.json"]
    assert all(Path(p).exists() for p in faults.quarantined)  # kept for inspection
    # The fresh outbox works: an event reaches the broker.
    agent.emit(T.events("s1", "counts"), lambda seq: b'{"seq": %d}' % seq, 1)
    assert wait(lambda: c.on(T.events("s1", "counts")))


def test_a_failing_outbox_pump_is_restarted_and_reported(env: dict[str, Any]) -> None:
    transport = FlakyTransport(env["broker"], AGENT)
    topic = T.events("s1", "counts")
    transport.fail_topic, transport.failures = topic, 1
    agent: Agent = env["make"](transport)
    c: Client = env["client"]
    for _ in range(3):
        agent.emit(topic, lambda seq: b'{"seq": %d}' % seq, 1)
    # The code before: the pump thread died on the first failure; nothing more was sent.
    assert wait(lambda: len(c.on(topic)) == 3, timeout=20)
    assert [json.loads(p)["seq"] for p in c.on(topic)] == [1, 2, 3]
    assert agent.heartbeat().faults.thread_failures == {"outbox-pump": 1}


# ------------------------------------------------------------------ clock skew


def test_a_device_clock_seconds_fast_still_serves_in_time_requests(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, model: bytes
) -> None:
    agent: Agent = env["make"]()
    c: Client = env["client"]
    # The control plane's clock is 5 s behind this device's: what it stamps is 5 s "old".
    c.install(server, key, model, ts=time.time() - 5.0)
    assert -6.5 < agent.clock.offset_s <= -5.0  # its desired state told the agent so
    for _ in range(3):
        cp_now = time.time() - 5.0
        reply = c.infer(ts=cp_now, deadline_ts=cp_now + 2.0)
        assert reply.ok, reply.error  # the code before: dropped as expired, no reply at all
    offset = agent.heartbeat().faults.clock_offset_s
    assert -6.5 < offset <= -5.0  # the estimate: the control plane's clock minus ours

    # A request that did expire by the control plane's clock is answered so, and counted.
    cp_now = time.time() - 5.0
    reply = c.infer(ts=cp_now, deadline_ts=cp_now - 1.0)
    assert reply.error is not None and reply.error.code == ErrorCode.EXPIRED
    assert "deadline passed" in reply.error.message
    assert agent.heartbeat().modules["tiny"].expired == 1


def test_a_request_that_expires_while_queued_is_answered_expired(
    env: dict[str, Any],
    server: ArtifactServer,
    key: SigningKey,
    tmp_path: Path,
) -> None:
    slow = build_slow_model(tmp_path / "slow.onnx", rows=1024, width=512, depth=64)
    agent: Agent = env["make"]()
    c: Client = env["client"]
    c.install(server, key, slow.read_bytes(), module="slow")
    x = Tensor.from_numpy("x", np.ones((1024, 512), dtype=np.float32))
    ahead = c.send("slow", x)  # a few tenths of a second of work
    assert wait(lambda: agent.heartbeat().modules["slow"].requests == 1)  # it runs now
    late = c.send("slow", x, ts=time.time(), deadline_ts=time.time() + 0.05)
    reply = c.reply(late)
    # Queued behind the other past its deadline (or, on a very slow machine, late on
    # arrival): answered either way. The code before: dropped without a word.
    assert reply.error is not None and reply.error.code == ErrorCode.EXPIRED, reply
    assert "while it was queued" in reply.error.message or "arrived" in reply.error.message
    assert c.reply(ahead).ok
    assert agent.heartbeat().modules["slow"].expired == 1


def test_a_skew_beyond_the_bound_is_corrected_only_up_to_it(
    env: dict[str, Any], server: ArtifactServer, key: SigningKey, model: bytes
) -> None:
    agent: Agent = env["make"](max_clock_skew_s=2.0)
    c: Client = env["client"]
    c.install(server, key, model)
    cp_now = time.time() - 5.0
    reply = c.infer(ts=cp_now, deadline_ts=cp_now + 2.0)  # 5 s off, 2 s corrected: expired
    assert reply.error is not None and reply.error.code == ErrorCode.EXPIRED
    assert "-2.000s clock offset" in reply.error.message
    assert agent.heartbeat().faults.clock_offset_s == -2.0


def test_clock_offset_takes_the_fastest_sample_and_clamps() -> None:
    clock = ClockOffset(max_skew_s=10.0, window=3)
    assert clock.offset_s == 0.0 and clock.local_deadline(100.0) == 100.0
    clock.observe(100.0, 95.5)  # slow transit
    clock.observe(100.0, 95.1)  # the fastest: offset 4.9
    clock.observe(100.0, 99.0)  # a message that waited in the broker
    assert clock.offset_s == pytest.approx(4.9)
    for _ in range(3):  # the window moves on
        clock.observe(200.0, 197.0)
    assert clock.offset_s == pytest.approx(3.0)
    clock.observe(1000.0, 0.0)  # a broken clock: the correction stops at the bound
    assert clock.offset_s == 10.0
    clock.observe(float("nan"), 0.0)  # ignored
    assert clock.offset_s == 10.0
    with pytest.raises(ValueError, match="max_skew_s"):
        ClockOffset(max_skew_s=-1)


def test_the_mqtt_network_loop_is_restarted_if_it_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent._client import FastClient
    from edge_agent._supervisor import Supervisor
    from edge_agent._transport import ConnectionConfig, MqttTransport

    runs: list[int] = []
    loop_forever = FastClient.loop_forever

    def flaky(self: FastClient, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bug on the network thread")
        return loop_forever(self, *args, **kwargs)

    monkeypatch.setattr(FastClient, "loop_forever", flaky)
    sup = Supervisor(min_backoff_s=0.01)
    config = ConnectionConfig("127.0.0.1", 1, "unit", protocol="3.1.1", reconnect_min_s=1)
    t = MqttTransport(config, supervisor=sup)
    t.start()
    try:
        # The code before: the thread logged the error and ended; the agent stayed cut off.
        assert wait(lambda: len(runs) == 2)
        assert sup.failures() == {"mqtt-unit": 1}
    finally:
        t.stop()


class FlakySource:
    """A source whose ``get`` raises a number of times, then gives samples."""

    exhausted = False

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def get(self, timeout_s: float) -> Sample | None:
        if self.failures:
            self.failures -= 1
            raise OSError("the camera went away for a moment")
        time.sleep(0.01)
        x = Tensor.from_numpy("x", np.ones((1, 1), np.float32))
        return Sample((x,), time.time())


def test_a_pipeline_whose_source_fails_is_restarted_and_counted() -> None:
    from edge_agent._pipelines import Pipeline
    from edge_agent._supervisor import Supervisor
    from edge_agent.protocol import PipelineSpec, Route, SourceSpec
    from tests.unit.test_offload_routes import FakeHost

    host = FakeHost(Route())
    spec = PipelineSpec(name="p", module="m", source=SourceSpec(kind="mqtt", topic="in"))
    sup = Supervisor(min_backoff_s=0.01)
    pipe = Pipeline(spec, FlakySource(2), host, "ev", supervisor=sup)
    pipe.start()
    try:
        # The code before: "source failed; stopping", and the pipeline stayed stopped.
        assert wait(lambda: len(host.events) >= 3)
        assert pipe.running and sup.failures() == {"pipeline-p": 2}
    finally:
        pipe.stop()


def test_a_desired_state_that_cannot_be_saved_is_applied_and_reported(
    env: dict[str, Any],
    server: ArtifactServer,
    key: SigningKey,
    model: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent: Agent = env["make"]()
    c: Client = env["client"]

    def disk_full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(agent._cache, "save_state", disk_full)
    # The code before: the failed save skipped the pipelines and the observed state.
    c.install(server, key, model)
    assert c.infer().ok


def test_the_tls_network_loop_is_restarted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent._client import FastClient
    from edge_agent._supervisor import Supervisor

    runs: list[int] = []

    def flaky(self: FastClient, *args: Any, **kwargs: Any) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bug on the network thread")

    monkeypatch.setattr(FastClient, "loop_forever", flaky)
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="tls-unit")
    client.supervisor = sup = Supervisor(min_backoff_s=0.01)
    client.loop_start()  # what the transport runs under TLS: paho's own thread
    assert wait(lambda: len(runs) == 2)  # the code before: one run, and the thread was gone
    assert sup.failures() == {"mqtt-tls-unit": 1}
    client.loop_stop()


def test_the_broker_probe_is_restarted_if_it_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent import _transport
    from edge_agent._supervisor import Supervisor

    runs: list[int] = []

    def flaky(*_args: Any, **_kwargs: Any) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("a surprise from the TLS stack")
        return "3.1.1"

    monkeypatch.setattr(_transport, "choose_protocol", flaky)
    sup = Supervisor(min_backoff_s=0.01)
    config = _transport.ConnectionConfig("127.0.0.1", 1, "probe-unit", protocol="auto")
    t = _transport.MqttTransport(config, supervisor=sup)
    t.start()
    try:
        # The code before: the probe thread died and the agent never tried to connect.
        assert wait(lambda: len(runs) == 2)
        assert sup.failures() == {"mqtt-probe": 1}
    finally:
        t.stop()
