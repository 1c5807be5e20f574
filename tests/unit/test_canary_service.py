"""The canary service on fakes (agents, installer, live errors, replicas) and a real registry.

The fakes stand behind the service's Protocols: agents whose heartbeats report
the version they serve and what it served, an installer that switches them (or
fails), live errors per version, a serving manager that records redeploys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_agent.protocol import (
    Heartbeat,
    HostMetrics,
    InstalledModule,
    ModuleStats,
    ObservedState,
)
from mesh.core._errors import SpecError
from mesh.core._metrics import MetricsRegistry
from mesh.edge._records import AgentView
from mesh.models._registry import ModelRegistry, Stage
from mesh.runtime._canary import CanaryService
from mesh.runtime._canary_figures import NOT_SCORED
from mesh.sdk._specs import Canary, Drift, ModuleSpec, QoS
from mesh.serving._contract import DeployError, ModelArtifact
from mesh.serving._deployment import DeploymentView
from mesh.serving._routes import ModuleRoute
from tests.unit.test_registry import make_registry, tiny_onnx

MODULE, MODEL = "counter", "vehicle-counter"
POLICY = Canary(fraction=0.25, window_s=60, min_samples=30, error_margin=0.0, p95_ratio=1.5,
                max_wait_s=300)  # fmt: skip
#: Its live error is joined from its outputs and the labels of its error drift check.
DRIFT = Drift(statistic="error", threshold=3.0, labels="traffic/{site}/truth")
SPEC = ModuleSpec(name=MODULE, model=MODEL, qos=QoS(p95_latency_ms=50), canary=POLICY, drift=DRIFT)
HOST = HostMetrics(
    cpu_percent=1, mem_percent=1, mem_available_mb=1, rss_mb=1, load1=0, load5=0, load15=0
)


@dataclass
class Clock:
    t: float = 1_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Agent:
    version: str
    site: str
    requests: int = 0
    errors: int = 0
    beat_at: float | None = None
    p95_ms: float | None = None


@dataclass
class Fleet:
    """Agents serving ``MODULE``; p95 per version; heartbeats when :meth:`serve` runs."""

    clock: Clock
    agents: dict[str, Agent]
    p95: dict[str, float] = field(default_factory=lambda: {"v0": 10.0, "v1": 10.0, "v2": 11.0})
    failing: dict[str, float] = field(default_factory=dict)  # version -> share failed
    away: set[str] = field(default_factory=set)  # offline agents (their last state kept)

    def serve(self, n: int) -> None:
        for agent in self.agents.values():
            agent.requests += n
            agent.errors += int(n * self.failing.get(agent.version, 0.0))
            agent.p95_ms = self.p95[agent.version]
            agent.beat_at = self.clock()

    def view(self, agent_id: str) -> AgentView:
        a = self.agents[agent_id]
        stats = ModuleStats(
            version=a.version, requests=a.requests, errors=a.errors, p95_ms=a.p95_ms
        )
        beat = Heartbeat(agent=agent_id, site=a.site, host=HOST, modules={MODULE: stats})
        observed = ObservedState(
            agent=agent_id, version=1, installed=[InstalledModule(name=MODULE, version=a.version)]
        )
        return AgentView(
            agent_id, "offline" if agent_id in self.away else "online", a.site, None, None, beat if a.beat_at else None, a.beat_at,
            observed, 1,
        )  # fmt: skip

    # AgentSource
    def agents_views(self) -> list[AgentView]:
        return [self.view(a) for a in sorted(self.agents)]


class Edge:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def agents(self) -> list[AgentView]:
        return self.fleet.agents_views()


@dataclass
class Installer:
    fleet: Fleet
    fail: set[str] = field(default_factory=set)
    fail_version: dict[str, str] = field(default_factory=dict)  # agent -> version refused
    # Too slow: the wait ends, then the agent applies the (retained) desired state.
    slow: set[str] = field(default_factory=set)
    installs: list[tuple[str, str]] = field(default_factory=list)
    traffic: int = 0  # requests every agent serves while one installs

    def install(
        self, agent_id: str, module: str, artifact: ModelArtifact, timeout_s: float
    ) -> None:
        assert module == MODULE and artifact.model == MODEL and artifact.data
        if agent_id in self.fail and artifact.version != "v1":
            raise DeployError(f"agent {agent_id} did not install {module} {artifact.version}")
        if self.fail_version.get(agent_id) == artifact.version:
            raise DeployError(f"agent {agent_id} did not install {module} {artifact.version}")
        if agent_id in self.slow and artifact.version != "v1":
            self.fleet.agents[agent_id].version = artifact.version
            raise DeployError(f"agent {agent_id}: no observed state in {timeout_s} s")
        self.fleet.serve(self.traffic)
        self.installs.append((agent_id, artifact.version))
        self.fleet.agents[agent_id].version = artifact.version


@dataclass(frozen=True)
class Window:
    n: int
    mae: float | None


@dataclass
class Errors:
    """Live errors per version (Part 1's LiveErrors.window, faked)."""

    mae: dict[str, float]
    n: int = 50
    asked: list[dict[str, Any]] = field(default_factory=list)
    at: dict[tuple[str, str], float] = field(default_factory=dict)  # (version, site) -> MAE
    sites: list[str | None] = field(default_factory=list)

    def window(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> Window:
        self.asked.append({"module": module, "since": since, "version": version})
        self.sites.append(site)
        assert version is not None
        if site is not None and (version, site) in self.at:
            return Window(self.n, self.at[(version, site)])
        return Window(self.n, self.mae.get(version))


@dataclass
class Manager:
    deployed: list[tuple[str, str, str | None]] = field(default_factory=list)

    def deployments(self) -> list[DeploymentView]:
        art = ModelArtifact(MODEL, "v1", "0" * 64, b"x", None)  # type: ignore[arg-type]
        return [DeploymentView(SPEC, art, "fog", "fog-1", None, ("n1",))]

    def deploy(self, spec: ModuleSpec, version: Any = "production", **kw: Any) -> ModuleRoute:
        self.deployed.append((spec.name, str(version), kw.get("tier")))
        return ModuleRoute(MODULE, str(version), 1, ())


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = make_registry(tmp_path)
    v1 = reg.register(MODEL, tiny_onnx(1.0), code_version="c1")
    reg.promote(MODEL, v1.version)
    reg.register(MODEL, tiny_onnx(2.0), code_version="c2")  # v2, the candidate
    yield reg
    reg.close()


@dataclass
class Rig:
    clock: Clock
    fleet: Fleet
    installer: Installer
    manager: Manager
    service: CanaryService
    registry: ModelRegistry

    def steps(self) -> list[str]:
        return [s.step for s in self.registry.lifecycle.steps(MODEL)]

    def step(self, name: str) -> dict[str, Any]:
        return next(dict(s.detail) for s in self.registry.lifecycle.steps(MODEL) if s.step == name)


def rig(registry: ModelRegistry, errors: Errors | None, spec: ModuleSpec = SPEC) -> Rig:
    clock = Clock()
    fleet = Fleet(clock, {f"cam-{i}": Agent("v1", f"site-{i}") for i in range(4)})
    fleet.serve(10)
    installer, manager = Installer(fleet), Manager()
    service = CanaryService(
        registry, installer, Edge(fleet), manager=manager, live_errors=errors, clock=clock
    )
    service.track(spec)
    return Rig(clock, fleet, installer, manager, service, registry)


def run_window(r: Rig, seconds: float = 61.0, requests: int = 40) -> None:
    r.clock.t += seconds
    r.fleet.serve(requests)
    r.service.tick()


# ---------------------------------------------------------------- promote


def test_a_better_candidate_is_promoted_fleet_wide(registry: ModelRegistry) -> None:
    errors = Errors({"v1": 1.0, "v2": 0.5})
    r = rig(registry, errors)
    r.service.tick()
    assert r.installer.installs == [("cam-0", "v2")]  # ceil(0.25 x 4) = 1 agent
    assert r.steps() == ["candidate_seen", "canary_started", "canary_sites"]
    assert r.step("canary_sites")["canary"] == {"cam-0": "site-0"}
    assert "not tried" in r.step("canary_sites")["fog"]
    assert [a["candidate"] for a in r.service.active()] == ["v2"]

    run_window(r, seconds=30)  # within the window: nothing decided
    assert r.steps()[-1] == "canary_sites"
    run_window(r)
    assert r.steps()[-2:] == ["compared", "promoted"]
    compared = r.step("compared")
    assert compared["verdict"] == "promote"
    assert compared["candidate"]["mae"] == 0.5 and compared["production"]["mae"] == 1.0
    assert compared["candidate"]["p95_ms"] == 11.0 and compared["production"]["p95_ms"] == 10.0
    assert {q["version"] for q in errors.asked} == {"v1", "v2"}
    assert registry.get(MODEL).version == "v2"
    assert {a.version for a in r.fleet.agents.values()} == {"v2"}
    assert r.manager.deployed == [(MODULE, "v2", "fog")]
    assert r.step("promoted")["agents"] == ["cam-0", "cam-1", "cam-2", "cam-3"]
    assert r.service.active() == []

    r.clock.t += 100
    r.service.tick()  # decided: never tried again
    assert r.steps()[-1] == "promoted"


def test_an_agent_offline_at_promotion_gets_the_new_version_when_back(
    registry: ModelRegistry,
) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.5}))
    r.fleet.away.add("cam-3")
    r.service.tick()
    run_window(r)
    promoted = r.step("promoted")
    assert promoted["agents"] == ["cam-0", "cam-1", "cam-2"]
    assert "cam-3" in promoted["failures"] and r.fleet.agents["cam-3"].version == "v1"
    r.service.tick()  # still away: nothing tried
    assert ("cam-3", "v2") not in r.installer.installs
    r.fleet.away.clear()
    r.service.tick()
    assert r.fleet.agents["cam-3"].version == "v2"
    note = r.step("note")
    assert note["agent"] == "cam-3" and note["caught_up"] == "installed"
    assert r.service.catch_up.owed() == {}
    r.service.tick()
    assert r.installer.installs.count(("cam-3", "v2")) == 1


