"""The MQTT connection helper against the real brokers: Mosquitto speaks 5, amqtt only 3.1.1.

"auto" must end up on MQTT 5 with Mosquitto and fall back to 3.1.1 with the
embedded amqtt broker, for the helper itself and for each of its three users
(the agent's transport, the edge bus, a replica's responder).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent._mqtt import (
    ClientOptions,
    choose_protocol,
    close_client,
    connect_and_wait,
    new_client,
    refusal_text,
)
from edge_agent._transport import ConnectionConfig, MqttTransport
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import hash_password
from mesh.edge._records import EdgeConnectionError
from mesh.edge.broker._broker import BrokerHandle, MosquittoBroker, start_mosquitto
from mesh.serving._contract import ReplicaMqtt
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.support.agent_fixtures import build_tiny_model
from tests.support.brokers import (  # noqa: F401
    broker,
    embedded_broker,
    mosquitto,
    require_mosquitto,
    unique,
)

pytestmark = pytest.mark.mqtt


def _expected(handle: BrokerHandle) -> str:
    return "5" if isinstance(handle, MosquittoBroker) else "3.1.1"


def test_auto_speaks_5_to_mosquitto_and_falls_back_to_311_on_amqtt(
    broker: BrokerHandle,  # noqa: F811
) -> None:
    proto = choose_protocol("auto", broker.host, broker.port)
    assert proto == _expected(broker)
    client = new_client(ClientOptions(unique("c"), proto, will=("t/will", b"gone")))
    try:
        code = connect_and_wait(client, broker.host, broker.port, keepalive_s=10, timeout_s=10)
        assert code == 0
        sock = client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        close_client(client)


def test_v5_to_a_311_broker_is_refused_with_a_clear_reason(
    embedded_broker: BrokerHandle,  # noqa: F811
) -> None:
    client = new_client(ClientOptions(unique("c"), "5"))
    try:
        code = connect_and_wait(
            client, embedded_broker.host, embedded_broker.port, keepalive_s=10, timeout_s=5
        )
    finally:
        close_client(client)
    # amqtt answers a bare MQTT 5 CONNECT with "unacceptable protocol version"
    assert code == 0x84
    assert "protocol 'auto'" in refusal_text(code)


def test_the_agent_transport_falls_back_too(broker: BrokerHandle) -> None:  # noqa: F811
    transport = MqttTransport(ConnectionConfig(broker.host, broker.port, unique("agent")))
    transport.start()
    try:
        deadline = time.monotonic() + 15
        while not transport.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert transport.connected and transport.protocol == _expected(broker)
    finally:
        transport.stop()


def test_a_replica_responder_falls_back_too(
    broker: BrokerHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    runner = ModelRunner(build_tiny_model(tmp_path / "tiny.onnx"), cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id=unique("m-v1"))
    try:
        responder = MqttResponder(app, ReplicaMqtt(broker.url)).start(timeout_s=15)
        try:
            assert responder.protocol == _expected(broker)
            assert responder.describe()["subscribed"]
        finally:
            responder.stop(timeout_s=2)
    finally:
        app.close()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto that knows one user, ``u`` with password ``right``."""
    require_mosquitto()
    passwd = tmp_path / "passwd"
    passwd.write_text(f"u:{hash_password('right', username='u')}\n")
    handle = start_mosquitto(workdir=tmp_path / "mq", password_file=passwd)
    try:
        yield handle
    finally:
        handle.stop()


def test_a_bad_password_reads_as_what_to_do(secured: MosquittoBroker) -> None:
    bus = EdgeBus(secured.url, username="u", password="wrong")
    with pytest.raises(EdgeConnectionError) as info:
        bus.start(timeout_s=5)
    message = str(info.value)
    assert f"{secured.host}:{secured.port}" in message and "(MQTT 5)" in message
    assert "check the user name and password" in message or "password file and ACL" in message
    with EdgeBus(secured.url, username="u", password="right") as ok:
        assert ok.connected and ok.protocol == "5"
