"""A scenario's model lifecycle: the drift fault, lifecycle blocks, topic triggers, the watch."""

from __future__ import annotations

import json
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter

from mesh.compute._runner import Runner
from mesh.core._errors import MeshError
from mesh.scenario._actions import ScenarioActions
from mesh.scenario._actions import Testbed as Bed
from mesh.scenario._faults import FaultTimeline, describe_fault
from mesh.scenario._lifecycle import LifecycleWatch, track_lifecycle
from mesh.scenario._live_triggers import LiveTriggers, is_start_trigger
from mesh.scenario._load import ScenarioError, load_scenario
from mesh.scenario._schema import Fault, Scenario
from mesh.sdk import Canary, Drift

ROOT = Path(__file__).resolve().parents[2]

GRID = """\
simulation:
  plugin: functions.traffic.sim:plugin
  network: {grid: {rows: 1, cols: 2}}
  demand: {duration_s: 100}
  cameras: null
"""


def _load(tmp_path: Path, text: str) -> Scenario:
    (tmp_path / "s.yaml").write_text(textwrap.dedent(text))
    return load_scenario(tmp_path / "s.yaml", search_path=[str(ROOT)])


def _messages(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        _load(tmp_path, text)
    return [m.split(": ", 1)[1] for m in info.value.messages]


# -- the drift fault ------------------------------------------------------------------


class _Sim:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def drift(self, site: str, severity: float) -> None:
        self.calls.append((site, severity))


def test_a_drift_fault_changes_the_sites_sensors_and_gives_them_back() -> None:
    faults = TypeAdapter(list[Fault]).validate_python(
        [
            {"at_s": 10, "kind": "drift", "target": "site:A0", "severity": 0.5, "duration_s": 20},
            {"at_s": 15, "kind": "drift", "target": "agent:j-B0"},
        ]
    )
    sim = _Sim()
    fleet = SimpleNamespace(agents={"j-B0": SimpleNamespace(site="B0")})
    actions = ScenarioActions(Bed(fleet=fleet, simulation=sim))  # type: ignore[arg-type]
    timeline = FaultTimeline(faults)
    assert timeline.advance(12, actions) == [
        "drift on site A0: sensors changed (severity 0.5) for 20 s"
    ]
    timeline.advance(16, actions)
    timeline.advance(31, actions)
    assert sim.calls == [("A0", 0.5), ("B0", 1.0), ("A0", 0.0)]
    assert describe_fault(faults[1], "start") == "drift on agent j-B0: sensors changed (severity 1)"
    timeline.finish(40, actions)  # the unbounded one stays (a changed camera stays changed)
    assert sim.calls[-1] == ("A0", 0.0)


def test_a_simulation_that_cannot_drift_is_a_recorded_fault_error_not_a_crash() -> None:
    faults = TypeAdapter(list[Fault]).validate_python(
        [{"at_s": 0, "kind": "drift", "target": "site:A0"}]
    )
    timeline = FaultTimeline(faults)
    timeline.advance(1, ScenarioActions(Bed(simulation=object())))
    assert timeline.errors == [
        "drift site:A0 (start) failed: the simulation cannot change its sensors (drift at 'A0')"
    ]
    with pytest.raises(MeshError, match="no agent 'x'"):
        ScenarioActions(Bed(simulation=_Sim())).drift_sensors("agent:x", 1.0)


def test_drift_faults_are_checked_against_the_simulation_and_its_sites(tmp_path: Path) -> None:
    assert _messages(
        tmp_path,
        "name: d\n" + GRID + "faults:\n"
        "  - {at_s: 5, kind: drift, target: 'site:Z9'}\n"
        "  - {at_s: 5, kind: drift, target: 'node:cloud'}\n",
    ) == [
        "faults[0].target: no site 'Z9' in the simulation (sites: A0, B0)",
        "faults[1].target: expected 'site:<site>' or 'agent:<id>' for drift, got 'node:cloud'",
    ]
    assert _messages(
        tmp_path,
        "name: d\nduration_s: 30\nfaults:\n  - {at_s: 5, kind: drift, target: 'site:A0'}\n",
    ) == ["faults[0].target: a drift fault changes a simulation's sensors: declare a simulation"]


# -- lifecycle blocks and topic triggers ----------------------------------------------


def test_the_drift_scenario_declares_the_loop() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "drift.yaml", search_path=[str(ROOT)])
    counter = next(m for m in scenario.modules if m.name == "counter")
    assert isinstance(counter.drift, Drift) and counter.drift.labels == "traffic/{site}/truth"
    assert isinstance(counter.canary, Canary) and counter.canary.fraction == 0.5
    retrain = next(t for t in scenario.triggers if t.name == "retrain")
    assert retrain.topic == "lifecycle/drift/counter" and not is_start_trigger(retrain)
    assert scenario.lifecycle and {f.kind for f in scenario.faults} == {"drift"}
    assert scenario.end_s() is not None and scenario.end_s() <= 600  # fits a test


