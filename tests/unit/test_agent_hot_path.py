"""The request hot path's shortcuts give what the general code gives: request headers
checked without pydantic, frames, JSON, tensors, and topic routing in the transport."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent._serving import _PLAIN_TYPES, plain_request
from edge_agent._sources import MqttSource, SourceContext
from edge_agent._transport import ConnectionConfig, Message, MqttTransport, PublishHandle
from edge_agent.protocol import (
    InferReply,
    InferRequest,
    ProtocolError,
    SourceSpec,
    encode_frame,
    parse_header,
)
from edge_agent.protocol._frames import (
    FrameTemplate,
    Tensor,
    _dumps,
    _loads,
    pack_frame,
    unpack_frame,
)

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


class _AckLog:
    """Stands in for paho's client where the transport acknowledges messages."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def _deliver_qos(
    t: MqttTransport, client: _AckLog, topic: str, mid: int, qos: int = 1, payload: bytes = b"p"
) -> None:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload = payload
    msg.qos = qos
    t._on_message(client, None, msg)  # type: ignore[arg-type]


def test_qos1_messages_are_acknowledged_after_their_handlers_unless_deferred() -> None:
    t, client = _transport(), _AckLog()
    held: list[Message] = []
    t.subscribe("cmd", lambda m: None)
    t.subscribe("cam", held.append, deferred_ack=True)

    def boom(_m: Message) -> None:
        raise RuntimeError("boom")

    t.subscribe("bad", boom, deferred_ack=True)
    _deliver_qos(t, client, "cmd", 1)
    _deliver_qos(t, client, "cmd", 2, qos=0)  # nothing to acknowledge
    _deliver_qos(t, client, "nobody", 3)  # no handler: acknowledged, not left in flight
    _deliver_qos(t, client, "cam", 4)
    _deliver_qos(t, client, "bad", 5)  # the handler that took it failed: acknowledged
    assert client.acks == [(1, 1), (3, 1), (5, 1)]
    (frame,) = held
    assert frame.ack is not None
    frame.ack()
    frame.ack()  # once only
    assert client.acks[-1] == (4, 1) and len(client.acks) == 4


def _mqtt_source(t: MqttTransport, **options: int) -> MqttSource:
    spec = SourceSpec(kind="mqtt", topic="cam", options=dict(options))
    source = MqttSource(spec, SourceContext(transport=t))
    source.start()
    return source


def _frame(ts: float) -> bytes:
    return encode_frame({"ts": ts}, [Tensor("x", "uint8", (1,), b"\x01")])


def test_a_camera_frame_is_acknowledged_once_the_pipeline_is_done_with_it() -> None:
    t, client = _transport(), _AckLog()
    source = _mqtt_source(t, buffer=3, unacked=2)
    for mid in (1, 2, 3):
        _deliver_qos(t, client, "cam", mid, payload=_frame(float(mid)))
    # Two frames in hand wait for the pipeline; the third is past the backlog.
    assert client.acks == [(3, 1)]
    first = source.get(0.1)
    assert first is not None and first.captured_ts == 1.0
    first.done()
    assert client.acks == [(3, 1), (1, 1)]
    _deliver_qos(t, client, "cam", 4, payload=_frame(4.0))  # room again: held
    _deliver_qos(t, client, "cam", 5, payload=b"not a frame")  # refused: acknowledged
    assert client.acks == [(3, 1), (1, 1), (5, 1)]
    _deliver_qos(t, client, "cam", 6, payload=_frame(6.0))  # buffer full: frame 2 dropped
    assert (2, 1) in client.acks and (6, 1) in client.acks
    source.stop()  # what is left goes unrun, and is released
    assert sorted(mid for mid, _ in client.acks) == [1, 2, 3, 4, 5, 6]


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

    from edge_agent import _client

    writers: list[str] = []
    original = _client.FastClient._packet_write

    def record(self: Any) -> Any:
        if self._out_packet:
            writers.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(_client.FastClient, "_packet_write", record)
    broker = _FakeBroker()
    t = MqttTransport(ConnectionConfig("127.0.0.1", broker.port, "unit", protocol="5"))
    try:
        t.start()
        deadline = time.monotonic() + 5
        while not t.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.connected
        # The network thread writes a packet queued while it is inside a callback
        # (on_connect may still be running here, or a SUBACK arrive): by design.
        # So try a few times, each once that thread is outside its callbacks; a
        # client that always hands off to the network thread fails every try.
        tries: list[list[str]] = []
        for attempt in range(5):
            with t._client._in_callback_mutex:  # wait for the network thread's callback to end
                writers.clear()
            payload = f"reply-{attempt}".encode()
            worker = threading.Thread(
                target=t.publish, args=("r/1", payload), kwargs={"qos": 0}, name="worker"
            )
            worker.start()
            worker.join()
            while payload not in broker.received and time.monotonic() < deadline:
                time.sleep(0.01)
            assert payload in broker.received
            tries.append(list(writers))
            if writers == ["worker"]:
                break
        assert tries[-1] == ["worker"], tries  # no hand-off to the network thread
    finally:
        t.stop(timeout_s=0.5)
        broker.close()


