"""Clocks that differ across hosts: deadlines a replica reads in each requester's clock.

A fog host's clock minutes off an edge device's must not expire (or stretch) the
requests that device offloads to a replica there. No broker, no Ray: the
responder answers through a fake publish, as in ``test_offload_routes.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._clock import SenderClocks
from edge_agent.protocol import (
    InferReply,
    InferRequest,
    Tensor,
    decode_frame,
    encode_frame,
    parse_header,
)
from mesh.core._host_clocks import HostClocks
from mesh.serving._contract import ReplicaMqtt
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.support.agent_fixtures import build_tiny_model

AGENT = "cam-1"
REPLY_TOPIC = f"mesh/v1/replies/{AGENT}/offload"
MINUTES_5 = 300.0


# ---------------------------------------------------------------- SenderClocks


def test_each_sender_deadline_is_read_in_its_own_clock() -> None:
    clocks = SenderClocks("replica r1")
    now = time.time()
    ahead = clocks.local_deadline("fast", now + MINUTES_5, now + MINUTES_5 + 2.0)
    behind = clocks.local_deadline("slow", now - MINUTES_5, now - MINUTES_5 + 2.0)
    assert ahead is not None and behind is not None
    # Both read as about 2 s from now in this host's clock (less the transit, here ~0).
    assert now + 1.5 < ahead <= now + 2.5 and now + 1.5 < behind <= now + 2.5
    assert clocks.local_deadline("fast", now + MINUTES_5, None) is None
    offsets = clocks.offsets()
    assert offsets["fast"] == pytest.approx(MINUTES_5, abs=0.5)
    assert offsets["slow"] == pytest.approx(-MINUTES_5, abs=0.5)


def test_past_the_bound_the_correction_stops_with_a_warning_naming_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks = SenderClocks("replica r1", max_skew_s=60.0)
    now = time.time()
    with caplog.at_level(logging.WARNING, logger="edge_agent._clock"):
        deadline = clocks.local_deadline("cam-9", now - MINUTES_5, now - MINUTES_5 + 2.0)
        clocks.local_deadline("cam-9", now - MINUTES_5, now - MINUTES_5 + 2.0)
    assert deadline is not None and deadline < now  # corrected by 60 s only: expired
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once, not per message
    text = warnings[0]
    assert "the clock of cam-9" in text and "the clock of replica r1 on " in text
    assert "-300." in text and "60.0s tolerated" in text and "NTP" in text


def test_senders_beyond_the_limit_forget_the_least_recent() -> None:
    clocks = SenderClocks("replica r1", senders=2)
    now = time.time()
    for sender in ("a", "b", "a", "c"):
        clocks.local_deadline(sender, now, now + 1.0)
    assert set(clocks.offsets()) == {"a", "c"}
    with pytest.raises(ValueError, match="senders"):
        SenderClocks("r", senders=0)
    with pytest.raises(ValueError, match="max_skew_s"):
        SenderClocks("r", max_skew_s=float("nan"))


# ---------------------------------------------------------------- the replica's responder


class Replies:
    """The broker side of the responder: replies by correlation id."""

    def __init__(self) -> None:
        self.got: dict[str, InferReply] = {}
        self.cond = threading.Condition()

    def publish(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        assert topic == REPLY_TOPIC
        header, _ = decode_frame(payload)
        reply = parse_header(header, InferReply)
        with self.cond:
            self.got[reply.correlation_id or ""] = reply
            self.cond.notify_all()

    def wait(self, corr: str) -> InferReply:
        with self.cond:
            assert self.cond.wait_for(lambda: corr in self.got, 10.0), f"no reply {corr}"
            return self.got.pop(corr)


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Any]:
    model = build_tiny_model(tmp_path / "tiny.onnx")
    runner = ModelRunner(model, cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id="m-v1-abc")
    app.warmup()
    replies = Replies()
    r = MqttResponder(app, ReplicaMqtt("mqtt://127.0.0.1:1"), publish=replies.publish)
    r.replies = replies  # type: ignore[attr-defined]
    yield r
    r.stop(timeout_s=2.0)
    app.close()


def offload(corr: str, agent_now: float, timeout_s: float) -> bytes:
    """An agent's offload request, stamped by a clock that reads ``agent_now`` now."""
    req = InferRequest(
        module="m",
        reply_to=REPLY_TOPIC,
        correlation_id=corr,
        ts=agent_now,
        deadline_ts=agent_now + timeout_s,
    )
    x = Tensor.from_numpy("x", np.ones((1, 4), dtype=np.float32))
    return encode_frame(req, [x])


@pytest.mark.parametrize("agent_skew_s", [-MINUTES_5, MINUTES_5])
def test_a_replica_minutes_off_an_agent_answers_its_offloads(
    responder: Any, agent_skew_s: float
) -> None:
    replies: Replies = responder.replies
    for i in range(3):
        responder.handle(offload(f"r{i}", time.time() + agent_skew_s, 2.0), requester=AGENT)
        # The code before: an agent 5 min behind this host had every request dropped
        # as expired (no reply at all); one 5 min ahead had none ever expire.
        assert replies.wait(f"r{i}").ok
    # A request whose deadline passed in the agent's own clock still expires.
    responder.handle(offload("late", time.time() + agent_skew_s - 1.0, 0.5), requester=AGENT)
    responder.handle(offload("after", time.time() + agent_skew_s, 2.0), requester=AGENT)
    assert replies.wait("after").ok
    assert "late" not in replies.got
    assert responder.counts["expired"] == 1 and responder.counts["requests"] == 4
    offset = responder.describe()["clock_offsets_s"][AGENT]
    assert offset == pytest.approx(agent_skew_s, abs=0.5)


