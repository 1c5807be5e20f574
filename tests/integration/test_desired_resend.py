"""A desired state a Mosquitto lost to ``kill -9`` is published again by the control plane.

A real Mosquitto with persistence that saves once a minute (so the loss is
certain here; deploy's once a second makes it likely within that second) takes
the control plane's retained desired state for an agent that has not reported
it, and is killed with -9 before saving. Started again from its file, it has no
desired state for that agent. The edge bus reconnects by itself and publishes
the state again (``mesh/edge/_desired_resend.py``): an agent connecting after
that gets it retained. An agent reporting the version already gets no copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent._mqtt import ClientOptions, new_client
from edge_agent.protocol import DesiredState, ObservedState, Topics
from mesh.edge._bus import EdgeBus
from tests.support.brokers import KillableMosquitto, unique

pytestmark = pytest.mark.mqtt

T = Topics()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KillableMosquitto]:
    (tmp_path / "persist").mkdir()
    # Saved once a minute: a kill -9 loses what came since the start.
    mosquitto = KillableMosquitto(
        tmp_path,
        (
            "persistence true",
            f"persistence_location {tmp_path / 'persist'}/",
            "autosave_interval 60",
        ),
    )
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.kill()


def _wait(what: str, condition: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s  # a reconnect is paho's 1 s delay, then a SUBACK
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _retained_desired(port: int, agent: str, wait_s: float = 3.0) -> int | None:
    """The version of the retained desired state a fresh subscriber gets (None: none)."""
    got: list[int] = []
    arrived = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.payload:
            got.append(DesiredState.model_validate_json(msg.payload).version)
            arrived.set()

    client = new_client(ClientOptions(client_id=unique("reader"), protocol="3.1.1"))
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(T.desired(agent), qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        arrived.wait(wait_s)  # retained messages come right after the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def test_a_desired_state_lost_with_the_broker_is_published_again(broker: KillableMosquitto) -> None:
    behind, current = unique("behind"), unique("current")
    bus = EdgeBus(f"mqtt://127.0.0.1:{broker.port}", client_id=unique("cp")).start()
    try:
        # "current" reports version 4 already (its observed state, retained).
        observed = ObservedState(agent=current, version=4).model_dump_json().encode()
        bus.publish(T.observed(current), observed, retain=True, timeout_s=5.0)
        _wait("the observed state", lambda: getattr(bus.agent(current), "observed", None))
        bus.publish_desired(behind, DesiredState(version=3), timeout_s=5.0)
        bus.publish_desired(current, DesiredState(version=4), timeout_s=5.0)
        assert _retained_desired(broker.port, behind) == 3

        broker.kill()  # before its first save: everything retained since the start is gone
        broker.start()
        _wait("the bus to publish again", lambda: bus.desired_resend.resent >= 1)
        _wait("the bus's connection", lambda: bus.connected)

        assert _retained_desired(broker.port, behind) == 3
        assert bus.desired_resend.resent == 1  # "current" reports its version: no copy
        assert _retained_desired(broker.port, current, wait_s=1.0) is None
    finally:
        bus.stop()
