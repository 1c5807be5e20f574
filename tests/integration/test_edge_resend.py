"""A broker restart's race: a request sent after the gateway reconnected, before the agent did.

The broker restarts without the sessions it had (Mosquitto without persistence,
or the embedded amqtt in a new process), so the agent's subscriptions are gone
until it reconnects. The agent reconnects later than the gateway's edge bus
(its reconnect delay is longer), and a request sent in between finds no
subscriber: the broker drops it. The bus sends it again (fresh request id, same
correlation id and deadline) when the agent's online status arrives, which the
agent publishes after it subscribed; before that fix, the request timed out.

A real agent process serves a real model (ONNX Runtime) here, installed through
a signed desired state, as in production.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import DesiredState, Topics
from mesh.edge._bus import EdgeBus
from mesh.edge.broker._broker import start_mosquitto
from tests.support import agent_fixtures as af
from tests.support.agent_fixtures import (
    AgentProcess,
    AmqttProcess,
    ArtifactServer,
    SigningKey,
    build_tiny_model,
    desired,
    module_spec,
)
from tests.support.brokers import require_mosquitto, unique

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

T = Topics()
#: The agent's reconnect delay: well after the gateway's (1-2 s), so that a
#: request can be sent while the gateway is back and the agent is not.
AGENT_RECONNECT_S = 6


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A broker that forgets every session when it restarts, on the same port."""
    handle: Any
    if request.param == "mosquitto":
        require_mosquitto()
        handle = start_mosquitto(workdir=tmp_path / "mosquitto", persistence=False)
    else:
        handle = AmqttProcess().start()  # a child process: a restart starts empty
    try:
        yield handle
    finally:
        handle.stop()


def wait(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)


def test_a_request_sent_before_the_agent_subscribed_again_is_answered(
    broker: Any,
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = unique("cam")
    model = build_tiny_model(tmp_path / "tiny.onnx").read_bytes()
    args = [
        "--id", agent, "--site", "s1", "--broker", broker.url,
        "--cache-dir", str(tmp_path / "cache"), "--public-key", signing_key.public_b64,
        "--keepalive-s", "4", "--heartbeat-period-s", "1",
        "--reconnect-min-s", str(AGENT_RECONNECT_S), "--reconnect-max-s", str(AGENT_RECONNECT_S),
    ]  # fmt: skip
    proc = agent_processes(args, tmp_path / "agent.log").start()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with EdgeBus(broker.url, keepalive_s=5) as gw:
        gw.wait_for_agent(agent, state="online", timeout_s=30)
        doc = desired(1, [module_spec(artifact_server, signing_key, "tiny", "1", model)])
        gw.publish_desired(agent, DesiredState.model_validate(doc))
        gw.wait_for_observed(agent, 1, timeout_s=30)
        before = gw.infer_sync("tiny", agent, {"x": x}, timeout_s=10)
        np.testing.assert_array_equal(before.outputs["y"], x * 2)

        back = threading.Event()  # the agent's own online status after the restart

        def on_status(topic: str, payload: bytes) -> None:
            if payload and json.loads(payload).get("state") == "online":
                back.set()

        broker.stop()
        wait(lambda: not gw.connected, 15, "the gateway to see the broker gone")
        gw.subscribe(T.status(agent), on_status)
        broker.start()
        wait(lambda: gw.connected, 15, "the gateway to reconnect")
        # The window under test: the gateway is back, the agent is not.
        assert not back.is_set(), "the agent reconnected first: nothing to test"
        result = gw.infer_sync("tiny", agent, {"x": x}, timeout_s=4.0 * AGENT_RECONNECT_S)
        np.testing.assert_array_equal(result.outputs["y"], x * 2)
        assert back.is_set()  # answered by the agent after it came back, not before
        assert gw.stats().resent >= 1
    assert proc.proc is not None and proc.proc.poll() is None