# ---------------------------------------------------------------- a host's clock, from the control plane


def test_a_host_minutes_off_is_named_once_with_its_skew(caplog: pytest.LogCaptureFixture) -> None:
    clocks = HostClocks(bound_s=2.0)
    with caplog.at_level(logging.INFO, logger="mesh.core._host_clocks"):
        for t in (1000.0, 1001.0, 1002.0):  # three polls, 0.2 s round trips
            clocks.observe(
                "10.77.0.3 (fog node ab12)", remote_ts=t + 300.1, sent_ts=t, received_ts=t + 0.2
            )
        clocks.observe(
            "10.77.0.4 (fog node cd34)", remote_ts=1000.5, sent_ts=1000.0, received_ts=1000.2
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per host, and none for the one in time
    assert "host 10.77.0.3 (fog node ab12): its clock is +300.0 s" in warnings[0]
    assert "±0.10 s" in warnings[0] and "NTP" in warnings[0]
    assert clocks.offsets()["10.77.0.3 (fog node ab12)"] == pytest.approx(300.0)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mesh.core._host_clocks"):
        clocks.observe(
            "10.77.0.3 (fog node ab12)", remote_ts=1010.1, sent_ts=1010.0, received_ts=1010.2
        )
        clocks.observe(
            "10.77.0.3 (fog node ab12)", remote_ts=700.0, sent_ts=1020.0, received_ts=1020.0
        )
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[0][0] == logging.INFO and "back within 2.0 s" in lines[0][1]
    assert lines[1][0] == logging.WARNING and "-320.0 s" in lines[1][1]  # off again: said again


def test_a_slow_reading_is_not_taken_for_a_skew(caplog: pytest.LogCaptureFixture) -> None:
    clocks = HostClocks(bound_s=2.0)
    # Read 3 s into a 10 s round trip: within what the reading can tell, not over the bound.
    with caplog.at_level(logging.INFO, logger="mesh.core._host_clocks"):
        clocks.observe("h", remote_ts=1003.0, sent_ts=1000.0, received_ts=1010.0)
    assert caplog.records == []
    assert clocks.offsets()["h"] == pytest.approx(-2.0)
    clocks.observe("h", remote_ts=float("nan"), sent_ts=1000.0, received_ts=1000.1)  # ignored
    assert clocks.offsets()["h"] == pytest.approx(-2.0)
    clocks.forget("h")
    assert clocks.offsets() == {}
    with pytest.raises(ValueError, match="bound_s"):
        HostClocks(bound_s=0)


# ---------------------------------------------------------------- an agent's handed-over pipeline


def test_the_replica_grace_period_is_timed_in_the_control_planes_clock() -> None:
    from edge_agent._pipelines import Pipeline
    from edge_agent._sources import Sample
    from edge_agent.protocol import PipelineSpec, Route, SourceSpec
    from tests.unit.test_offload_routes import FakeHost

    # The device runs 5 minutes ahead of the control plane, whose clock the split
    # times (and here the camera's stamps) are in; the agent reads it corrected.
    cp_now = [time.time() - MINUTES_5]
    t0 = cp_now[0]

    def frame(at: float) -> Sample:
        x = Tensor.from_numpy("x", np.full((1, 1), at - t0, np.float32))
        return Sample((x,), time.time(), captured_ts=at)

    host = FakeHost(Route(mode="remote", target="r1", epoch=2, since_ts=t0))
    spec = PipelineSpec(name="p", module="m", source=SourceSpec(kind="mqtt", topic="in"))
    pipe = Pipeline(spec, source=None, host=host, topic="ev", clock=lambda: cp_now[0])  # type: ignore[arg-type]
    for at in (t0 + 0.1, t0 + 0.2):
        pipe._process(frame(at))  # held: the replica's
    host.route = Route(mode="local", epoch=3, since_ts=t0 + 1.0)
    pipe._process(frame(t0 + 0.5))  # in flight at the switch: still the replica's
    pipe._process(frame(t0 + 1.1))
    # Within the grace period by the control plane's clock: the held frames wait for
    # the replica. The code before read the device's clock, 5 minutes past the split,
    # and ran all three here at once, while the replica ran them too.
    assert [json.loads(e)["source_ts"] for e in host.events] == [t0 + 1.1]
    host.answer("r1", t0 + 0.1, t0 + 0.2)  # the replica answers two; 0.5 it never does
    cp_now[0] += 5.0  # the grace period passes, in the control plane's clock
    pipe._process(frame(t0 + 1.2))
    assert [json.loads(e)["source_ts"] for e in host.events] == [t0 + 1.1, t0 + 0.5, t0 + 1.2]
