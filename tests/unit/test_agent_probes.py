"""Control reaches agents through its Protocols: an error answer is an answer, silence is not.

``PathProbe`` times an agent by asking it for a module it does not have: the
agent's error reply (the edge's ``EdgeInferenceError``, an ``AgentErrorReply``)
is the round trip; a timeout, a lost connection or any other failure is no
answer. The fakes raise the edge's real errors.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from mesh.control import NodeState, PathProbe
from mesh.control._probes import PING_PARALLEL, PING_RATE_PER_S
from mesh.edge import EdgeConnectionError, EdgeInferenceError, EdgeRequestTimeoutError
from mesh.serving import AgentErrorReply

AGENT = NodeState(name="cam-1", kind="agent", tier="edge", site="s1", alive=True)


class FakeEdge:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.asked: list[tuple[str, str]] = []

    def infer_sync(
        self, module: str, node: str, inputs: Mapping[str, Any], *, timeout_s: float = 5.0
    ) -> object:
        self.asked.append((module, node))
        raise self.error


def test_the_edge_error_answer_is_an_agent_error_reply() -> None:
    error = EdgeInferenceError(module="m", node="cam-1", code="unknown_module", message="no m")
    assert isinstance(error, AgentErrorReply)
    assert not isinstance(
        EdgeRequestTimeoutError(module="m", node="cam-1", correlation_id="c", timeout_s=1.0),
        AgentErrorReply,
    )


def test_an_error_answer_times_the_round_trip() -> None:
    edge = FakeEdge(EdgeInferenceError(module="p", node="cam-1", code="unknown_module", message=""))
    rtt = PathProbe(edge=edge).rtt_ms(AGENT, timeout_s=0.5)
    assert rtt is not None and rtt >= 0.0
    assert edge.asked and edge.asked[0][1] == "cam-1"


@pytest.mark.parametrize(
    "error",
    [
        EdgeRequestTimeoutError(module="p", node="cam-1", correlation_id="c", timeout_s=0.5),
        EdgeConnectionError("not connected"),
        RuntimeError("anything else"),
    ],
)
def test_no_answer_is_no_round_trip(error: Exception) -> None:
    assert PathProbe(edge=FakeEdge(error)).rtt_ms(AGENT, timeout_s=0.5) is None


def test_no_edge_no_probe() -> None:
    assert PathProbe().rtt_ms(AGENT, timeout_s=0.5) is None


class MeetingEdge:
    """Answers only once ``parties`` pings wait at once: a poll pinging in turn never gets one."""

    def __init__(self, parties: int, silent: frozenset[str] = frozenset()) -> None:
        self.barrier = threading.Barrier(parties, timeout=10.0)
        self.silent = silent

    def infer_sync(
        self, module: str, node: str, inputs: Mapping[str, Any], *, timeout_s: float = 5.0
    ) -> object:
        if node in self.silent:
            raise EdgeRequestTimeoutError(
                module=module, node=node, correlation_id="c", timeout_s=timeout_s
            )
        self.barrier.wait()  # BrokenBarrierError after 10 s alone: no answer
        raise EdgeInferenceError(module=module, node=node, code="unknown_module", message="")


def test_agents_are_pinged_at_once_and_the_poll_never_waits() -> None:
    """Pinged one after another, a fleet's poll took a round trip per agent (issue 19)."""
    agents = [
        NodeState(name=f"cam-{i}", kind="agent", tier="edge", site="s", alive=True)
        for i in range(2 * PING_PARALLEL + 1)
    ]
    probe = PathProbe(edge=MeetingEdge(PING_PARALLEL, frozenset({"cam-0"})))
    rtts: dict[str, float | None] = {}
    done = threading.Event()

    def record(agent: str, rtt: float | None) -> None:
        rtts[agent] = rtt
        if len(rtts) == len(agents):
            done.set()

    try:
        # Returns at once; the answering ones meet in groups of PING_PARALLEL.
        assert probe.ping_agents(agents, 1.0, record) == len(agents)
        assert probe.ping_agents(agents, 1.0, record) < len(agents)  # one each in flight
        assert done.wait(30.0), f"{len(rtts)} of {len(agents)} pings ended"
    finally:
        probe.close()
    assert rtts["cam-0"] is None
    assert all(rtts[a.name] is not None for a in agents if a.name != "cam-0")


class AnsweringEdge:
    """Every agent answers at once (no such module); counts who was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def infer_sync(
        self, module: str, node: str, inputs: Mapping[str, Any], *, timeout_s: float = 5.0
    ) -> object:
        with self.lock:
            self.asked.append(node)
        raise EdgeInferenceError(module=module, node=node, code="unknown_module", message="")


def test_a_large_fleet_is_pinged_in_turn_within_the_rate() -> None:
    """Pinging 1,000 agents every poll cost the control plane more than their heartbeats."""
    n = int(PING_RATE_PER_S) * 3 + 7
    agents = [
        NodeState(name=f"cam-{i:04d}", kind="agent", tier="edge", site="s", alive=True)
        for i in range(n)
    ]
    edge = AnsweringEdge()
    probe = PathProbe(edge=edge)
    now = [1000.0]
    probe._clock = lambda: now[0]
    ended = threading.Semaphore(0)
    try:
        per_poll = []
        for _ in range(4):  # a poll a second
            started = probe.ping_agents(agents, 1.0, lambda agent, rtt: ended.release())
            for _ in range(started):
                assert ended.acquire(timeout=10.0)
            per_poll.append(started)
            now[0] += 1.0
    finally:
        probe.close()
    rate = int(PING_RATE_PER_S)
    assert per_poll == [rate, rate, rate, rate]
    # Least recently pinged first: three polls reach every agent but 7 once, the fourth
    # those 7 first.
    first_three, fourth = edge.asked[: 3 * rate], edge.asked[3 * rate :]
    assert len(set(first_three)) == 3 * rate
    assert set(fourth) >= set(a.name for a in agents) - set(first_three)


@pytest.mark.parametrize(
    ("agents_n", "apart_s", "expected"),
    [
        (int(PING_RATE_PER_S), 1.0, int(PING_RATE_PER_S)),  # a poll a second: all of them
        (PING_PARALLEL, 0.01, PING_PARALLEL),  # polls close together: PING_PARALLEL still
        (int(PING_RATE_PER_S), 0.01, PING_PARALLEL),
    ],
)
def test_each_poll_pings_up_to_the_rate_since_the_last(
    agents_n: int, apart_s: float, expected: int
) -> None:
    agents = [
        NodeState(name=f"cam-{i}", kind="agent", tier="edge", site="s", alive=True)
        for i in range(agents_n)
    ]
    probe = PathProbe(edge=AnsweringEdge())
    now = [50.0]
    probe._clock = lambda: now[0]
    ended = threading.Semaphore(0)
    try:
        for _ in range(2):
            started = probe.ping_agents(agents, 1.0, lambda agent, rtt: ended.release())
            for _ in range(started):
                assert ended.acquire(timeout=10.0)
            now[0] += apart_s
        assert started == expected
    finally:
        probe.close()