def test_a_promotion_replaces_what_an_agent_was_owed_before(registry: ModelRegistry) -> None:
    """Owed v1 (a roll back that failed there), then promoted to v2: v2 it keeps."""
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.5}))
    r.fleet.agents["cam-2"].version = "v0"
    r.installer.fail_version["cam-2"] = "v1"
    r.service.catch_up.owe(MODEL, MODULE, "cam-2", "v1", "rolled back")
    r.service.tick()
    run_window(r)
    assert r.steps()[-1] == "promoted" and r.fleet.agents["cam-2"].version == "v2"
    assert r.service.catch_up.owed() == {}


def test_an_agent_whose_installs_keep_failing_is_given_up(registry: ModelRegistry) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.5}))
    r.installer.fail.add("cam-3")
    r.service.tick()
    run_window(r)
    assert "cam-3" in r.step("promoted")["failures"]
    for _ in range(5):
        r.service.tick()
    assert r.fleet.agents["cam-3"].version == "v1" and r.service.catch_up.owed() == {}
    assert r.step("note")["caught_up"].startswith("given up after 3 tries")


# ---------------------------------------------------------------- roll back


@pytest.mark.parametrize(
    ("mae", "p95", "failing", "why"),
    [
        (2.0, 11.0, 0.0, "live error 2 is above production's 1"),
        (0.5, 40.0, 0.0, "p95 40 ms is above production's 10 ms x 1.5"),
        (0.5, 11.0, 0.5, "requests failed"),
    ],
)
def test_a_worse_candidate_is_rolled_back_and_archived(
    registry: ModelRegistry, mae: float, p95: float, failing: float, why: str
) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": mae}))
    r.fleet.p95["v2"] = p95
    r.fleet.failing["v2"] = failing
    r.service.tick()
    run_window(r)
    assert r.steps()[-3:] == ["compared", "rolled_back", "archived"]
    assert why in r.step("rolled_back")["reason"]
    assert r.step("rolled_back")["agents"] == ["cam-0"]
    assert registry.get(MODEL).version == "v1"
    assert registry.get(MODEL, "v2").stage == Stage.ARCHIVED
    assert {a.version for a in r.fleet.agents.values()} == {"v1"}
    assert r.manager.deployed == [] and r.service.active() == []


