"""The MQTT contract: topics, envelopes, versioning, frames and tensors (pure logic)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edge_agent import protocol as p
from edge_agent.protocol._frames import peek_header


def test_topics_match_the_design_table() -> None:
    t = p.Topics()
    assert t.status("cam-07") == "mesh/v1/agents/cam-07/status"
    assert t.heartbeat("cam-07") == "mesh/v1/agents/cam-07/heartbeat"
    assert t.desired("cam-07") == "mesh/v1/agents/cam-07/desired"
    assert t.observed("cam-07") == "mesh/v1/agents/cam-07/observed"
    assert t.infer("counter", "fog-1") == "mesh/v1/modules/counter/infer/fog-1"
    assert t.events("int-2-1", "counts") == "mesh/v1/events/int-2-1/counts"
    assert t.reply("cli", "x") == "mesh/v1/replies/cli/x"
    assert p.Topics("site/a").all_agents("status") == "site/a/agents/+/status"
    assert "mesh/v1/modules/+/infer/cam-07" in t.agent_subscriptions("cam-07")
    assert "mesh/v1/events/s1/#" in t.agent_publications("cam-07", "s1")


@pytest.mark.parametrize("prefix", ["", "a/", "a/+/b", "#"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        p.Topics(prefix)


@pytest.mark.parametrize("level", ["", "a/b", "a+b", "x" * 200, "sp ace"])
def test_topic_levels_checked(level: str) -> None:
    with pytest.raises(ValueError, match="not a topic level"):
        p.Topics.check_segment(level)


def _module(**kw: object) -> dict[str, object]:
    return {
        "name": "counter",
        "version": "1",
        "url": "http://h/x.onnx",
        "sha256": "a" * 64,
        "signature": "c2ln",
        **kw,
    }


def test_desired_state_round_trip_ignores_unknown_fields() -> None:
    raw = json.dumps(
        {
            "schema_version": 1,
            "kind": "desired",
            "version": 3,
            "future": {"x": 1},
            "modules": [
                _module(
                    route={"mode": "offload", "target": "fog-1", "epoch": 4, "new": 1}, extra=True
                )
            ],
            "pipelines": [
                {"name": "p1", "module": "counter", "source": {"kind": "file", "path": "r.bin"}}
            ],
        }
    )
    d = p.parse_json(raw, p.DesiredState)
    assert d.version == 3 and d.modules[0].route.target == "fog-1" and d.modules[0].route.epoch == 4
    assert d.pipelines[0].stream_name == "p1"
    again = p.parse_json(d.model_dump_json(), p.DesiredState)
    assert again == d


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_wrong_schema_version_refused_with_reason(version: object) -> None:
    obj: dict[str, object] = {"kind": "desired", "version": 1}
    if version is not None:
        obj["schema_version"] = version
    with pytest.raises(p.ProtocolError) as err:
        p.parse_json(json.dumps(obj), p.DesiredState)
    assert err.value.code is p.ErrorCode.SCHEMA_VERSION
    assert "expected 1" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", p.ErrorCode.MALFORMED),
        (b"[1, 2]", p.ErrorCode.MALFORMED),
        (b"\xff\xfe", p.ErrorCode.MALFORMED),
        (b'{"schema_version": 1, "kind": "observed", "version": 1}', p.ErrorCode.BAD_REQUEST),
        (b'{"schema_version": 1, "version": -1}', p.ErrorCode.BAD_REQUEST),
    ],
)
def test_parse_json_errors(raw: bytes, code: p.ErrorCode) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_json(raw, p.DesiredState)
    assert err.value.code is code


def test_oversize_json_refused() -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_json(b"{" + b" " * 2000 + b"}", p.DesiredState, max_bytes=1000)
    assert err.value.code is p.ErrorCode.PAYLOAD_TOO_LARGE


def test_module_spec_rules() -> None:
    with pytest.raises(ValueError, match="come together"):
        p.ModuleSpec.model_validate(_module(signature=None))
    with pytest.raises(ValueError, match="must offload"):
        p.ModuleSpec(name="m", version="1")
    remote = p.ModuleSpec(name="m", version="1", route=p.Route(mode="offload", target="fog-1"))
    assert not remote.has_artifact
    with pytest.raises(ValueError, match="needs a target"):
        p.Route(mode="offload")
    with pytest.raises(ValueError, match="64 hex"):
        p.ModuleSpec.model_validate(_module(sha256="xyz"))
    assert p.ModuleSpec.model_validate(_module(sha256="A" * 64)).sha256 == "a" * 64
    with pytest.raises(p.ProtocolError, match="not 64"):
        p.ModuleSpec.model_validate(_module()).signature_bytes()


def test_desired_state_rules() -> None:
    with pytest.raises(ValueError, match="repeat"):
        p.DesiredState(version=1, modules=[p.ModuleSpec.model_validate(_module())] * 2)
    with pytest.raises(ValueError, match="unknown module"):
        p.DesiredState.model_validate(
            {
                "version": 1,
                "pipelines": [
                    {"name": "x", "module": "nope", "source": {"kind": "mqtt", "topic": "t"}}
                ],
            }
        )


def test_status_heartbeat_observed_event_round_trip() -> None:
    msgs: list[p.Envelope] = [
        p.AgentStatus(agent="a", state="offline", reason="connection lost"),
        p.Heartbeat(
            agent="a",
            host=p.HostMetrics(
                cpu_percent=1,
                mem_percent=2,
                mem_available_mb=3,
                rss_mb=4,
                load1=0,
                load5=0,
                load15=0,
            ),
            modules={"m": p.ModuleStats(requests=3, p50_ms=0.5)},
        ),
        p.ObservedState(
            agent="a",
            version=2,
            errors=[
                p.ModuleError(
                    module="m", version="2", code=p.ErrorCode.INTEGRITY, message="sha256 mismatch"
                )
            ],
        ),
        p.Event(
            stream="counts",
            seq=7,
            outputs={"y": p.JsonTensor(dtype="float32", shape=[1], data=[1.5])},
        ),
    ]
    for m in msgs:
        assert p.parse_json(m.model_dump_json(), type(m)) == m
    assert msgs[0].id != p.AgentStatus(agent="a", state="online").id


DTYPE_CASES = [
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "float16",
    "int32",
    "uint32",
    "float32",
    "int64",
    "uint64",
    "float64",
]


@pytest.mark.parametrize("dtype", DTYPE_CASES)
def test_frame_round_trip_every_dtype(dtype: str) -> None:
    arr = (np.arange(24) % 3).astype(dtype).reshape(2, 3, 4)
    req = p.InferRequest(module="m", reply_to="r", correlation_id="c", deadline_ts=5.0)
    frame = p.encode_frame(req, [p.Tensor.from_numpy("a", arr), p.Tensor.from_numpy("b", arr[0])])
    header, tensors = p.decode_frame(frame)
    parsed = p.parse_header(header, p.InferRequest)
    assert parsed.correlation_id == "c" and parsed.deadline_ts == 5.0
    assert [t.name for t in tensors] == ["a", "b"]
    np.testing.assert_array_equal(tensors[0].to_numpy(), arr)
    np.testing.assert_array_equal(tensors[1].to_numpy(), arr[0])
    assert isinstance(tensors[0].data, memoryview)  # zero copy


def test_frame_layout_is_magic_length_header_bodies() -> None:
    frame = p.encode_frame({"kind": "x"}, [p.Tensor("t", "uint8", (2,), b"\x01\x02")])
    assert frame[:4] == p.MAGIC
    (n,) = struct.unpack_from("<I", frame, 4)
    assert json.loads(frame[8 : 8 + n])["tensors"] == [
        {"name": "t", "dtype": "uint8", "shape": [2]}
    ]
    assert frame[8 + n :] == b"\x01\x02"


def test_big_endian_and_non_contiguous_arrays_are_normalised() -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4).T
    t = p.Tensor.from_numpy("x", arr)
    _, (back,) = p.decode_frame(p.encode_frame({}, [t]))
    np.testing.assert_array_equal(back.to_numpy(), arr)


def test_header_only_json_frame() -> None:
    header, tensors = p.decode_frame(b'{"schema_version": 1, "module": "m"}')
    assert header["module"] == "m" and tensors == []


@pytest.mark.parametrize(
    ("payload", "code", "needle"),
    [
        (b"XXXX\x00\x00\x00\x00", p.ErrorCode.MALFORMED, "magic"),
        (p.MAGIC + struct.pack("<I", 99) + b"{}", p.ErrorCode.MALFORMED, "header length"),
        (p.MAGIC + struct.pack("<I", 2) + b"[]", p.ErrorCode.MALFORMED, "not a JSON object"),
        (p.MAGIC + struct.pack("<I", 3) + b"{x}", p.ErrorCode.MALFORMED, "malformed JSON"),
        (
            b'{"tensors": [{"name": "a", "dtype": "float32", "shape": [4]}]}',
            p.ErrorCode.MALFORMED,
            "frame is short",
        ),
        (
            b'{"tensors": [{"name": "a", "dtype": "complex64", "shape": [1]}]}',
            p.ErrorCode.BAD_INPUT,
            "unknown dtype",
        ),
        (
            b'{"tensors": [{"name": "a", "dtype": "int8", "shape": [-1]}]}',
            p.ErrorCode.BAD_INPUT,
            "negative",
        ),
        (b'{"tensors": [{"name": "a"}]}', p.ErrorCode.MALFORMED, "needs name, dtype, shape"),
        (b'{"tensors": 3}', p.ErrorCode.MALFORMED, "not a list"),
    ],
)
def test_malformed_frames(payload: bytes, code: p.ErrorCode, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode_frame(payload)
    assert err.value.code is code and needle in str(err.value)


def test_trailing_bytes_and_oversize_refused() -> None:
    frame = p.encode_frame({}, [p.Tensor("t", "uint8", (1,), b"\x01")])
    with pytest.raises(p.ProtocolError, match="trailing"):
        p.decode_frame(frame + b"\x00")
    with pytest.raises(p.ProtocolError) as err:
        p.decode_frame(frame, max_bytes=len(frame) - 1)
    assert err.value.code is p.ErrorCode.PAYLOAD_TOO_LARGE


def test_encode_checks_tensor_sizes() -> None:
    with pytest.raises(p.ProtocolError, match="needs 8"):
        p.encode_frame({}, [p.Tensor("t", "float32", (2,), b"\x00")])
    with pytest.raises(p.ProtocolError, match="unsupported"):
        p.Tensor.from_numpy("c", np.zeros(2, dtype=np.complex64))


def test_peek_header_reads_only_the_header() -> None:
    frame = p.encode_frame({"reply_to": "r"}, [p.Tensor("t", "uint8", (3,), b"abc")])
    assert peek_header(frame)["reply_to"] == "r"  # type: ignore[index]
    assert peek_header(frame[:-1] + b"!!")["reply_to"] == "r"  # type: ignore[index]
    assert peek_header(b"garbage") is None
    assert peek_header(b'{"reply_to": "x"}') == {"reply_to": "x"}


def test_signing_message_binds_name_version_digest() -> None:
    a = p.artifact_signing_message("m", "1", "AB" * 32)
    assert a == p.artifact_signing_message("m", "1", "ab" * 32)
    assert a != p.artifact_signing_message("m", "2", "ab" * 32)
    assert a != p.artifact_signing_message("n", "1", "ab" * 32)


def test_json_tensor() -> None:
    t = p.Tensor.from_numpy("y", np.array([[1.5, 2.0]], dtype=np.float32))
    assert p.json_tensor(t) == p.JsonTensor(dtype="float32", shape=[1, 2], data=[1.5, 2.0])


def test_reply_ok_flag_and_error_expected_signature() -> None:
    err = p.ErrorInfo(
        code=p.ErrorCode.BAD_INPUT,
        message="shape",
        expected=[p.TensorSpec(name="x", dtype="float32", shape=["N", 4])],
    )
    reply = p.InferReply(error=err)
    assert not reply.ok and p.InferReply().ok
    assert err.expected is not None and err.expected[0].describe() == "x: float32[N,4]"
