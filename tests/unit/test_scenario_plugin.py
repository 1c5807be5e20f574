"""The simulation plugin slot: loading, settings errors with lines, the live loop, sources."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from mesh.scenario import (
    Issue,
    LiveContext,
    PluginLoadError,
    PrepareContext,
    ReportSection,
    Scenario,
    ScenarioError,
    ScenarioReport,
    SimulationPlugin,
    SimulationRun,
    WallClock,
    load_plugin,
    load_scenario,
)
from mesh.scenario._decls import ModuleDecl
from mesh.scenario._faults import FaultTimeline
from mesh.scenario._infra import pipeline_for
from mesh.scenario._live import LiveLoop
from mesh.scenario._schema import CpuHog

# -- a plugin written against the Protocol (a fake: it simulates a counter) -----------


class TickSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticks: int = Field(5, ge=1, le=1000, description="Steps until the end.")
    tick_s: float = Field(1.0, gt=0, description="Simulated seconds per step.")
    sites: list[str] = Field(default_factory=lambda: ["s1", "s2"])


class TickRun:
    def __init__(self, config: TickSettings) -> None:
        self.config = config
        self.n = 0
        self.log: list[str] = []

    @property
    def time_s(self) -> float:
        return self.n * self.config.tick_s

    @property
    def speedup(self) -> float:
        return 0.0

    def prepare(self, ctx: PrepareContext) -> None:
        ctx.substitutions["ticks"] = str(self.config.ticks)
        self.log.append("prepare")

    def start(self, ctx: LiveContext) -> None:
        self.log.append("start")

    def step(self) -> bool:
        self.n += 1
        return self.n < self.config.ticks

    def stop(self) -> None:
        self.log.append("stop")

    def kpis(self) -> dict[str, Any]:
        return {"ticks": self.n}

    def report_section(self, report: ScenarioReport) -> ReportSection:
        return ReportSection(title="Ticks", html="<p>ticks</p>", summary={"ticks": self.n})


class TickPlugin:
    name = "ticks"
    config_model = TickSettings

    def check(self, config: TickSettings, scenario: Scenario) -> list[Issue]:
        if len(set(config.sites)) != len(config.sites):
            return [Issue(("simulation", "sites"), "a site is listed twice")]
        return []

    def sites(self, config: TickSettings, scenario: Scenario) -> list[str]:
        return list(config.sites)

    def duration_s(self, config: TickSettings) -> float:
        return config.ticks * config.tick_s

    def create(self, config: TickSettings, scenario: Scenario) -> TickRun:
        return TickRun(config)


plugin = TickPlugin()
not_a_plugin = object()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # This module is the plugin module the scenarios name.
    monkeypatch.setitem(sys.modules, "tickplugin", sys.modules[__name__])
    return tmp_path


def load(workdir: Path, text: str) -> Scenario:
    (workdir / "s.yaml").write_text(textwrap.dedent(text))
    return load_scenario("s.yaml", search_path=[str(workdir)])


def messages(workdir: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load(workdir, text)
    return info.value.messages


def test_the_fake_and_the_traffic_plugin_are_plugins() -> None:
    from functions.traffic.sim import plugin as traffic

    assert isinstance(plugin, SimulationPlugin)
    assert isinstance(traffic, SimulationPlugin)
    assert isinstance(TickRun(TickSettings()), SimulationRun)
    assert isinstance(WallClock(1.0), SimulationRun)


def test_load_plugin_says_what_is_wrong(workdir: Path) -> None:
    assert load_plugin("tickplugin:plugin") is plugin
    with pytest.raises(PluginLoadError, match="cannot import 'no_such_module'"):
        load_plugin("no_such_module:plugin")
    with pytest.raises(PluginLoadError, match="has no attribute 'nope'"):
        load_plugin("tickplugin:nope")
    with pytest.raises(PluginLoadError, match="is not a simulation plugin .*lacks name"):
        load_plugin("tickplugin:not_a_plugin")


def test_a_plugin_gives_sites_and_the_end(workdir: Path) -> None:
    scenario = load(
        workdir,
        """\
        name: ticks
        nodes:
          agents: {per_site: true, prefix: a-}
        simulation: {plugin: "tickplugin:plugin", ticks: 4, tick_s: 2.5}
        faults:
          - {at_s: 9, kind: agent_crash, target: "agent:a-s2"}
        """,
    )
    assert scenario.site_ids() == ["s1", "s2"]
    assert [a.id for a in scenario.agent_nodes()] == ["a-s1", "a-s2"]
    assert scenario.end_s() == 10.0
    assert scenario.plugin is plugin and scenario.sim_config.ticks == 4


def test_plugin_settings_errors_name_the_line_and_field(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: ticks
        simulation:
          plugin: "tickplugin:plugin"
          ticks: 0
          tick_ss: 1
        """,
    ) == [
        "s.yaml:4: simulation.ticks: expected an integer >= 1 and <= 1000, got 0",
        "s.yaml:5: simulation.tick_ss: unknown field; did you mean 'tick_s'?",
    ]