def test_production_is_judged_where_the_candidate_serves(registry: ModelRegistry) -> None:
    """Production errs most on other sites (drifting): over all sites it looks worse than
    the candidate, which is worse than production on its own canary site."""
    errors = Errors({"v1": 1.5, "v2": 0.9}, at={("v1", "site-0"): 0.6})
    r = rig(registry, errors)
    r.service.tick()
    started = r.service.active()[0]["started_at"]
    run_window(r)
    compared = r.step("compared")
    assert compared["production"]["mae"] == 0.6 and compared["candidate"]["mae"] == 0.9
    assert compared["verdict"] == "roll_back" and registry.get(MODEL).version == "v1"
    assert {"module": MODULE, "since": started - 60, "version": "v1"} in errors.asked
    assert "site-0" in errors.sites


def test_not_enough_samples_by_max_wait_rolls_back(registry: ModelRegistry) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.1}, n=5))
    r.service.tick()
    run_window(r)
    run_window(r, seconds=200)
    assert r.steps()[-1] == "canary_sites"  # still waiting (max_wait 300 s)
    run_window(r, seconds=40)
    assert r.steps()[-3:] == ["compared", "rolled_back", "archived"]
    assert r.step("rolled_back")["reason"].startswith("not enough to compare after 300 s")
    assert registry.get(MODEL).version == "v1"