# ------------------------------------------------------------------ frame encoding shortcuts


def _tensors() -> list[Tensor]:
    return [
        Tensor.from_numpy("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
        Tensor("b", "uint8", (3,), b"xyz"),
    ]


def _json_header(frame: bytes) -> bytes:
    (n,) = struct.unpack_from("<I", frame, 4)
    return frame[8 : 8 + n]


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("fixed", [{}, {"kind": "x"}, {"kind": "x", "s": 'é"\n', "f": 1.5}])
@pytest.mark.parametrize("fields", [{}, {"id": "1"}, {"id": None, "k": [1, {"a": True}]}])
def test_frame_template_writes_what_pack_frame_writes(
    fixed: dict[str, Any], fields: dict[str, Any], n: int
) -> None:
    tensors = _tensors()[:n]
    want = pack_frame({**fixed, **fields}, tensors)
    assert FrameTemplate(fixed).encode(fields, tensors) == want
    # and what json.dumps writes
    metas = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]
    text = json.dumps({**fixed, **fields, "tensors": metas}, separators=(",", ":"))
    assert _json_header(want) == text.encode()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(8, dtype=np.float32).reshape(2, 4),
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian: converted, never as is
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        np.arange(12, dtype=np.int64)[::3],
        np.zeros((0, 4), np.float32),
        np.array(3, np.uint8),
        np.array([True, False]),
    ],
)
def test_frame_template_encodes_an_array_as_its_tensor(array: np.ndarray[Any, Any]) -> None:
    t = FrameTemplate({"kind": "x"})
    fields = {"id": "1"}
    want = pack_frame({"kind": "x", "id": "1"}, [Tensor.from_numpy("a", array)])
    for _ in range(3):  # the first encodes the long way and keeps the tensor's JSON
        assert t.encode_array(fields, "a", array) == want
    same_kind = array.copy() + 1 if array.dtype != bool else ~array
    assert t.encode_array(fields, "a", same_kind) == pack_frame(
        {"kind": "x", "id": "1"}, [Tensor.from_numpy("a", same_kind)]
    )
    with pytest.raises(ProtocolError, match="unsupported"):
        t.encode_array(fields, "a", np.zeros(2, np.complex64))


def test_frame_template_refuses_repeated_fields() -> None:
    with pytest.raises(ValueError, match="tensors"):
        FrameTemplate({"tensors": []})
    t = FrameTemplate({"kind": "x"})
    repeated: list[dict[str, Any]] = [{"kind": "y"}, {"tensors": []}]
    for fields in repeated:
        with pytest.raises(ValueError, match="repeat"):
            t.encode(fields)


def test_pack_frame_keeps_a_tensors_field_in_place() -> None:
    frame = pack_frame({"a": 1, "tensors": "old", "b": 2}, _tensors()[1:])
    assert _json_header(frame).startswith(b'{"a":1,"tensors":[{"name":"b"')
    assert unpack_frame(frame)[0]["b"] == 2


