"""Hostile topics in requests: a responder never publishes where a request tells it to go wrong.

A broker disconnects a client that publishes to an invalid topic name, so a
request whose ``reply_to`` holds a wildcard, NUL, a control character, no
text, a lone surrogate (not UTF-8) or over 65,535 bytes took an agent (or a
replica's MQTT responder) off the broker each time it answered. A ``reply_to``
outside ``{p}/replies/`` made it publish wherever the sender liked. Here each
such request is sent to a real agent process and to a real replica responder
on a real Mosquitto: both stay connected, publish nothing outside the replies
prefix, answer the refusal on the MQTT 5 ResponseTopic where that one is
valid, and answer a valid request afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.agent_fixtures as af
from edge_agent.protocol import ErrorCode, Topics, encode_frame
from mesh.edge.broker._broker import MosquittoBroker
from mesh.serving._contract import ReplicaMqtt
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.security._edge import MODULE, running_agent, wait, x
from tests.support.agent_fixtures import (
    AgentProcess,
    ArtifactServer,
    Requester,
    SigningKey,
    build_tiny_model,
    requester,
)
from tests.support.brokers import mosquitto, unique  # noqa: F401  (fixture)

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180)]

T = Topics()
OUTSIDE = "elsewhere/hijack"

#: One request per class of bad reply topic (all valid JSON in the header).
BAD_REPLY_TOPICS = {
    "wildcard +": "mesh/v1/replies/+/x",
    "wildcard #": "mesh/v1/replies/#",
    "NUL": "mesh/v1/replies/a\x00b",
    "control character": "mesh/v1/replies/a\x07b",
    "not UTF-8 (lone surrogate)": "mesh/v1/replies/\udc80",
    "empty": "",
    "outside the prefix": OUTSIDE,
    "broker topic": "$SYS/broker/x",
    "over 65,535 bytes": "mesh/v1/replies/" + "a" * 70_000,
}


def request(reply_to: str, module: str = MODULE) -> tuple[str, bytes]:
    """A valid request (correlation id, frame) but for its ``reply_to``."""
    corr = uuid.uuid4().hex
    header = {
        "schema_version": 1,
        "kind": "infer_request",
        "module": module,
        "reply_to": reply_to,
        "correlation_id": corr,
    }
    return corr, encode_frame(header, [x()])


def send_bad_requests(r: Requester, topic: str, module: str = MODULE) -> list[str]:
    """Each bad reply topic twice: alone (3.1.1 style) and with a valid MQTT 5 ResponseTopic.

    Returns the correlation ids of the second kind where a refusal is due.
    """
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    answered = []
    for bad in BAD_REPLY_TOPICS.values():
        _, frame = request(bad, module)
        r.client.publish(topic, frame, qos=1)
        corr, frame = request(bad, module)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = r.reply_topic
        props.CorrelationData = corr.encode()
        r.client.publish(topic, frame, qos=1, properties=props)
        if bad:  # an empty reply_to is no reply_to: the ResponseTopic gets the result
            answered.append(corr)
    return answered


def assert_refused(r: Requester, corrs: list[str]) -> None:
    """Each request with a valid ResponseTopic got a BAD_REQUEST naming its reply topic."""
    wait(lambda: all(c in r.replies for c in corrs), 30, "a refusal per bad reply_to")
    for corr in corrs:
        reply, _ = r.replies.pop(corr)
        assert reply.error is not None and reply.error.code is ErrorCode.BAD_REQUEST, reply
        assert "reply topic" in reply.error.message or "reply_to" in reply.error.message


def test_an_agent_stays_connected_whatever_reply_topic_a_request_names(
    mosquitto: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    with running_agent(
        mosquitto, tmp_path, signing_key, artifact_server, agent_processes
    ) as running:
        r = running.requester
        r.subscribe(f"{OUTSIDE.split('/')[0]}/#")
        assert running.answers()
        corrs = send_bad_requests(r, T.infer(MODULE, running.agent))
        assert_refused(r, corrs)
        assert running.answers()  # after every bad one, in order: all were handled
        assert running.still_connected(), running.proc.log()[-3000:]
        assert not [t for t, _ in r.events if t.startswith(OUTSIDE)], "published outside"
        assert running.proc.proc is not None and running.proc.proc.poll() is None
        assert "no valid reply topic" in running.proc.log()  # dropped, and said so


@pytest.fixture
def responder(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[MqttResponder]:  # noqa: F811
    runner = ModelRunner(build_tiny_model(tmp_path / "tiny.onnx"), cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model=MODULE, version="v1", replica_id=unique("m-v1"))
    try:
        resp = MqttResponder(app, ReplicaMqtt(mosquitto.url)).start(timeout_s=15)
        try:
            yield resp
        finally:
            resp.stop(timeout_s=2)
    finally:
        app.close()


def test_a_replica_responder_stays_connected_whatever_reply_topic_a_request_names(
    mosquitto: MosquittoBroker,  # noqa: F811
    responder: MqttResponder,
) -> None:
    drops: list[Any] = []
    lock = threading.Lock()
    client = responder._client
    on_disconnect = client.on_disconnect

    def counted(*args: Any) -> None:
        with lock:
            drops.append(args[3] if len(args) > 3 else args)
        on_disconnect(*args)

    client.on_disconnect = counted
    with requester(mosquitto.host, mosquitto.port, protocol="5") as r:
        r.subscribe(f"{OUTSIDE.split('/')[0]}/#")
        corrs = send_bad_requests(r, responder.topic)
        assert_refused(r, corrs)
        reply, (y,) = r.infer(MODULE, responder.replica_id, [x()], timeout_s=30)
        assert reply.ok and float(y.to_numpy()[0, 0]) == 2.0
        assert drops == [], f"the broker disconnected the responder: {drops}"
        assert not [t for t, _ in r.events if t.startswith(OUTSIDE)], "published outside"