def test_a_failed_install_leaves_production_serving(registry: ModelRegistry) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.1}))
    r.installer.fail.add("cam-0")
    r.service.tick()
    assert r.steps() == ["candidate_seen", "rolled_back", "archived"]
    assert "install on agent cam-0 failed" in r.step("rolled_back")["reason"]
    assert registry.get(MODEL).version == "v1"
    assert registry.get(MODEL, "v2").stage == Stage.ARCHIVED
    assert {a.version for a in r.fleet.agents.values()} == {"v1"}
    r.clock.t += 100
    r.service.tick()  # not tried again
    assert r.steps()[-1] == "archived"


def test_an_install_that_timed_out_is_undone_on_that_agent_too(registry: ModelRegistry) -> None:
    """The desired state naming the candidate is retained: the slow agent takes it later
    unless the roll back publishes production there as well."""
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.1}))
    r.installer.slow.add("cam-0")
    r.service.tick()
    assert "install on agent cam-0 failed" in r.step("rolled_back")["reason"]
    assert r.step("rolled_back")["agents"] == ["cam-0"]
    assert r.installer.installs == [("cam-0", "v1")]
    assert {a.version for a in r.fleet.agents.values()} == {"v1"}


# ---------------------------------------------------------------- without live errors


def test_without_live_errors_p95_and_failures_decide_and_a_step_says_so(
    registry: ModelRegistry,
) -> None:
    r = rig(registry, None)
    r.installer.traffic = 7  # served while installing: not the canary's
    r.service.tick()
    assert r.step("canary_started")["live_error"] == NOT_SCORED
    run_window(r)
    compared = r.step("compared")
    assert compared["candidate"]["samples"] == 40 and compared["candidate"]["mae"] is None
    assert compared["production"]["requests"] == 3 * 40
    assert compared["verdict"] == "promote" and "not scored" in compared["reason"]
    assert registry.get(MODEL).version == "v2"


@pytest.mark.parametrize(
    "drift", [None, Drift(statistic="outputs", threshold=3.0)], ids=["no-drift", "outputs"]
)
def test_a_module_whose_outputs_are_not_joined_with_labels_is_not_scored(
    registry: ModelRegistry, drift: Drift | None
) -> None:
    """The control plane always hands the drift service's live errors over; a module
    without an error drift check has none there, and would wait out max_wait_s."""
    r = rig(registry, Errors({}, n=0), SPEC.model_copy(update={"drift": drift}))
    r.service.tick()
    assert r.step("canary_started")["live_error"] == NOT_SCORED
    run_window(r)
    compared = r.step("compared")
    assert compared["verdict"] == "promote" and "not scored" in compared["reason"]
    assert registry.get(MODEL).version == "v2"