def test_bad_lifecycle_blocks_and_triggers_are_named(tmp_path: Path) -> None:
    messages = _messages(
        tmp_path,
        """\
        name: d
        functions: [functions.traffic.app:retrain_counter]
        modules:
          - name: m
            model: {path: m.onnx}
            qos: {p95_ms: 10}
            drift: {statistic: error, threshold: 2}
        triggers:
          - {name: r, function: "functions.traffic.app:retrain_counter", topic: "a/b", every_s: 5}
        """,
    )
    assert any(m.startswith("modules[0].drift: ") and "needs labels=" in m for m in messages)
    assert any(
        "expected one of at_s/every_s, after, topic; got at_s/every_s and topic" in m
        for m in messages
    )


@dataclass
class _Run:
    id: str = "r1"
    function: str = "demand_profiles"

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        return None

    def result(self) -> Any:
        return None


class _Starter:
    def __init__(self) -> None:
        self.fired: list[tuple[str, dict[str, Any]]] = []
        self.event = threading.Event()

    def fire(self, name: str, kwargs: Any, *, trigger: str) -> _Run:
        self.fired.append((name, dict(kwargs)))
        self.event.set()
        return _Run(id=f"r{len(self.fired)}")

    def list_runs(self, **_: Any) -> list[Any]:
        return []


def test_a_topic_trigger_fires_on_its_message_with_the_message(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "drift.yaml", search_path=[str(ROOT)])
    handlers: dict[str, Any] = {}
    unsubscribed: list[str] = []

    def subscribe(pattern: str, handler: Any) -> Any:
        handlers[pattern] = handler
        return lambda: unsubscribed.append(pattern)

    starter = _Starter()
    now = [0.0]
    triggers = LiveTriggers(
        [t for t in scenario.triggers if t.topic],
        starter,  # type: ignore[arg-type]
        lambda _ts: now[0],
        {},
        subscribe=subscribe,
    ).start()
    try:
        assert list(handlers) == ["lifecycle/drift/counter"]
        event = {"module": "counter", "site": "A0", "score": 4.2}
        handlers["lifecycle/drift/counter"]("lifecycle/drift/counter", json.dumps(event).encode())
        now[0] = 95.0  # past the 90 s debounce, in simulated seconds
        assert starter.event.wait(10)
    finally:
        lines = triggers.stop()
    [(name, kwargs)] = starter.fired
    assert name == "retrain_counter" and kwargs["epochs"] == 10
    assert kwargs["message"]["payload"] == event
    assert unsubscribed == ["lifecycle/drift/counter"]
    assert lines[0].startswith("trigger retrain (") and "1 run(s)" in lines[0]
    assert Runner  # the starter stands in for a Runner (its fire/list_runs)


# -- tracking and the watch -----------------------------------------------------------


class _Tracker:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def track(self, spec: Any, **kwargs: Any) -> None:
        self.calls.append((spec, kwargs))


def test_modules_with_a_lifecycle_are_tracked_by_the_services_there_are() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "drift.yaml", search_path=[str(ROOT)])
    counter = next(m for m in scenario.modules if m.name == "counter")
    drift, canary = _Tracker(), _Tracker()
    services = SimpleNamespace(drift=drift, canary=canary)  # no fresh_data (not merged)
    sites = {"j-A0": "A0"}
    notes = track_lifecycle(scenario, services, counter, "SPEC", "v1", sites)
    assert notes == ["counter: no fresh_data service in this control plane; not tracked"]
    assert drift.calls == [
        ("SPEC", {"version": "v1", "event_topics": ["mesh/v1/events/+/counts"], "sites": sites})
    ]
    assert canary.calls == [("SPEC", {"sites": sites})]
    off = scenario.model_copy(update={"lifecycle": False})
    canary.calls.clear()
    track_lifecycle(off, services, counter, "SPEC", "v1", sites)
    assert canary.calls == []  # without the loop, no canary


def test_the_watch_records_scores_drift_events_and_registry_marks() -> None:
    started = 1_000_000.0
    score = SimpleNamespace(module="counter", site="A0", score=3.5)
    versions = [
        SimpleNamespace(version="v1", created_at=started - 100),
        SimpleNamespace(version="v2", created_at=started + 50),
    ]
    registry = SimpleNamespace(
        versions=lambda model: versions,
        history=lambda model: [{"action": "promote", "version": "v2", "at": started + 90}],
    )
    services = SimpleNamespace(drift=SimpleNamespace(scores=lambda: [score]), registry=registry)
    watch = LifecycleWatch(services, {"counter": "vehicle-counter"}, lambda ts: ts - started)
    watch._started = started
    watch.poll()
    watch.on_drift_event("lifecycle/drift/counter", b'{"site": "A0", "score": 3.1, "ts": 1000030}')
    watch.on_drift_event("lifecycle/drift/counter", b"not json")
    life = watch.finish()
    assert life["detect_s"] == 30.0 and life["candidate_s"] == 50.0
    assert life["promoted_s"] == 90.0 and life["rolled_back_s"] is None
    assert [m["label"] for m in life["marks"]] == ["drift A0 (3.1)", "candidate v2", "promoted v2"]
    assert list(life["drift_scores"]) == ["counter@A0"]
    assert LifecycleWatch(services, {}, lambda ts: ts).finish() == {}


