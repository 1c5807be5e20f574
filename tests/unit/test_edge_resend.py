"""Requests sent again when their agent comes online: fresh id, same correlation id, first reply wins."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.protocol import (
    InferReply,
    InferRequest,
    Tensor,
    decode_frame,
    encode_frame,
)
from edge_agent.protocol import parse_header as parse
from mesh.edge._requests import PendingRequests

REPLY_TOPIC = "mesh/v1/replies/gw"


def reply_to(frame: bytes) -> bytes:
    header, tensors = decode_frame(frame)
    req = parse(header, InferRequest)
    reply = InferReply(correlation_id=req.correlation_id, module=req.module, node="cam-1")
    return encode_frame(reply, [Tensor.from_numpy("y", tensors[0].to_numpy() * 2)])


def test_a_pending_request_is_sent_again_with_a_fresh_id_and_its_deadline() -> None:
    pending = PendingRequests(name="gw", reply_topic=REPLY_TOPIC)
    x = np.ones((1, 4), np.float32)
    corr, frame, future = pending.open("counter", "cam-1", {"x": x}, timeout_s=5.0)
    pending.open("counter", "cam-2", {"x": x}, timeout_s=5.0)  # another agent's: not sent

    [again] = pending.again("cam-1")
    first = parse(decode_frame(frame)[0], InferRequest)
    second, tensors = decode_frame(again.frame)
    copy = parse(second, InferRequest)
    assert again.correlation_id == corr == copy.correlation_id and again.module == "counter"
    assert copy.id != first.id  # the agent runs it even if it ran (and answered) the first
    assert copy.deadline_ts == first.deadline_ts and copy.reply_to == REPLY_TOPIC
    assert 0 < again.left_s <= 5.0
    np.testing.assert_array_equal(tensors[0].to_numpy(), x)
    assert pending.counters().resent == 1

    # Both copies answered: the first reply resolves the request, the second is dropped.
    pending.handle_reply(reply_to(again.frame))
    pending.handle_reply(reply_to(frame))
    reply, outputs = future.result(0)
    assert reply.correlation_id == corr and outputs[0].to_numpy().tolist() == [[2.0] * 4]
    counters = pending.counters()
    assert counters.replies == 1 and counters.unmatched_replies == 1
    assert pending.again("cam-1") == []  # answered: nothing left to send


def test_requests_past_their_deadline_or_timed_out_are_not_sent_again() -> None:
    pending = PendingRequests(name="gw", reply_topic=REPLY_TOPIC)
    pending.open("counter", "cam-1", [], timeout_s=0.01)
    corr, _, _ = pending.open("counter", "cam-1", [], timeout_s=5.0)
    time.sleep(0.02)  # the first one's deadline passes (no timing asserted)
    [again] = pending.again("cam-1")
    assert again.correlation_id == corr
    with pytest.raises(TimeoutError):
        pending.timed_out(corr, "counter", "cam-1", 5.0)
    assert pending.again("cam-1") == []