@pytest.mark.parametrize(
    ("scores", "verdict", "serving"),
    [({"v1": 4.0, "v2": 0.8}, "promote", "v2"), ({"v1": 4.0, "v2": 6.0}, "roll_back", "v1")],
    ids=["closer-to-its-reference", "further"],
)
def test_without_labels_each_versions_drift_score_is_the_measure(
    registry: ModelRegistry, scores: dict[str, float], verdict: str, serving: str
) -> None:
    """Agreement with a reference: a candidate whose outputs sit further from its own
    reference than production's from theirs is never promoted."""
    spec = SPEC.model_copy(update={"drift": Drift(statistic="outputs", threshold=3.0)})
    r = rig(registry, Errors({"v1": 0.1, "v2": 9.0}), spec)  # live errors: not read
    drift_scores = Errors(scores)
    r.service.drift_scores = drift_scores
    r.service.tick()
    assert r.step("canary_started")["live_error"].startswith("scored on the drift score")
    run_window(r)
    compared = r.step("compared")
    assert compared["verdict"] == verdict and "drift score" in compared["reason"]
    assert compared["candidate"]["mae"] == scores["v2"]
    assert {a.version for a in r.fleet.agents.values()} == {serving}
    assert drift_scores.asked and not r.service.live_errors.asked  # type: ignore[union-attr]


def test_a_lone_agent_is_compared_with_itself_before_the_canary(
    registry: ModelRegistry,
) -> None:
    errors = Errors({"v1": 1.0, "v2": 0.5})
    r = rig(registry, errors)
    for gone in ("cam-1", "cam-2", "cam-3"):
        del r.fleet.agents[gone]
    r.service.tick()
    started = r.service.active()[0]["started_at"]
    assert "before the canary" in r.step("canary_sites")["production"]
    run_window(r)
    compared = r.step("compared")
    assert compared["production"]["p95_ms"] == 10.0  # its heartbeat before the install
    assert {"module": MODULE, "since": started - 60, "version": "v1"} in errors.asked
    assert compared["verdict"] == "promote" and registry.get(MODEL).version == "v2"


# ---------------------------------------------------------------- the rest


def test_the_newest_candidate_newer_than_production_is_tried(registry: ModelRegistry) -> None:
    registry.promote(MODEL, "v2")
    registry.register(MODEL, tiny_onnx(3.0), code_version="c0")  # v3, newer: a candidate
    registry.rollback(MODEL)  # production v1 again, v2 archived
    r = rig(registry, Errors({"v1": 1.0, "v3": 0.5}))
    r.service.tick()
    assert r.step("candidate_seen")["production"] == "v1"
    assert next(s.version for s in registry.lifecycle.steps(MODEL)) == "v3"


def test_a_module_without_a_canary_policy_is_refused(registry: ModelRegistry) -> None:
    service = CanaryService(registry, Installer(Fleet(Clock(), {})), Edge(Fleet(Clock(), {})))
    with pytest.raises(SpecError, match="module 'plain' declares no canary policy"):
        service.track(ModuleSpec(name="plain", model=MODEL, qos=QoS(p95_latency_ms=5)))
    assert service.untrack("plain") is False


def test_a_candidate_waits_for_an_agent_serving_the_module(registry: ModelRegistry) -> None:
    fleet = Fleet(Clock(), {})
    service = CanaryService(registry, Installer(fleet), Edge(fleet), live_errors=None)
    service.track(SPEC)
    service.tick()
    service.tick()
    steps = registry.lifecycle.steps(MODEL)
    assert [s.step for s in steps] == ["candidate_seen"]  # once, then it waits
    assert steps[0].detail["agents_serving"] == 0 and service.active() == []