def test_pack_frame_checks_sizes_with_the_tensor_cache() -> None:
    from edge_agent.protocol import _frames

    good = Tensor("b", "uint8", (3,), b"xyz")
    pack_frame({}, [good])
    for bad in (Tensor("b", "uint8", (3,), b"xy"), Tensor("b", "uint16", (3,), b"xyz")):
        with pytest.raises(ProtocolError, match="needs 6|2 bytes"):
            pack_frame({}, [bad])
    with pytest.raises(ProtocolError, match="unknown dtype"):
        pack_frame({}, [Tensor("b", "complex64", (1,), b"12345678")])
    listed = Tensor("c", "uint8", [2], b"ab")  # type: ignore[arg-type]  # not hashable
    assert unpack_frame(pack_frame({}, [listed]))[1][0].shape == (2,)
    for i in range(1100):
        pack_frame({}, [Tensor(f"t{i}", "uint8", (1,), b"x")])
    assert len(_frames._METAS) <= 1024


def test_reply_header_is_what_pack_frame_writes() -> None:
    from edge_agent._runtime import JobResult
    from edge_agent._serving import InferenceEndpoint
    from edge_agent.protocol import ReplyTo as _ReplyTo

    sent: list[bytes] = []

    class _T:
        def publish(self, topic: str, payload: bytes, **_kw: Any) -> None:
            sent.append(payload)

    ep = InferenceEndpoint(_T(), 'node "é"', lambda _m: None)  # type: ignore[arg-type]
    out = _tensors()
    for corr, version, queue_ms in (("c-1", "v2", 0.0123456), (None, None, 3)):
        result = JobResult(out, None, version, queue_ms, 1.23456)
        ep._send_result(_ReplyTo("r", corr, None), "mod", None, result)  # type: ignore[arg-type]
        header, tensors = unpack_frame(sent[-1])
        assert header == {
            "schema_version": 1,
            "kind": "infer_reply",
            "id": header["id"],
            "ts": header["ts"],
            "correlation_id": corr,
            "module": "mod",
            "version": version,
            "node": 'node "é"',
            "queue_ms": round(queue_ms, 3),
            "compute_ms": 1.235,
            "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in out],
        }
        assert sent[-1] == pack_frame({k: v for k, v in header.items() if k != "tensors"}, out)
        assert [bytes(t.data) for t in tensors] == [bytes(t.data) for t in out]
        parse_header(header, InferReply)
    assert len({unpack_frame(p)[0]["id"] for p in sent}) == 2


# ------------------------------------------------------------------ input checks


def test_one_input_shortcut_agrees_with_the_full_check(tmp_path: Path) -> None:
    from edge_agent._runtime import load_model
    from tests.support.agent_fixtures import build_cnn

    m = load_model(build_cnn(tmp_path / "cnn.onnx"), name="cnn", version="1")
    assert m._one is not None
    cases: list[np.ndarray[Any, Any]] = [
        np.zeros((1, 1, 32, 32), np.float32),
        np.zeros((3, 1, 32, 32), np.float32),
        np.zeros((0, 1, 32, 32), np.float32),
        np.zeros((1, 1, 32, 31), np.float32),
        np.zeros((1, 2, 32, 32), np.float32),
        np.zeros((1, 32, 32), np.float32),
        np.zeros((1, 1, 32, 32), np.float64),
        np.zeros((1, 1, 32, 32, 1), np.float32),
    ]
    for array in cases:
        tensors = [Tensor.from_numpy("whatever", array)]
        try:
            want = m._check_feeds(tensors)
        except ProtocolError as exc:
            with pytest.raises(ProtocolError) as got:
                m.feeds(tensors)
            assert str(got.value) == str(exc)
            continue
        feeds = m.feeds(tensors)
        assert list(feeds) == list(want) == ["input"]
        assert feeds["input"].dtype == want["input"].dtype
        np.testing.assert_array_equal(feeds["input"], want["input"])
    two = [Tensor.from_numpy("input", cases[0]), Tensor.from_numpy("other", cases[0])]
    with pytest.raises(ProtocolError, match="unexpected"):
        m.feeds(two)


