"""The edge gateway against real brokers: Mosquitto and the embedded amqtt.

Fake agents are plain paho clients (:class:`MqttProbe`); each test uses unique ids.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import (
    AgentFaults,
    AgentStatus,
    DesiredState,
    ErrorCode,
    ErrorInfo,
    Event,
    Heartbeat,
    HostMetrics,
    InferReply,
    InferRequest,
    ObservedState,
    OutboxStats,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    parse_header,
)
from mesh.cli._agents import collect_health, fault_summary
from mesh.edge._bus import (
    EdgeBus,
    EdgeConnectionError,
    EdgeInferenceError,
    EdgeRequestTimeoutError,
)
from mesh.edge._enrolment import EdgeSettings, EnrolmentStore, control_plane_credentials, enroll
from mesh.edge.broker._broker import BrokerHandle, EmbeddedBroker, MosquittoBroker, start_mosquitto
from tests.support.brokers import (  # noqa: F401  (fixtures)
    MqttProbe,
    broker,
    mosquitto,
    mosquitto_sub,
    require_mosquitto,
    unique,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

T = Topics()


@pytest.fixture
def gateway(broker: BrokerHandle) -> Iterator[EdgeBus]:  # noqa: F811
    gw = EdgeBus(broker.url, keepalive_s=5, metrics_ring=3).start()
    try:
        yield gw
    finally:
        gw.stop()


def status(agent: str, state: str, site: str = "s1") -> bytes:
    return AgentStatus(agent=agent, state=state, site=site).model_dump_json().encode()


def heartbeat(agent: str, seq: int, cpu: float = 10.0, **extra: Any) -> bytes:
    host = HostMetrics(
        cpu_percent=cpu,
        mem_percent=50.0,
        mem_available_mb=100.0,
        rss_mb=10.0,
        load1=0.1,
        load5=0.1,
        load15=0.1,
    )
    beat = Heartbeat(agent=agent, seq=seq, period_s=1.0, host=host, **extra)
    return beat.model_dump_json().encode()


def fake_agent(handle: BrokerHandle, agent: str, **kw: Any) -> MqttProbe:
    probe = MqttProbe(
        handle, client_id=agent, will=(T.status(agent), status(agent, "offline")), **kw
    )
    assert probe.connack() == 0
    return probe


class Responder:
    """Answers inference requests for ``agent`` like an agent does (y = 2x)."""

    def __init__(
        self,
        probe: MqttProbe,
        agent: str,
        *,
        duplicate: bool = False,
        fail: bool = False,
        silent_modules: tuple[str, ...] = (),
    ) -> None:
        self.probe = probe
        self.agent = agent
        self.seen = 0
        self.duplicate, self.fail, self.silent = duplicate, fail, silent_modules
        probe.client.on_message = self._on_message
        probe.subscribe(f"{T.prefix}/modules/+/infer/{agent}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        header, tensors = decode_frame(bytes(msg.payload))
        req = parse_header(header, InferRequest)
        self.seen += 1
        if req.module in self.silent:
            return
        if self.fail:
            reply = InferReply(
                correlation_id=req.correlation_id,
                module=req.module,
                node=self.agent,
                error=ErrorInfo(code=ErrorCode.BAD_INPUT, message="wrong shape"),
            )
            outputs: list[Tensor] = []
        else:
            reply = InferReply(
                correlation_id=req.correlation_id, module=req.module, node=self.agent, version="7"
            )
            outputs = [Tensor.from_numpy("y", tensors[0].to_numpy() * 2)]
        frame = encode_frame(reply, outputs)
        for _ in range(2 if self.duplicate else 1):
            client.publish(req.reply_to, frame, qos=1)


# ---------------------------------------------------------------- connection


def test_negotiates_mqtt5_on_mosquitto_and_311_on_amqtt(
    gateway: EdgeBus,
    broker: BrokerHandle,  # noqa: F811
) -> None:
    expected = "5" if isinstance(broker, MosquittoBroker) else "3.1.1"
    assert isinstance(broker, MosquittoBroker | EmbeddedBroker)
    assert gateway.protocol == expected and gateway.connected
    sock = gateway._link.client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_unreachable_broker_is_a_clear_error() -> None:
    from mesh.edge.broker._broker import free_port

    gw = EdgeBus(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(EdgeConnectionError, match="cannot reach broker"):
        gw.start(timeout_s=2)


# ---------------------------------------------------------------- registry


def test_registry_sees_agents_come_online_and_go_offline_by_will(
    gateway: EdgeBus,
    broker: BrokerHandle,  # noqa: F811
) -> None:
    agent = unique("cam")
    probe = fake_agent(broker, agent)
    probe.publish(T.status(agent), status(agent, "online"), retain=True)
    view = gateway.wait_for_agent(agent, state="online", timeout_s=10)
    assert view.site == "s1" and view.health() == "online"

    # a plain mosquitto_sub sees the retained status too (MQTT 3.1.1 works on both brokers)
    sub = mosquitto_sub(broker, T.status(agent), count=1)
    out, _ = sub.communicate(timeout=15)
    topic, _, payload = out.strip().partition(" ")
    assert topic == T.status(agent) and json.loads(payload)["state"] == "online"

    for seq in range(5):
        probe.publish(T.heartbeat(agent), heartbeat(agent, seq, cpu=float(seq)))
    assert gateway.wait_until(
        lambda: len(gateway.metrics(agent)) == 3 and gateway.metrics(agent)[-1].heartbeat.seq == 4,
        10,
    )
    assert [s.cpu_percent for s in gateway.metrics(agent)] == [2.0, 3.0, 4.0]  # bounded ring
    latest = gateway.agent(agent)
    assert latest is not None and latest.heartbeat_age_s() is not None

    observed = ObservedState(agent=agent, version=3)
    probe.publish(T.observed(agent), observed.model_dump_json().encode(), retain=True)
    assert gateway.wait_for_observed(agent, 3, timeout_s=10).version == 3

    started = time.monotonic()
    probe.kill()  # no DISCONNECT: the broker publishes the will
    assert gateway.wait_for_agent(agent, state="offline", timeout_s=10).state == "offline"
    assert time.monotonic() - started < 10


def test_a_new_gateway_rebuilds_the_registry_from_retained_messages(
    broker: BrokerHandle,  # noqa: F811
) -> None:
    agent = unique("cam")
    probe = fake_agent(broker, agent)
    probe.publish(T.status(agent), status(agent, "online"), retain=True)
    probe.publish(
        T.observed(agent),
        ObservedState(agent=agent, version=5).model_dump_json().encode(),
        retain=True,
    )
    with EdgeBus(broker.url) as gw:
        gw.publish_desired(agent, DesiredState(version=5))
    with EdgeBus(broker.url) as gw:
        assert gw.wait_until(
            lambda: (
                (v := gw.agent(agent)) is not None
                and v.state == "online"
                and v.observed is not None
                and v.desired_version == 5
            ),
            10,
        )
    probe.close()


def test_health_is_persisted_to_the_store(broker: BrokerHandle, tmp_path: Path) -> None:  # noqa: F811
    settings = EdgeSettings(data_dir=tmp_path)
    agent = unique("cam")
    enroll(agent, site="s1", settings=settings)
    with (
        EnrolmentStore(settings.store_path) as store,
        EdgeBus(broker.url, health_sink=store) as gw,
    ):
        probe = fake_agent(broker, agent)
        probe.publish(T.status(agent), status(agent, "online"), retain=True)
        probe.publish(T.heartbeat(agent), heartbeat(agent, 1, cpu=42.0))
        assert gw.wait_until(lambda: bool(gw.metrics(agent)), 10)
        assert gw.wait_until(
            lambda: (r := store.get(agent)) is not None and r.metrics.get("cpu_percent") == 42.0, 10
        )
        record = store.get(agent)
        assert record is not None and record.state == "online"
        probe.close()


def test_cli_health_is_live_when_the_broker_is_reachable(
    broker: BrokerHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = EdgeSettings(data_dir=tmp_path, broker_url=broker.url)
    agent, silent = unique("cam"), unique("cam")
    enroll(agent, site="s1", settings=settings)
    enroll(silent, site="s2", settings=settings)
    probe = fake_agent(broker, agent)
    probe.publish(T.status(agent), status(agent, "online"), retain=True)
    stop = threading.Event()
    troubles = {
        "outbox": OutboxStats(depth=7, dropped=4),
        "faults": AgentFaults(quarantined=["outbox.db.corrupt-x"], clock_offset_s=2.5),
    }

    def beat() -> None:  # heartbeats keep coming, as from a live agent
        seq = 0
        while not stop.wait(0.1):
            seq += 1
            probe.publish(T.heartbeat(agent), heartbeat(agent, seq, cpu=33.0, **troubles))

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        rows, reason = collect_health(settings, wait_s=5.0)
    finally:
        stop.set()
        beating.join()
    assert reason is None
    live = {r.agent_id: r for r in rows}
    assert live[agent].health == "online" and live[agent].cpu_percent == 33.0
    assert live[agent].source == "live" and live[agent].enrolled
    # The device's troubles from its heartbeat: `mesh agents list` shows them in a column.
    assert live[agent].outbox is not None and live[agent].outbox["dropped"] == 4
    assert fault_summary(live[agent]) == (
        "1 file moved aside, 7 events waiting, 4 events dropped, clock -2.5 s off"
    )
    assert fault_summary(live[silent]) == "-"
    assert live[silent].health == "unknown"
    probe.close()


# ---------------------------------------------------------------- desired state


def test_desired_state_is_retained_qos1(gateway: EdgeBus, broker: BrokerHandle) -> None:  # noqa: F811
    agent = unique("cam")
    gateway.publish_desired(agent, DesiredState(version=4))
    assert gateway.agent(agent) is not None
    late = MqttProbe(broker)  # subscribes after the publish: gets it retained
    late.subscribe(T.desired(agent))
    assert late.wait_for(lambda: bool(late.payloads(T.desired(agent))))
    (topic, payload, retained) = late.messages[0]
    assert topic == T.desired(agent)
    doc = json.loads(payload)
    assert retained and doc["version"] == 4 and doc["agent"] == agent
    assert doc["schema_version"] == 1 and doc["kind"] == "desired"
    late.close()
    with pytest.raises(Exception, match="published to"):
        gateway.publish_desired(agent, DesiredState(version=5, agent="someone-else"))


# ---------------------------------------------------------------- request/response


def test_infer_round_trip_with_concurrency_and_duplicates(
    gateway: EdgeBus,
    broker: BrokerHandle,  # noqa: F811
) -> None:
    agent = unique("cam")
    responder = Responder(fake_agent(broker, agent), agent, duplicate=True)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *[
                gateway.infer("counter", agent, {"x": np.full((2, 3), i, np.float32)}, timeout_s=10)
                for i in range(50)
            ]
        )

    results = asyncio.run(run())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((2, 3), 2 * i, np.float32))
        assert result.reply.node == agent and result.reply.version == "7"
        assert result.latency_ms > 0
    assert responder.seen == 50
    assert gateway.wait_until(lambda: gateway.stats().unmatched_replies == 50, 10)
    sync = gateway.infer_sync("counter", agent, [Tensor.from_numpy("x", np.ones(1, np.int64))])
    assert sync.outputs["y"].tolist() == [2]


def test_infer_timeout_and_remote_errors(gateway: EdgeBus, broker: BrokerHandle) -> None:  # noqa: F811
    agent = unique("cam")
    Responder(fake_agent(broker, agent), agent, silent_modules=("slow",))
    x = {"x": np.zeros(1, np.float32)}
    started = time.monotonic()
    with pytest.raises(EdgeRequestTimeoutError, match="within timeout_s=0.3") as info:
        asyncio.run(gateway.infer("slow", agent, x, timeout_s=0.3))
    assert 0.3 <= time.monotonic() - started < 2.0
    assert info.value.module == "slow" and info.value.node == agent
    with pytest.raises(EdgeRequestTimeoutError):
        gateway.infer_sync("counter", unique("nobody"), x, timeout_s=0.2)
    assert gateway.stats().timeouts == 2

    bad = unique("cam")
    Responder(fake_agent(broker, bad), bad, fail=True)
    with pytest.raises(EdgeInferenceError, match="bad_input") as err:
        gateway.infer_sync("counter", bad, x, timeout_s=10)
    assert err.value.code == "bad_input"


# ---------------------------------------------------------------- events and the bus


def test_events_are_deduplicated_by_id(gateway: EdgeBus, broker: BrokerHandle) -> None:  # noqa: F811
    site = unique("site")
    got: list[Event] = []
    raw: list[bytes] = []
    gateway.on_event(got.append)
    unsubscribe = gateway.subscribe(
        f"{T.prefix}/events/{site}/+", lambda topic, payload: raw.append(payload)
    )
    probe = MqttProbe(broker)
    events = [Event(site=site, stream="counts", data={"n": i}) for i in range(5)]
    for event in events + events[:3] + events[::-1]:  # replays and duplicates
        probe.publish(T.events(site, "counts"), event.model_dump_json().encode())
    marker = Event(site=site, stream="counts", data={"n": "end"})
    probe.publish(T.events(site, "counts"), marker.model_dump_json().encode())
    assert gateway.wait_until(lambda: any(e.id == marker.id for e in got), 10)
    assert [e.data["n"] for e in got] == [0, 1, 2, 3, 4, "end"]
    assert len(raw) == 6
    assert gateway.stats().duplicate_events == 8
    unsubscribe()
    probe.close()


def test_malformed_payloads_are_dropped_and_the_gateway_keeps_running(
    gateway: EdgeBus,
    broker: BrokerHandle,  # noqa: F811
) -> None:
    agent = unique("cam")
    probe = fake_agent(broker, agent)
    junk = [
        b"",
        b"\xff\xfe",
        b"{not json",
        b"[1,2]",
        b'{"schema_version": 99}',
        b'{"schema_version": 1, "kind": "status"}',
        b"x" * 100_000,
    ]
    for payload in junk:
        for topic in (
            T.status(agent),
            T.heartbeat(agent),
            T.observed(agent),
            T.events("s1", "counts"),
            gateway.reply_topic,
        ):
            probe.publish(topic, payload)
    probe.publish(T.status(agent), status(agent, "online"), retain=True)
    assert gateway.wait_for_agent(agent, timeout_s=10).state == "online"
    stats = gateway.stats()
    assert stats.malformed >= 5 * (len(junk) - 1) - 1
    Responder(probe, agent)
    assert gateway.infer_sync("m", agent, {"x": np.ones(1, np.float32)}).outputs["y"][0] == 2


def test_message_bus_subscribe_and_publish(gateway: EdgeBus) -> None:
    stream = unique("traffic")
    got: list[tuple[str, bytes]] = []
    done = threading.Event()

    def handler(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        if payload == b"last":
            done.set()

    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("a broken handler must not stop the gateway")

    unsubscribe = gateway.subscribe(f"{stream}/+/counts", handler)
    gateway.subscribe(f"{stream}/#", broken)
    gateway.publish(f"{stream}/j1/counts", b"1", timeout_s=5)
    gateway.publish(f"{stream}/j1/other", b"no")
    gateway.publish(f"{stream}/j2/counts", b"last")
    assert done.wait(10)
    assert got == [(f"{stream}/j1/counts", b"1"), (f"{stream}/j2/counts", b"last")]
    assert gateway.wait_until(lambda: gateway.stats().handler_errors >= 3, 10)
    unsubscribe()
    gateway.publish(f"{stream}/j3/counts", b"after", timeout_s=5)
    marker = threading.Event()
    gateway.subscribe(f"{stream}/marker", lambda t, p: marker.set())
    gateway.publish(f"{stream}/marker", b"m")
    assert marker.wait(10)
    assert len(got) == 2


def test_gateway_reconnects_after_a_broker_restart(broker: BrokerHandle) -> None:  # noqa: F811
    assert isinstance(broker, MosquittoBroker | EmbeddedBroker)
    with EdgeBus(broker.url, keepalive_s=5) as gw:
        broker.stop()
        assert gw.wait_until(lambda: not gw.connected, 10)
        with pytest.raises(EdgeConnectionError, match="not connected"):
            gw.infer_sync("m", "a", {"x": np.ones(1, np.float32)})
        broker.start()
        assert gw.wait_until(lambda: gw.connected, 15)
        site = unique("site")
        got: list[Event] = []
        gw.on_event(got.append)
        probe = MqttProbe(broker)
        probe.publish(T.events(site, "c"), Event(site=site, stream="c").model_dump_json().encode())
        assert gw.wait_until(lambda: len(got) == 1, 10)
        probe.close()


# ---------------------------------------------------------------- ACLs (Mosquitto)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, EdgeSettings]]:
    require_mosquitto()
    settings = EdgeSettings(data_dir=tmp_path / "data")
    enroll("placeholder", site="s0", settings=settings)  # writes both files
    handle = start_mosquitto(
        workdir=tmp_path / "mq", password_file=settings.password_file, acl_file=settings.acl_file
    )
    try:
        yield handle, settings
    finally:
        handle.stop()


def _connect_when_reloaded(handle: MosquittoBroker, **kw: Any) -> MqttProbe:
    deadline = time.monotonic() + 10
    while True:
        probe = MqttProbe(handle, **kw)
        if probe.connack() == 0:
            return probe
        probe.close()
        assert time.monotonic() < deadline, "credentials not accepted after SIGHUP"
        time.sleep(0.05)  # mosquitto re-reads its files asynchronously after SIGHUP


def test_enrolled_acls_are_enforced_by_mosquitto(
    secured: tuple[MosquittoBroker, EdgeSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle, settings = secured
    a = enroll("cam-a", site="site-a", settings=settings)
    # the second agent's hash comes from the Python fallback, which mosquitto must accept
    with monkeypatch.context() as patch:
        patch.setattr("mesh.edge._passwords.shutil.which", lambda name: None)
        b = enroll("cam-b", site="site-b", settings=settings)
    handle.reload()
    creds = control_plane_credentials(settings)

    with pytest.raises(
        EdgeConnectionError, match=r"refused .*(bad user name or password|not authorized)"
    ):
        EdgeBus(handle.url, username="cam-a", password="wrong").start(timeout_s=5)
    anonymous = MqttProbe(handle)
    assert anonymous.connack() != 0
    anonymous.close()

    with EdgeBus(handle.url, username=creds.username, password=creds.password) as gw:
        pa = _connect_when_reloaded(
            handle, client_id="cam-a", username="cam-a", password=a.password
        )
        pb = _connect_when_reloaded(
            handle, client_id="cam-b", username="cam-b", password=b.password
        )
        # cam-a impersonates cam-b, then speaks for itself: only its own message arrives
        pa.publish(T.status("cam-b"), status("cam-b", "online"), retain=True)
        pa.publish(T.events("site-b", "counts"), Event(stream="counts").model_dump_json().encode())
        pa.publish(T.status("cam-a"), status("cam-a", "online", "site-a"), retain=True)
        gw.wait_for_agent("cam-a", timeout_s=10)
        assert gw.agent("cam-b") is None
        assert gw.stats().events == 0

        # cam-a cannot read cam-b's desired state; cam-b can
        pa.subscribe(T.desired("cam-a"))
        pa.subscribe(T.desired("cam-b"))
        pb.subscribe(T.desired("cam-b"))
        gw.publish_desired("cam-b", DesiredState(version=1))
        gw.publish_desired("cam-a", DesiredState(version=1))
        assert pa.wait_for(lambda: bool(pa.payloads(T.desired("cam-a"))))
        assert pb.wait_for(lambda: bool(pb.payloads(T.desired("cam-b"))))
        assert pa.payloads(T.desired("cam-b")) == []

        # a plain mosquitto_sub with the control plane's credentials sees cam-a online
        sub = mosquitto_sub(
            handle, T.status("cam-a"), username=creds.username, password=creds.password
        )
        out, _ = sub.communicate(timeout=15)
        assert json.loads(out.partition(" ")[2])["state"] == "online"
        pa.close()
        pb.close()
