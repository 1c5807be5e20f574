"""What a message names is checked before it is used: topics, ids, shapes; and the memory budget."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._budget import MemoryBudget
from edge_agent._runtime import Job, JobResult, ModuleServer, load_model
from edge_agent._serving import InferenceEndpoint, plain_request
from edge_agent._transport import Message, PublishHandle
from edge_agent.protocol import (
    MAX_RANK,
    MAX_TENSORS,
    DropLog,
    ErrorCode,
    InferRequest,
    ProtocolError,
    Tensor,
    Topics,
    check_topic_filter,
    check_topic_name,
    decode_frame,
    encode_frame,
    parse_header,
    reply_target,
)
from tests.support.agent_fixtures import build_tiny_model

T = Topics()
BAD_NAMES = {
    "wildcard +": "a/+/b",
    "wildcard #": "a/#",
    "NUL": "a/\x00",
    "control character": "a/\x1b[2J",
    "C1 control": "a/\x85",
    "lone surrogate": "a/\udc80",
    "non-character": "a/\ufffe",
    "non-character above the first plane": "a/\U0002ffff",
    "empty": "",
    "over 65,535 bytes": "a/" + "é" * 40_000,  # 80,002 bytes in fewer characters
    "broker topic": "$SYS/x",
    "not a string": 7,
}


@pytest.mark.parametrize("bad", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_what_a_broker_refuses_is_not_a_topic_name(bad: object) -> None:
    with pytest.raises(ProtocolError) as err:
        check_topic_name(bad, what="reply topic")
    assert err.value.code is ErrorCode.BAD_REQUEST and "reply topic" in err.value.reason


def test_topic_names_and_filters_that_are_fine() -> None:
    assert check_topic_name("mesh/v1/replies/cam-07/é") == "mesh/v1/replies/cam-07/é"
    assert check_topic_name("a" * 65_535)
    assert check_topic_filter("traffic/+/frames/#") == "traffic/+/frames/#"
    for bad in ("a/b#", "a/#/b", "a+/b", "a/\x00/+", "", "$SYS/#"):
        with pytest.raises(ProtocolError):
            check_topic_filter(bad)


def test_reply_and_event_topics_stay_inside_their_prefix() -> None:
    assert T.check_reply("mesh/v1/replies/cli") == "mesh/v1/replies/cli"
    assert T.check_event("mesh/v1/events/site/s") == "mesh/v1/events/site/s"
    for bad in ("mesh/v1/replies/", "mesh/v1/replies", "mesh/v1/agents/x/desired", "x/y"):
        with pytest.raises(ProtocolError, match="not under mesh/v1/replies/"):
            T.check_reply(bad)
    with pytest.raises(ProtocolError, match="not under mesh/v1/events/"):
        T.check_event("mesh/v1/replies/x")


def test_reply_target_answers_a_bad_reply_to_on_a_good_response_topic() -> None:
    good = T.reply("cli")
    to, err = reply_target({"reply_to": good, "correlation_id": "c"}, None, None, T)
    assert to is not None and to.topic == good and to.correlation_id == "c" and err is None
    to, err = reply_target({"reply_to": "a/#"}, good, b"c5", T)
    assert to is not None and to.topic == good and to.correlation_id == "c5"
    assert err is not None and "'#'" in err.reason
    assert reply_target({"reply_to": "a/#"}, None, None, T)[0] is None  # nowhere: drop
    assert reply_target({"reply_to": good}, "elsewhere/x", None, T)[0] is not None
    to, err = reply_target({}, "elsewhere/x", None, T)  # an MQTT 5 topic outside: drop
    assert to is None and err is not None
    assert reply_target({}, None, None, T) == (None, None)  # no reply wanted
    to, err = reply_target({"reply_to": good, "correlation_id": "x" * 300}, None, None, T)
    assert to is not None and to.correlation_id is None and err is not None


def test_a_drop_log_writes_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropLog(logging.getLogger("test.drops"), every_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.drops"):
        for i in range(1000):
            drops.drop("dropped %d", i)
    assert drops.dropped == 1000
    assert [r.getMessage() for r in caplog.records] == ["dropped 0"]


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"name": "x", "dtype": "float32", "shape": [True]}, "non-negative integers"),
        ({"name": "x", "dtype": "float32", "shape": [1.5]}, "non-negative integers"),
        ({"name": "x", "dtype": "float32", "shape": ["3"]}, "non-negative integers"),
        ({"name": "x", "dtype": "float32", "shape": [1] * (MAX_RANK + 1)}, "at most"),
        ({"name": "x", "dtype": "float32", "shape": [2**62, 2**62]}, "frame is short"),
        ({"name": 5, "dtype": "float32", "shape": [1]}, "needs name, dtype, shape"),
        ({"name": "x" * 300, "dtype": "float32", "shape": [1]}, "over 256"),
        ("x", "needs name, dtype, shape"),
    ],
)
def test_tensor_headers_are_checked_before_sizing(meta: Any, needle: str) -> None:
    raw = json.dumps({"tensors": [meta]}).encode()
    with pytest.raises(ProtocolError, match=needle):
        decode_frame(raw)


def test_hostile_json_headers_are_malformed_not_a_crash() -> None:
    for raw in (
        b"{" + b'"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # RecursionError inside
        b'{"tensors": [{"name": "x", "dtype": "float32", "shape": [Infinity]}]}',
        json.dumps({"tensors": [{"name": "x", "dtype": "int8", "shape": [0]}] * 65}).encode(),
    ):
        with pytest.raises(ProtocolError) as err:
            decode_frame(raw)
        assert err.value.code in (ErrorCode.MALFORMED, ErrorCode.BAD_INPUT)
    assert MAX_TENSORS == 64


def test_request_fields_are_bounded_and_finite() -> None:
    base = {"schema_version": 1, "kind": "infer_request", "module": "m"}
    for bad in ({"id": "i" * 257}, {"deadline_ts": float("nan")}, {"ts": float("inf")}):
        header = {**base, **bad}
        assert plain_request(header) is None  # not on the fast path: pydantic says why
        with pytest.raises(ProtocolError) as err:
            parse_header(header, InferRequest)
        assert err.value.code is ErrorCode.BAD_REQUEST
    assert plain_request({**base, "id": "ok", "deadline_ts": 5.0}) is not None


class _Replies:
    """A Transport's publish, recorded (the endpoint uses nothing else here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes, **_kw: Any) -> PublishHandle:
        self.sent.append((topic, decode_frame(payload)[0]))
        handle = PublishHandle(len(self.sent))
        handle.published = True
        return handle