def test_the_gauge_and_the_dashboard_data(registry: ModelRegistry) -> None:
    r = rig(registry, Errors({"v1": 1.0, "v2": 0.5}))
    metrics = MetricsRegistry()
    r.service.expose(metrics)
    r.service.tick()
    text = metrics.render()
    assert 'mesh_canary_active{module="counter",version="v2"} 1.0' in text
    data = r.service.describe()
    assert data["active"][0]["agents"] == {"cam-0": "site-0"}
    from types import SimpleNamespace

    from mesh.dashboard._snapshot import DashboardSources, Snapshots

    sources = DashboardSources(
        placements=lambda: {"modules": []},
        history=lambda _module, _limit: [],
        monitors=lambda _window: SimpleNamespace(nodes={}, latency={}),
        agents=lambda: [],
        lifecycle=r.service.describe,
    )
    assert Snapshots(sources).latest()["lifecycle"]["active"][0]["candidate"] == "v2"
    assert [s["step"] for s in data["steps"]] == [
        "candidate_seen",
        "canary_started",
        "canary_sites",
    ]


def test_lifecycle_steps_are_checked_and_survive_a_reopen(tmp_path: Path) -> None:
    reg = make_registry(tmp_path)
    try:
        with pytest.raises(ValueError, match="unknown lifecycle step 'bogus'"):
            reg.lifecycle.record(MODEL, "v1", "bogus")
        assert reg.lifecycle.steps(MODEL) == []
        reg.lifecycle.record(MODEL, "v1", "note", {"text": "hello"})
        v1 = reg.register(MODEL, tiny_onnx(1.0), code_version="c1")
        reg.promote(MODEL, v1.version)
        assert reg.lifecycle.archive(MODEL, "v1", reason="x") is False  # production stays
        with pytest.raises(ValueError, match=r"version: expected v<number> \(e.g. v4\), got '1'"):
            reg.lifecycle.archive(MODEL, "1", reason="x")
    finally:
        reg.close()
    again = make_registry(tmp_path)
    try:
        assert [(s.step, dict(s.detail)) for s in again.lifecycle.steps(MODEL)] == [
            ("note", {"text": "hello"})
        ]
        assert again.get(MODEL).stage == Stage.PRODUCTION
    finally:
        again.close()


def test_the_service_thread_starts_and_stops(registry: ModelRegistry) -> None:
    fleet = Fleet(Clock(), {})
    service = CanaryService(registry, Installer(fleet), Edge(fleet), period_s=0.01).start()
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- shown where people look


def test_api_and_cli_show_the_lifecycle(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import warnings

    import typer
    from fastapi import FastAPI
    from typer.testing import CliRunner

    from mesh.cli._models import models_app
    from mesh.core._settings import MeshSettings
    from mesh.models._api import create_models_router

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    r = rig(registry, Errors({"v1": 1.0, "v2": 2.0}))
    r.service.tick()
    run_window(r)
    app = FastAPI()
    app.include_router(create_models_router(registry))
    with TestClient(app) as client:
        body = client.get(f"/v1/models/{MODEL}").json()
    steps = [s["step"] for s in body["lifecycle"]]
    assert steps == [
        "candidate_seen",
        "canary_started",
        "canary_sites",
        "compared",
        "rolled_back",
        "archived",
    ]
    assert body["lifecycle"][3]["detail"]["candidate"]["mae"] == 2.0

    # The CLI reads the registry under MESH_DATA_DIR: the same file, opened again.
    data = tmp_path / "mesh"
    settings = MeshSettings(data_dir=data)
    cli_registry = ModelRegistry.open(settings)
    try:
        v1 = cli_registry.register(MODEL, tiny_onnx(1.0), code_version="c1")
        cli_registry.lifecycle.record(MODEL, v1.version, "rolled_back", {"reason": "p95 too high"})
    finally:
        cli_registry.close()
    cli = typer.Typer()
    cli.add_typer(models_app, name="models")
    monkeypatch.setenv("MESH_DATA_DIR", str(data))
    runner = CliRunner()
    shown = runner.invoke(cli, ["models", "show", MODEL], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "lifecycle" in shown.output and "p95 too high" in shown.output
    one = runner.invoke(cli, ["models", "show", MODEL, "-v", "v1", "--json"])
    assert json.loads(one.output)["lifecycle"][0]["detail"] == {"reason": "p95 too high"}
