"""10,000 malformed MQTT payloads to an agent and to the control plane's topics: both live on.

A seeded generator writes what a broken or hostile client could send: random
bytes, frames cut short, frame headers declaring huge lengths or shapes, JSON
headers with wrong types, non-finite numbers, deep nesting, bad UTF-8, hostile
reply topics. They go to a real agent process's inference and desired topics
and to every topic the control plane's :class:`~mesh.edge._bus.EdgeBus`
subscribes to (agents' status, heartbeat, observed; events; its replies), on a
real Mosquitto, at QoS 0 in batches. Afterwards both are alive and connected,
their memory is bounded (stated below), and a valid request is answered.
Before issue 14 a hostile reply topic took the agent off the broker, and JSON
nested deeply enough raised RecursionError out of paho's callback.
"""

from __future__ import annotations

import json
import random
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import tests.support.agent_fixtures as af
from edge_agent.protocol import MAGIC, Event, Topics, encode_frame
from mesh.edge._bus import EdgeBus
from mesh.edge.broker._broker import MosquittoBroker
from tests.security._edge import MODULE, WIDTH, running_agent, wait, x
from tests.security.test_mqtt_inputs import BAD_REPLY_TOPICS
from tests.support.agent_fixtures import AgentProcess, ArtifactServer, SigningKey
from tests.support.brokers import mosquitto  # noqa: F401  (fixture)

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

T = Topics()
MIB = 1024 * 1024
PAYLOADS = 10_000
BATCH = 500
SEED = 14
AGENT_GROWTH_LIMIT = 32 * MIB  # agent RSS after the fuzz, over its RSS before
BUS_GROWTH_LIMIT = 64 * MIB  # this process's RSS (the EdgeBus is in it), likewise

_HOSTILE: list[Any] = [
    None, True, False, -1, 0, 2**64, -(2**63), 1.5, 1e308, "", "x" * 5000, "\u0000",
    [], {}, [1, 2], {"a": 1}, [[[[[]]]]], "mesh/v1/replies/#",
]  # fmt: skip
_SHAPES: list[Any] = [
    [2**40], [2**31, 2**31], [-1], [True], [1.5], ["3"], [None], [1] * 100, "4", 7, [],
]  # fmt: skip
_REQUEST_KEYS = [
    "schema_version", "kind", "id", "ts", "module", "version", "reply_to",
    "correlation_id", "deadline_ts", "tensors",
]  # fmt: skip
_REPORT_KEYS = [
    "schema_version", "kind", "id", "ts", "agent", "site", "state", "version",
    "installed", "errors", "host", "modules", "stream", "outputs", "data", "seq",
]  # fmt: skip


def _valid_request(reply_to: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "kind": "infer_request",
        "module": MODULE,
        "reply_to": reply_to,
        "correlation_id": uuid.uuid4().hex,
    }


def malformed(rng: random.Random, *, json_keys: list[str], reply_to: str) -> bytes:
    """One malformed payload (never a valid message of any kind)."""
    kind = rng.randrange(10)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(0, 512))
    if kind == 1:  # a frame header declaring a huge (or absurd) length
        return MAGIC + struct.pack("<I", rng.choice([2**32 - 1, 2**31, 300_000, 9])) + b"{}"
    if kind == 2:  # a valid frame cut short
        frame = encode_frame(_valid_request(reply_to), [x(rng.randrange(1, 64))])
        return frame[: rng.randrange(1, len(frame))]
    if kind == 3:  # huge or wrong shapes, no data behind them
        meta = {"name": "x", "dtype": rng.choice(["float32", "complex64", 7]), "shape": None}
        meta["shape"] = rng.choice(_SHAPES)
        return encode_frame({**_valid_request(reply_to), "tensors": [meta]})[:-1] + b"!"
    if kind == 4:  # deep nesting
        depth = rng.choice([1000, 50_000, 200_000])
        return b"{" + b'"a":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 5:  # not UTF-8
        return b'{"schema_version": 1, "module": "\xff\xfe", "reply_to": "\xc0\xaf"}'
    if kind == 6:  # non-finite numbers
        return b'{"schema_version": 1, "ts": NaN, "deadline_ts": Infinity, "version": -Infinity}'
    if kind == 7:  # a hostile reply topic on an otherwise valid request
        bad = rng.choice(list(BAD_REPLY_TOPICS.values()))
        return encode_frame(_valid_request(bad), [x()])
    # kinds 8, 9: a JSON object with wrong types in its fields
    doc: dict[str, Any] = {k: rng.choice(_HOSTILE) for k in rng.sample(json_keys, 4)}
    doc.setdefault("schema_version", 1)
    doc["version"] = rng.choice(["nope", -5, None, [1]])  # never a valid desired state
    if kind == 9:
        doc["tensors"] = [{"name": rng.choice(_HOSTILE), "dtype": "float32", "shape": []}]
    return json.dumps(doc).encode()


