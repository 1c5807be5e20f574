"""A Mosquitto killed with -9 before it saves loses no event an agent's control plane confirms.

The control plane (a stand-in here, acknowledging events as ``mesh`` does) is
away while the agent publishes: Mosquitto acknowledges the events and queues
them for it, then is killed with -9 without persistence. With PUBACK as
delivery those events were gone; now the agent keeps them until the control
plane confirms them and sends them again once the broker is back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent import Agent, AgentSettings
from edge_agent._transport import ConnectionConfig, Message, MqttTransport
from edge_agent.protocol import Event, EventAcks, Topics
from tests.support.brokers import KillableMosquitto

pytestmark = pytest.mark.mqtt

T = Topics()
AGENT = "cam-acks"


class ControlPlane:
    """Receives events (QoS 1, persistent session) and acknowledges those that ask."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.t: MqttTransport | None = None

    def start(self) -> None:
        self.t = MqttTransport(
            ConnectionConfig(host="127.0.0.1", port=self.port, client_id="cp-acks", protocol="5")
        )
        self.t.subscribe(T.events("s1", "x"), self._on_event, qos=1)
        self.t.start()

    def _on_event(self, msg: Message) -> None:
        event = Event.model_validate_json(msg.payload)
        with self.lock:
            self.seqs.append(event.seq)
        if event.ack and event.agent and self.t is not None:
            acks = EventAcks(seqs=[event.seq]).model_dump_json().encode()
            self.t.publish(T.event_acks(event.agent), acks, qos=0)

    def stop(self) -> None:
        if self.t is not None:
            self.t.stop()
        self.t = None

    def received(self) -> set[int]:
        with self.lock:
            return set(self.seqs)


def wait(cond: Callable[[], object], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KillableMosquitto]:
    m = KillableMosquitto(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.kill()


def test_events_acknowledged_by_a_killed_broker_reach_the_control_plane(
    broker: KillableMosquitto, tmp_path: Path
) -> None:
    settings = AgentSettings(
        id=AGENT,
        site="s1",
        broker=f"mqtt://127.0.0.1:{broker.port}",
        protocol="5",
        cache_dir=tmp_path / "agent",
        require_signature=False,
        heartbeat_period_s=60,
        outbox_confirm_timeout_s=2,
    )
    agent = Agent(settings)
    cp = ControlPlane(broker.port)

    def emit() -> int:
        def body(seq: int) -> bytes:
            event = Event(agent=AGENT, stream="x", seq=seq, ack=True)
            return json.dumps(event.model_dump(mode="json")).encode()

        return agent.emit(T.events("s1", "x"), body, qos=1)

    try:
        cp.start()
        agent.start()
        assert agent.wait_connected(20)
        first = emit()
        assert wait(lambda: first in cp.received() and agent._outbox._confirm.active)
        assert wait(lambda: agent._outbox.stats().depth == 0)

        cp.stop()  # its session keeps the subscription: Mosquitto queues the events for it
        queued = [emit() for _ in range(5)]
        assert wait(lambda: agent._outbox.unconfirmed() == 5)  # Mosquitto acknowledged them
        broker.kill()  # before it saved them anywhere
        broker.start()
        cp.start()
        assert wait(lambda: set(queued) <= cp.received()), (cp.received(), broker.log.read_text())
        assert wait(lambda: agent._outbox.stats().depth == 0)
    finally:
        agent.stop()
        cp.stop()