def test_the_watch_marks_the_canary_and_its_roll_back_with_the_reason() -> None:
    from mesh.models._steps import LifecycleStep

    started = 1_000_000.0
    steps = [
        LifecycleStep("vehicle-counter", "v1", "canary_started", started - 10),  # before: not shown
        LifecycleStep("vehicle-counter", "v2", "canary_started", started + 20),
        LifecycleStep("vehicle-counter", "v2", "compared", started + 80),
        LifecycleStep(
            "vehicle-counter", "v2", "rolled_back", started + 81, {"reason": "error 2.0 > 1.5"}
        ),
    ]
    registry = SimpleNamespace(
        versions=lambda model: [],
        history=lambda model: [],
        lifecycle=SimpleNamespace(steps=lambda model: steps),
    )
    watch = LifecycleWatch(
        SimpleNamespace(registry=registry), {"counter": "vehicle-counter"}, lambda ts: ts - started
    )
    watch._started = started
    life = watch.finish()
    assert [m["label"] for m in life["marks"]] == [
        "canary v2",
        "rolled back v2: error 2.0 > 1.5",
    ]
    assert life["rolled_back_s"] == 81.0


def test_a_canary_s_promotion_is_marked_when_every_site_has_it() -> None:
    from mesh.models._steps import LifecycleStep

    started = 1_000_000.0
    # The registry's stage changes first; the installs and the fog redeploy follow.
    history = [{"action": "promote", "version": "v2", "at": started + 120}]
    steps = [
        LifecycleStep("vehicle-counter", "v2", "canary_started", started + 20),
        LifecycleStep("vehicle-counter", "v2", "promoted", started + 127, {"agents": ["j-A0"]}),
    ]
    registry = SimpleNamespace(
        versions=lambda model: [],
        history=lambda model: history,
        lifecycle=SimpleNamespace(steps=lambda model: steps),
    )
    watch = LifecycleWatch(
        SimpleNamespace(registry=registry), {"counter": "vehicle-counter"}, lambda ts: ts - started
    )
    watch._started = started
    life = watch.finish()
    assert life["promoted_s"] == 127.0
    assert life["marks"] == [
        {"at": 20.0, "label": "canary v2", "kind": "canary"},
        {"at": 127.0, "label": "promoted v2", "kind": "promoted"},
    ]


def test_a_scenario_module_sets_its_agents_sampling() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "drift.yaml", search_path=[str(ROOT)])
    counter = next(m for m in scenario.modules if m.name == "counter")
    fresh = _Tracker()
    track_lifecycle(scenario, SimpleNamespace(fresh_data=fresh), counter, "SPEC", "v1", {})
    policy = fresh.calls[0][1]["policy"]
    assert counter.sampling is not None and policy == counter.sampling
    assert policy.samples_per_min == 120


class _Endless(_Run):
    cancelled = False

    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> None:
        self.cancelled = True


def test_runs_still_going_at_the_end_are_drained_then_cancelled() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "drift.yaml", search_path=[str(ROOT)])
    run = _Endless(id="r1")
    started = threading.Event()

    def fire(name: str, kwargs: Any, *, trigger: str) -> _Run:
        started.set()
        return run

    starter = SimpleNamespace(fire=fire)
    now = [0.0]
    analytics = [t for t in scenario.triggers if t.name == "analytics"]
    triggers = LiveTriggers(analytics, starter, lambda _ts: now[0], {}).start()  # type: ignore[arg-type]
    now[0] = 301.0  # analytics is due at 300 s
    assert started.wait(10)
    lines = triggers.stop(drain_s=0.3)
    assert run.cancelled
    assert lines[0] == "1 trigger run(s) still running at the end, cancelled: demand_profiles"


def test_the_readme_lifecycle_example(request: pytest.FixtureRequest) -> None:
    from mesh import Mesh
    from mesh.sdk._triggers import check_triggers
    from tests.support.docs import blocks_for

    blocks = blocks_for(request.node.nodeid)
    assert blocks
    for block in blocks:
        namespace: dict[str, object] = {"__name__": "docs_example"}
        exec(compile(block.padded(), block.doc, "exec"), namespace)
        app = namespace["app"]
        assert isinstance(app, Mesh)
        spec = app.modules["VehicleCounter"].spec
        assert spec.drift is not None and spec.drift.labels == "traffic/{site}/truth"
        assert spec.canary is not None and spec.canary.error_margin == 0.1
        (trigger,) = app.triggers.values()
        assert trigger.topic == "lifecycle/drift/counter" and trigger.function == "retrain_counter"
        check_triggers(app.triggers.values(), app.functions, source=block.where)
