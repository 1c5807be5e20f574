"""The fault timeline starts and ends each fault once, at its simulated time."""

from __future__ import annotations

from pydantic import TypeAdapter

from mesh.scenario._faults import FaultTimeline, parse_target
from mesh.scenario._schema import Fault


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail_on = fail_on

    def _call(self, *call: str) -> None:
        if call[0] == self.fail_on:
            raise RuntimeError("no such node")
        self.calls.append(call)

    def hog_cpu(self, target: str, load: float) -> None:
        self._call("hog", target, str(load))

    def stop_hog(self, target: str) -> None:
        self._call("unhog", target)

    def set_link(self, link: str, delay_ms: float, jitter_ms: float) -> None:
        self._call("link", link, str(delay_ms))

    def restore_link(self, link: str) -> None:
        self._call("restore", link)

    def kill_agent(self, agent_id: str) -> None:
        self._call("kill", agent_id)

    def start_agent(self, agent_id: str) -> None:
        self._call("start", agent_id)

    def remove_node(self, name: str) -> None:
        self._call("remove", name)


FAULTS = TypeAdapter(list[Fault]).validate_python(
    [
        {"at_s": 30, "kind": "link_delay", "target": "edge->fog", "delay_ms": 80, "duration_s": 20},
        {"at_s": 10, "kind": "cpu_hog", "target": "agent:a", "duration_s": 15},
        {"at_s": 40, "kind": "agent_restart", "target": "agent:b", "down_s": 5},
        {"at_s": 60, "kind": "node_remove", "target": "node:fog-1"},
    ]
)


def test_faults_start_and_end_in_time_order() -> None:
    tl, rec = FaultTimeline(FAULTS), Recorder()
    for t in range(0, 70, 5):
        tl.advance(float(t), rec)
    assert rec.calls == [
        ("hog", "agent:a", "1.0"),
        ("unhog", "agent:a"),
        ("link", "edge->fog", "80.0"),
        ("kill", "b"),
        ("start", "b"),
        ("restore", "edge->fog"),
        ("remove", "fog-1"),
    ]
    assert tl.done
    assert [(w.kind, w.start, w.end) for w in tl.windows] == [
        ("cpu_hog", 10.0, 25.0),
        ("link_delay", 30.0, 50.0),
        ("agent_restart", 40.0, 45.0),
        ("node_remove", 60.0, 60.0),
    ]


def test_finish_ends_running_faults_and_failures_are_recorded_not_raised() -> None:
    tl, rec = FaultTimeline(FAULTS), Recorder(fail_on="remove")
    tl.advance(100.0, rec)  # everything due at once
    assert ("remove", "fog-1") not in rec.calls
    assert tl.errors == ["node_remove node:fog-1 (start) failed: no such node"]
    tl.finish(120.0, rec)
    assert tl.done
    assert ("restore", "edge->fog") in rec.calls


def test_parse_target() -> None:
    assert parse_target("agent:j-A0") == ("agent", "j-A0")
    assert parse_target("node:fog-0") == ("node", "fog-0")
    assert parse_target("link:edge->fog") == ("link", "edge->fog")
    assert parse_target("edge->fog") == ("link", "edge->fog")