def test_plugin_checks_and_bad_references_are_reported(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: ticks
        simulation: {plugin: "tickplugin:plugin", sites: [a, a]}
        """,
    ) == ["s.yaml:2: simulation.sites: a site is listed twice"]
    assert messages(
        workdir,
        """\
        name: ticks
        simulation:
          plugin: "tickplugin:nope"
        """,
    ) == ["s.yaml:3: simulation.plugin: module 'tickplugin' has no attribute 'nope'"]


def test_a_fault_after_the_end_and_faults_without_a_live_phase(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: ticks
        nodes:
          agents: {devices: [{id: a1, site: s1}]}
        simulation: {plugin: "tickplugin:plugin", ticks: 2}
        faults:
          - {at_s: 5, kind: agent_crash, target: "agent:a1"}
        """,
    ) == ["s.yaml:6: faults[0].at_s: at 5 s, not before the live phase ends at 2 s"]
    assert messages(
        workdir,
        """\
        name: still
        nodes:
          agents: {devices: [{id: a1, site: s1}]}
        faults:
          - {at_s: 5, kind: agent_crash, target: "agent:a1"}
        """,
    ) == [
        "s.yaml:4: faults: faults need a live phase: a simulation, or duration_s for a "
        "scenario without one"
    ]


def test_sources_are_checked(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: src
        duration_s: 10
        nodes:
          ray: [{name: cloud, tier: cloud}, {name: fog-0, tier: fog}]
          agents: {devices: [{id: a1, site: s1}]}
        modules:
          - name: m1
            model: {registry: m1}
            qos: {p95_ms: 10}
            tiers: [fog]
            source: {kind: file, path: missing.frames}
        """,
    ) == [
        "s.yaml:11: modules[0].source: a source feeds the module on the agents: expected "
        "'edge' in its tiers, got ['fog']",
        "s.yaml:11: modules[0].source.path: no such file 'missing.frames' (relative to "
        "the working directory)",
    ]
    assert messages(
        workdir,
        """\
        name: src
        modules:
          - name: m2
            model: {registry: m2}
            qos: {p95_ms: 10}
            source: {kind: mqtt, path: x.frames}
        """,
    ) == ["s.yaml:6: modules[0].source: expected a topic (and no path) for an mqtt source"]


def test_pipeline_for_each_source_kind(tmp_path: Path) -> None:
    mqtt = ModuleDecl.model_validate(
        {
            "name": "counter",
            "model": {"registry": "c"},
            "qos": {"p95_ms": 25},
            "source": {
                "kind": "mqtt",
                "topic": "sensors/{site}/camera",
                "buffer": 128,
                "stream": "counts",
            },
        }
    )
    spec = pipeline_for(mqtt, "A0", prefix="mesh/v1", substitutions={}, base_dir=tmp_path)
    assert spec == {
        "name": "counts",
        "module": "counter",
        "source": {
            "kind": "mqtt",
            "topic": "mesh/v1/sensors/A0/camera",
            "options": {"buffer": 128},
        },
        "stream": "counts",
        "qos": 1,
    }
    replay = ModuleDecl.model_validate(
        {
            "name": "rms",
            "model": {"registry": "r"},
            "qos": {"p95_ms": 25},
            "source": {"kind": "file", "path": "{out}/replay/{site}.frames", "rate_hz": 5},
        }
    )
    spec = pipeline_for(
        replay, "m1", prefix="p", substitutions={"out": "/data/out"}, base_dir=tmp_path
    )
    assert spec["source"] == {
        "kind": "file",
        "path": "/data/out/replay/m1.frames",
        "rate_hz": 5.0,
        "loop": False,
    }
    assert spec["name"] == spec["stream"] == "rms"


# -- the live loop --------------------------------------------------------------------


class Actions:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def hog_cpu(self, target: str, load: float) -> None:
        self.log.append(("hog", target))

    def stop_hog(self, target: str) -> None:
        self.log.append(("unhog", target))

    def set_link(self, link: str, delay_ms: float, jitter_ms: float) -> None:
        self.log.append(("link", link))

    def restore_link(self, link: str) -> None:
        self.log.append(("restore", link))

    def kill_agent(self, agent_id: str) -> None:
        self.log.append(("kill", agent_id))

    def start_agent(self, agent_id: str) -> None:
        self.log.append(("start", agent_id))

    def remove_node(self, name: str) -> None:
        self.log.append(("remove", name))


def test_the_loop_steps_the_run_and_the_faults_on_simulated_time() -> None:
    run = TickRun(TickSettings(ticks=10, tick_s=1.0))
    hog = CpuHog(at_s=3, kind="cpu_hog", target="agent:a1", duration_s=4)
    actions = Actions()
    loop = LiveLoop(run, FaultTimeline([hog]), actions)
    before = time.time()
    stats = loop.run()
    assert stats.sim_s == 10.0 and stats.steps == 10
    assert actions.log == [("hog", "agent:a1"), ("unhog", "agent:a1")]
    assert [t for t, _ in stats.fault_log] == [3.0, 7.0]
    assert loop.sim_time_at(before - 1.0) == 0.0
    assert loop.sim_time_at(time.time() + 1.0) == 10.0


def test_a_fault_still_running_at_the_end_is_ended() -> None:
    run = TickRun(TickSettings(ticks=3))
    hog = CpuHog(at_s=1, kind="cpu_hog", target="node:fog-0", duration_s=60)
    actions = Actions()
    LiveLoop(run, FaultTimeline([hog]), actions).run()
    assert actions.log == [("hog", "node:fog-0"), ("unhog", "node:fog-0")]


def test_the_wall_clock_paces_a_scenario_without_a_simulation() -> None:
    clock = WallClock(0.3, step_s=0.1)
    t0 = time.monotonic()
    stats = LiveLoop(clock, FaultTimeline([]), None).run()
    assert stats.sim_s == pytest.approx(0.3)
    assert time.monotonic() - t0 >= 0.15  # one simulated second per wall second
    assert clock.kpis() == {} and clock.report_section(ScenarioReport(name="x", sim_seconds=0))