def test_run_skips_the_session_wrapper_only_on_the_cpu() -> None:
    from edge_agent._runtime import _session_run

    class _Inner:
        def run(self, *_a: Any) -> list[Any]:
            return ["inner"]

    class _Session:
        _sess = _Inner()

        def __init__(self, providers: list[str]) -> None:
            self.providers = providers

        def get_providers(self) -> list[str]:
            return self.providers

        def run(self, *_a: Any) -> list[Any]:
            return ["wrapper"]

    assert _session_run(_Session(["CPUExecutionProvider"]))([], {}, None) == ["inner"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _session_run(_Session(gpu))([], {}, None) == ["wrapper"]


# ------------------------------------------------------------------ paho read shortcuts


def _packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: int,
    mid: int,
    v5: bool,
    props: bytes = b"",
    flags: int = 0,
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += bytes([len(props)]) + props
    body += payload
    n, size = len(body), bytearray()
    while True:
        n, byte = divmod(n, 128)
        size.append(byte | 0x80 if n else byte)
        if not n:
            break
    return bytes([0x30 | qos << 1 | flags]) + bytes(size) + body


def _read_with(
    client_cls: type[mqtt.Client], v5: bool, packet: bytes
) -> tuple[list[tuple[Any, ...]], bytes]:
    """Feed ``packet`` to a client of ``client_cls``; what it delivered and wrote back."""
    import socket

    from paho.mqtt.enums import CallbackAPIVersion

    client = client_cls(
        CallbackAPIVersion.VERSION2, client_id="u", protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    )
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(2)
    got: list[Any] = []
    client.on_message = lambda _c, _u, m: got.append(m)
    client._sock = ours
    try:
        theirs.sendall(packet)
        assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        client.loop_write()
        ours.setblocking(True)
        theirs.setblocking(False)
        try:
            back = theirs.recv(100)
        except BlockingIOError:
            back = b""
    finally:
        client._sock = None
        ours.close()
        theirs.close()
    seen: list[tuple[Any, ...]] = []
    for m in got:  # compare what the properties say, not the objects
        props = m.properties
        says = (getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))
        seen.append((m.topic, m.payload, m.qos, m.mid, bool(m.retain), bool(m.dup), *says))
    return seen, back


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize(
    ("qos", "flags", "props"),
    [
        (0, 0, b""),
        (1, 0, b""),
        (1, 0x01, b""),  # retained
        (1, 0x08, b""),  # duplicate
        (2, 0, b""),
        (1, 0, b"\x08\x00\x01r\x09\x00\x02cd"),  # ResponseTopic, CorrelationData
    ],
)
def test_publish_read_like_paho(v5: bool, qos: int, flags: int, props: bytes) -> None:
    from edge_agent._client import FastClient

    if props and not v5:
        pytest.skip("properties are MQTT 5")
    for payload in (b"", b"p" * 300, b"q" * 20000):
        packet = _packet(
            "a/b/é".encode(), payload, qos=qos, mid=513, v5=v5, props=props, flags=flags
        )
        got, acked = _read_with(FastClient, v5, packet)
        assert (got, acked) == _read_with(mqtt.Client, v5, packet)
        assert len(got) == (qos < 2) and len(acked) == (4 if qos else 0)


def test_puback_without_properties_completes_the_publish() -> None:
    import socket

    from paho.mqtt.enums import CallbackAPIVersion, _ConnectionState

    from edge_agent._client import FastClient

    for v5 in (True, False):
        client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id="u",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        client._sock = ours
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        try:
            info = client.publish("t", b"x", qos=1)
            assert not info.is_published() and client._inflight_messages == 1
            theirs.sendall(bytes([0x40, 2]) + info.mid.to_bytes(2, "big"))  # PUBACK
            client.loop_read()
            assert info.is_published()
            assert client._inflight_messages == 0 and not client._out_messages
            theirs.sendall(bytes([0x40, 2, 0, 99]))  # an unknown id: ignored
            assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        finally:
            client._sock = None
            ours.close()
            theirs.close()