def test_the_endpoint_never_replies_to_a_bad_topic() -> None:
    replies = _Replies()
    ep = InferenceEndpoint(replies, "cam", lambda m: None, topics=T)  # type: ignore[arg-type]
    good = T.reply("cli")
    topic = T.infer("m", "cam")

    def send(reply_to: str, response_topic: str | None = None) -> None:
        frame = encode_frame(InferRequest(module="m", reply_to=reply_to, correlation_id="c"))
        ep.on_request(Message(topic, frame, False, response_topic, None))

    for bad in ("a/#", "x\x00", "elsewhere/x", "mesh/v1/replies/" + "a" * 70_000):
        send(bad)
    assert replies.sent == []  # dropped, one log line
    send("a/#", good)
    ((to, header),) = replies.sent
    assert to == good and header["error"]["code"] == "bad_request"
    send(good)
    assert replies.sent[-1][1]["error"]["code"] == "unknown_module"  # a good one: answered


def test_the_memory_budget_refuses_what_does_not_fit() -> None:
    budget = MemoryBudget(1000, trim_after_bytes=0)
    assert budget.take(600) and not budget.take(500) and budget.refused == 1
    budget.hold(500)  # a reply already computed: held even past the limit
    assert budget.in_use == 1100 and not budget.take(1)
    budget.give(1100)
    assert budget.in_use == 0 and budget.take(1000)
    with pytest.raises(ValueError, match="at least 1 byte"):
        MemoryBudget(0)


def _x(rows: int = 1) -> Tensor:
    return Tensor.from_numpy("x", np.ones((rows, 4), np.float32))


def test_a_module_server_holds_jobs_within_the_budget_and_batches_within_bytes(
    tmp_path: Path,
) -> None:
    budget = MemoryBudget(1000)
    server = ModuleServer("tiny", max_queue=64, budget=budget, max_batch_bytes=250)
    server.swap(load_model(build_tiny_model(tmp_path / "t.onnx"), name="tiny", version="1"))
    gate = threading.Event()
    depths: list[int] = []
    done = threading.Semaphore(0)

    def record(_r: JobResult) -> None:
        depths.append(server.depth)
        done.release()

    try:
        assert server.submit(Job([_x()], lambda r: (gate.wait(5), done.release()), nbytes=100))
        time.sleep(0.1)  # the worker holds the first job at the gate
        for _ in range(6):
            assert server.submit(Job([_x()], record, nbytes=100))
        reason = server.submit_or_reason(Job([_x()], record, nbytes=400))
        assert reason is not None and "memory budget full (700 of 1000 bytes" in reason
        gate.set()
        for _ in range(7):
            assert done.acquire(timeout=10)
        assert depths == [4, 4, 2, 2, 0, 0]  # batches of 2 (250 bytes), not one of 6
        deadline = time.monotonic() + 5
        while budget.in_use and time.monotonic() < deadline:
            time.sleep(0.01)
        assert budget.in_use == 0  # every job gave its bytes back
    finally:
        gate.set()
        server.stop()
