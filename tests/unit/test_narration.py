"""The live phase's story: faults, migrations and version changes, each told once."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from rich.console import Console

from mesh.control._store import MigrationRecord
from mesh.scenario._faults import describe_fault
from mesh.scenario._narration import Narrator, describe_migration
from mesh.scenario._schema import AgentRestart, CpuHog, LinkDelay, NodeRemove


@dataclass(frozen=True)
class _Route:
    module: str
    version: str
    epoch: int


def _move(**changes: object) -> MigrationRecord:
    base = MigrationRecord(
        id="m1",
        module="counter",
        site="B1",
        from_node="j-B1",
        to_node="a1b2c3d4e5f6a7b8",
        from_tier="edge",
        to_tier="fog",
        reason="counter@B1 on j-B1: observed p95 27.5 ms > SLO 25 ms over 5 s (10 events)",
        explanation="",
        status="starting",
        decided_at=1000.0,
        to_site="fog-1",
        to_kind="ray",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_migration_reads_as_the_issue_asks() -> None:
    line = describe_migration(_move(status="done", switched_at=1000.07))
    assert line == (
        "counter@B1 edge j-B1 → fog fog-1: observed p95 27.5 ms > SLO 25 ms over 5 s "
        "(10 events); switched in 0.07 s"
    )
    back = describe_migration(
        _move(
            from_tier="fog",
            from_node="a1b2",
            to_tier="edge",
            to_node="j-B1",
            to_kind="agent",
            to_site="B1",
            reason="period",
            status="done",
            switched_at=1000.1,
        )
    )
    assert back.startswith("counter@B1 fog a1b2 → edge j-B1: periodic round")
    named = describe_migration(_move(from_tier="fog", from_node="a1b2"), {"a1b2": "fog-1"})
    assert named.startswith("counter@B1 fog fog-1 → ")
    failed = describe_migration(_move(status="failed", error="agent did not answer"))
    assert failed.endswith("; failed: agent did not answer")


def test_faults_read_with_their_target_and_duration() -> None:
    hog = CpuHog(kind="cpu_hog", at_s=120, target="agent:j-B1", duration_s=90, load=0.9)
    assert describe_fault(hog, "start") == "cpu_hog on agent j-B1 (load 0.9) for 90 s"
    assert describe_fault(hog, "end") == "cpu_hog on agent j-B1 ended"
    link = LinkDelay(kind="link_delay", at_s=1, target="edge->fog", delay_ms=80, jitter_ms=5)
    assert describe_fault(link, "start") == "link_delay on link edge->fog: 80 ms ± 5 ms"
    restart = AgentRestart(kind="agent_restart", at_s=5, target="agent:a", down_s=2)
    assert describe_fault(restart, "start") == "agent_restart on agent a: killed, back in 2 s"
    node = NodeRemove(kind="node_remove", at_s=5, target="node:fog-1")
    assert describe_fault(node, "start") == "node_remove on node fog-1"


def test_each_migration_and_version_change_is_told_once_and_the_past_never() -> None:
    out = io.StringIO()
    moves = [_move(id="old", status="done", switched_at=990.0)]
    routes = [_Route("counter", "1", 1)]
    narrator = Narrator(
        Console(file=out, width=200, color_system=None),
        lambda ts: ts - 900.0,
        migrations=lambda: list(reversed(moves)),
        routes=lambda: routes,
    )
    narrator.poll()
    assert narrator.lines == []  # what happened before the live phase is not news

    moves.append(_move(id="m1"))  # under way: not yet
    narrator.poll()
    assert narrator.lines == []
    moves[-1] = _move(id="m1", status="switched", switched_at=1021.0)
    narrator.fault(120.0, "cpu_hog on agent j-B1 (load 0.9) for 90 s")
    narrator.poll()
    moves[-1] = _move(id="m1", status="done", switched_at=1021.0)
    routes[0] = _Route("counter", "2", 4)
    narrator.poll()
    narrator.poll()
    assert narrator.lines[0] == "t=120 s cpu_hog on agent j-B1 (load 0.9) for 90 s"
    assert narrator.lines[1].startswith("t=121 s counter@B1 edge j-B1 → fog fog-1: observed")
    assert narrator.lines[2].endswith("counter: v1 → v2 serving (route epoch 4)")
    assert len(narrator.lines) == 3
    assert "t=121 s counter@B1" in out.getvalue()


def test_a_failing_source_never_stops_the_story() -> None:
    def broken() -> list[MigrationRecord]:
        raise RuntimeError("store closed")

    narrator = Narrator(Console(file=io.StringIO()), float, migrations=broken, routes=list)
    narrator.poll()
    narrator.fault(1.0, "x")
    assert narrator.lines == ["t=1 s x"]
