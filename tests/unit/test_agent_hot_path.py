"""The request hot path's shortcuts give what the general code gives: request headers
checked without pydantic, frames, JSON, tensors, and topic routing in the transport."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent._frames import Tensor, _dumps, _loads, pack_frame, unpack_frame
from edge_agent._serving import _PLAIN_TYPES, plain_request
from edge_agent._transport import ConnectionConfig, Message, MqttTransport, PublishHandle
from edge_agent.protocol import InferRequest, ProtocolError, parse_header

# ------------------------------------------------------------------ request headers

BASE: dict[str, Any] = {
    "schema_version": 1,
    "kind": "infer_request",
    "id": "r1",
    "module": "cnn",
    "reply_to": "mesh/v1/replies/c",
    "correlation_id": "c1",
    "tensors": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
}

VARIANTS: list[dict[str, Any]] = [
    {},
    {"version": "2", "deadline_ts": 1e12, "ts": 3},
    {"deadline_ts": 5},
    {"future_field": {"a": 1}},
    {"tensors": []},
    {"schema_version": 2},
    {"schema_version": True},
    {"schema_version": 1.0},
    {"schema_version": "1"},
    {"kind": "infer_reply"},
    {"kind": None},
    {"id": 7},
    {"id": None},
    {"module": None},
    {"module": 3},
    {"version": 2},
    {"reply_to": 1},
    {"correlation_id": 5},
    {"deadline_ts": "soon"},
    {"deadline_ts": True},
    {"deadline_ts": "12.5"},
    {"ts": None},
    {"ts": "x"},
    {"tensors": None},
    {"tensors": {"x": 1}},
    {"tensors": [{"name": "x", "dtype": "float32", "shape": [1, "4"]}]},
    {"tensors": [{"name": "x", "dtype": "float32", "shape": [1, True]}]},
    {"tensors": [{"name": "x", "dtype": "float32", "shape": [1.0]}]},
    {"tensors": [{"name": 1, "dtype": "float32", "shape": [1]}]},
    {"tensors": [{"name": "x", "shape": [1]}]},
    {"tensors": ["x"]},
]


def _header(variant: dict[str, Any], drop: str | None = None) -> dict[str, Any]:
    header = {**BASE, **variant}
    if drop:
        header.pop(drop)
    return header


@pytest.mark.parametrize(
    "header",
    [_header(v) for v in VARIANTS]
    + [_header({}, drop) for drop in ("schema_version", "kind", "id", "module", "tensors")],
)
def test_plain_request_agrees_with_pydantic(header: dict[str, Any]) -> None:
    plain = plain_request(header)
    try:
        full = parse_header(header, InferRequest)
    except ProtocolError:
        assert plain is None  # refused: pydantic must say why
        return
    if plain is not None:
        assert plain.id == full.id
        assert plain.module == full.module
        assert plain.version == full.version
        assert plain.deadline_ts == full.deadline_ts


def test_an_ordinary_request_takes_the_plain_path() -> None:
    req = plain_request(_header({"version": "3", "deadline_ts": 12.5}))
    assert req is not None
    assert (req.id, req.module, req.version, req.deadline_ts) == ("r1", "cnn", "3", 12.5)


def test_plain_request_knows_every_field_of_infer_request() -> None:
    # A new field on InferRequest must be added to the plain path (or the plain
    # path would accept headers pydantic refuses).
    assert set(InferRequest.model_fields) == {"schema_version", "tensors", *_PLAIN_TYPES}


# ------------------------------------------------------------------ frames and JSON


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1}',
        b' {"a": [1, 2.5, null]} ',
        b'{"a":1}x',
        b"{",
        b"[1]",
        b"\xff{}",
        b'\xef\xbb\xbf{"a":2}',
        '{"a":"é"}'.encode("utf-16"),
        b'{"a": NaN}',
    ],
)
def test_loads_is_json_loads(raw: bytes) -> None:
    try:
        want: Any = json.loads(raw)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            _loads(raw)
        return
    got = _loads(raw)
    assert json.dumps(got) == json.dumps(want)


def test_dumps_is_json_dumps() -> None:
    obj = {"a": 1.5, "b": float("inf"), "c": 'é\n"', "d": [1, None, True], "e": {"x": 1e300}}
    assert _dumps(obj) == json.dumps(obj, separators=(",", ":")).encode()
    with pytest.raises(TypeError):
        _dumps({"a": object()})


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian: converted
        np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],  # not contiguous: copied
        np.zeros((0, 4), np.float32),  # empty
        np.array([True, False]),
        np.ones((2, 2), np.float16),
        np.array(3, np.int64),  # 0-d
    ],
)
def test_tensor_round_trip(array: np.ndarray[Any, Any]) -> None:
    t = Tensor.from_numpy("a", array)
    assert t.dtype == array.dtype.name
    assert len(t.data) == t.nbytes
    header, tensors = unpack_frame(pack_frame({"k": 1}, [t]))
    assert header["tensors"] == [{"name": "a", "dtype": t.dtype, "shape": list(t.shape)}]
    back = tensors[0].to_numpy()
    assert back.dtype == array.dtype.newbyteorder("<")
    np.testing.assert_array_equal(back.reshape(array.shape), array)


def test_from_numpy_is_a_view_of_contiguous_arrays() -> None:
    array = np.zeros((2, 3), np.float32)
    t = Tensor.from_numpy("a", array)
    array[0, 0] = 7
    assert t.to_numpy()[0, 0] == 7


def test_pack_frame_takes_bytearray_and_strided_views() -> None:
    strided = memoryview(b"abcdef")[::2]
    frame = pack_frame(
        {}, [Tensor("b", "uint8", (3,), bytearray(b"xyz")), Tensor("c", "uint8", (3,), strided)]
    )
    _, tensors = unpack_frame(frame)
    assert [bytes(t.data) for t in tensors] == [b"xyz", b"ace"]


# ------------------------------------------------------------------ transport routing


def _transport() -> MqttTransport:
    return MqttTransport(ConnectionConfig("127.0.0.1", 1, "unit"))


def _deliver(t: MqttTransport, topic: str, payload: bytes = b"p") -> None:
    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    msg.payload = payload
    t._on_message(t._client, None, msg)


def test_messages_go_to_every_matching_filter() -> None:
    t = _transport()
    got: list[tuple[str, str]] = []
    t.subscribe("a/+/c", lambda m: got.append(("plus", m.topic)))
    t.subscribe("a/#", lambda m: got.append(("hash", m.topic)))
    t.subscribe("x/y", lambda m: got.append(("exact", m.topic)))
    for topic in ("a/b/c", "a/b/c", "a/z", "x/y", "q"):
        _deliver(t, topic)
    assert sorted(got) == sorted(
        [("plus", "a/b/c"), ("hash", "a/b/c")] * 2 + [("hash", "a/z"), ("exact", "x/y")]
    )


def test_routing_follows_subscribe_and_unsubscribe() -> None:
    t = _transport()
    got: list[str] = []
    t.subscribe("a/+", lambda m: got.append("first"))
    _deliver(t, "a/b")
    t.subscribe("a/+", lambda m: got.append("second"))  # replaces the handler
    _deliver(t, "a/b")
    t.unsubscribe("a/+")
    _deliver(t, "a/b")
    t.subscribe("a/b", lambda m: got.append("exact"))
    _deliver(t, "a/b")
    assert got == ["first", "second", "exact"]


def test_message_carries_mqtt5_properties() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    t = _transport()
    got: list[Message] = []
    t.subscribe("r", got.append)
    msg = mqtt.MQTTMessage(mid=1, topic=b"r")
    msg.payload = b"x"
    msg.properties = Properties(PacketTypes.PUBLISH)
    msg.properties.ResponseTopic = "back"
    msg.properties.CorrelationData = b"c"
    t._on_message(t._client, None, msg)
    assert got == [Message("r", b"x", False, "back", b"c")]


def test_a_failing_handler_does_not_stop_the_others() -> None:
    t = _transport()
    got: list[str] = []

    def boom(_m: Message) -> None:
        raise RuntimeError("boom")

    t.subscribe("a/#", boom)
    t.subscribe("a/b", lambda m: got.append(m.topic))
    _deliver(t, "a/b")
    assert got == ["a/b"]


def test_route_cache_stays_bounded() -> None:
    t = _transport()
    t.subscribe("s/#", lambda m: None)
    for i in range(3000):
        _deliver(t, f"s/{i}")
    assert len(t._matches) <= 1024


def test_routing_while_subscribing_from_another_thread() -> None:
    t = _transport()
    got: list[str] = []
    t.subscribe("a/#", lambda m: got.append(m.topic))
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            t.subscribe(f"z/{i}", lambda m: None)
            t.unsubscribe(f"z/{i}")
            i += 1

    th = threading.Thread(target=churn)
    th.start()
    try:
        for i in range(2000):
            _deliver(t, f"a/{i % 50}")
    finally:
        stop.set()
        th.join()
    assert len(got) == 2000


def test_publish_handle_asks_paho() -> None:
    info = mqtt.MQTTMessageInfo(5)
    info.rc = mqtt.MQTT_ERR_SUCCESS
    handle = PublishHandle(5, info)
    assert not handle.is_published()
    info._set_as_published()
    assert handle.is_published()
    bare = PublishHandle(6)
    assert not bare.is_published()
    bare.published = True
    assert bare.is_published()


def test_publish_without_a_connection_returns_none() -> None:
    assert _transport().publish("a", b"x") is None


def test_start_and_stop_without_a_broker_return_promptly() -> None:
    import time

    t = MqttTransport(ConnectionConfig("127.0.0.1", 1, "unit", protocol="5", reconnect_min_s=1))
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    t.stop()
    assert time.monotonic() - started < 3
    assert not t.connected


class _FakeBroker:
    """Just enough MQTT 5 for one client: CONNACK, then record what arrives."""

    def __init__(self) -> None:
        import socket

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(5)
        with conn:
            conn.recv(4096)  # CONNECT
            conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, v5, success, no properties
            while not self.done.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                self.received += data

    def close(self) -> None:
        self.done.set()
        self.server.close()


def test_a_publish_is_written_by_the_publishing_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from edge_agent import _transport

    writers: list[str] = []
    original = _transport._Client._packet_write

    def record(self: Any) -> Any:
        if self._out_packet:
            writers.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(_transport._Client, "_packet_write", record)
    broker = _FakeBroker()
    t = MqttTransport(ConnectionConfig("127.0.0.1", broker.port, "unit", protocol="5"))
    try:
        t.start()
        deadline = time.monotonic() + 5
        while not t.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.connected
        writers.clear()
        worker = threading.Thread(target=lambda: t.publish("r/1", b"reply", qos=0), name="worker")
        worker.start()
        worker.join()
        while b"reply" not in broker.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"reply" in broker.received
        assert writers == ["worker"]  # no hand-off to the network thread
    finally:
        t.stop(timeout_s=0.5)
        broker.close()