@pytest.fixture
def bus(mosquitto: MosquittoBroker) -> Iterator[EdgeBus]:  # noqa: F811
    with EdgeBus(mosquitto.url) as b:
        yield b


def test_malformed_payloads_leave_the_agent_and_the_control_plane_alive_and_bounded(
    mosquitto: MosquittoBroker,  # noqa: F811
    bus: EdgeBus,
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    rng = random.Random(SEED)
    with running_agent(
        mosquitto, tmp_path, signing_key, artifact_server, agent_processes
    ) as running:
        r = running.requester
        agent = running.agent
        assert running.answers()
        agent_ps, me = psutil.Process(running.proc.pid), psutil.Process()
        agent_before, bus_before = agent_ps.memory_info().rss, me.memory_info().rss
        fakes = [f"fuzz-{i}" for i in range(8)]
        targets: list[tuple[str, list[str]]] = [
            (T.infer(MODULE, agent), _REQUEST_KEYS),
            (T.desired(agent), _REPORT_KEYS),
            (T.events("fuzz", "s"), _REPORT_KEYS),
            (bus.reply_topic, _REQUEST_KEYS),
        ]
        targets += [(T.status(f), _REPORT_KEYS) for f in fakes]
        targets += [(T.heartbeat(f), _REPORT_KEYS) for f in fakes]
        targets += [(T.observed(f), _REPORT_KEYS) for f in fakes]
        for start in range(0, PAYLOADS, BATCH):
            info = None
            for _ in range(start, min(start + BATCH, PAYLOADS)):
                topic, keys = rng.choice(targets)
                payload = malformed(rng, json_keys=keys, reply_to=r.reply_topic)
                info = r.client.publish(topic, payload, qos=0)
            assert info is not None
            info.wait_for_publish(30)  # written: the next batch does not pile up here
        # QoS 1 barriers, after everything above from the same client, in order.
        seen = threading.Event()
        marker = uuid.uuid4().hex
        undo = bus.on_event(lambda e: seen.set() if e.id == marker else None)
        event = Event(id=marker, stream="s", site="fuzz", agent="fuzz-0")
        r.client.publish(T.events("fuzz", "s"), event.model_dump_json(), qos=1)
        assert seen.wait(60), "the control plane's dispatcher did not reach the last event"
        undo()
        assert running.answers()  # the agent handled every request above, then this one
        result = bus.infer_sync(MODULE, agent, [x(2)], timeout_s=30)  # and through the bus
        assert result.outputs["y"].shape == (2, WIDTH) and float(result.outputs["y"][0, 0]) == 2
        wait(lambda: bus.agent(agent) is not None, 10, "the bus to know the agent")

        agent_after, bus_after = agent_ps.memory_info().rss, me.memory_info().rss
        print(
            f"agent RSS {agent_before / MIB:.0f} -> {agent_after / MIB:.0f} MiB; "
            f"test process (EdgeBus) {bus_before / MIB:.0f} -> {bus_after / MIB:.0f} MiB; "
            f"bus stats {bus.stats()}"
        )
        assert running.still_connected(), running.proc.log()[-3000:]
        assert running.proc.proc is not None and running.proc.proc.poll() is None
        assert bus.connected
        assert bus.stats().malformed > 0  # it saw them, refused them, and lived
        assert agent_after - agent_before < AGENT_GROWTH_LIMIT
        assert bus_after - bus_before < BUS_GROWTH_LIMIT
