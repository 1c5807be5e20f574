"""Canaries on replicas: the candidate replica's start, stop and tallies, and the service's flow.

:class:`~mesh.serving._canary_replicas.ReplicaCanary` runs on a fake launcher
(handles that serve after a few polls, or fail) and the gateway's own metrics;
the canary service runs on the fakes of ``test_canary_service`` plus fake
trials behind :class:`~mesh.runtime._canary_replicas.ReplicaTrials`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mesh.core._metrics import HistogramSnapshot, MetricsRegistry
from mesh.models._registry import ModelRegistry, Stage
from mesh.runtime._canary import CanaryService
from mesh.runtime._canary_replicas import MAX_SHARE, replica_share
from mesh.sdk._specs import ModuleSpec
from mesh.serving._canary_replicas import CandidateReplica, ReplicaCanary, VersionTally
from mesh.serving._contract import (
    DeployError,
    ModelArtifact,
    ReplicaFailedError,
    ReplicaRequest,
)
from mesh.serving._gateway import Gateway
from mesh.serving._oip import UpstreamError
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.unit.test_canary_service import (
    MODEL,
    MODULE,
    SPEC,
    Clock,
    Edge,
    Errors,
    Fleet,
    Installer,
    Manager,
    registry,
)

__all__ = ["registry"]  # the fixture, shared

PROD = ReplicaEndpoint("counter-v1-a", "n1", "10.0.0.1", 8001, "v1")
ART = ModelArtifact(MODEL, "v2", "0" * 64, b"x", None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ReplicaCanary


@dataclass
class Handle:
    replica_id: str
    routes: RouteTable
    polls_before_ready: int = 2
    fail: bool = False
    stopped: bool = False
    polls: int = 0

    def poll(self) -> ReplicaEndpoint | None:
        # make-before-break: nothing routes to it while it starts
        route = self.routes.get(MODULE)
        assert route is not None and route.canary == ()
        self.polls += 1
        if self.fail:
            raise ReplicaFailedError(f"replica {self.replica_id}: model failed to load")
        if self.polls <= self.polls_before_ready:
            return None
        return ReplicaEndpoint(self.replica_id, "n2", "10.0.0.2", 9000, "v2")

    def refresh(self, timeout_s: float) -> ReplicaEndpoint | None:
        return self.poll()

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Launcher:
    routes: RouteTable
    fail: bool = False
    handles: list[Handle] = field(default_factory=list)
    requests: list[ReplicaRequest] = field(default_factory=list)

    def launch(self, request: ReplicaRequest) -> Handle:
        self.requests.append(request)
        handle = Handle(request.replica_id, self.routes, fail=self.fail)
        self.handles.append(handle)
        return handle


class Probe:
    def stats(self, endpoint: ReplicaEndpoint, timeout_s: float) -> dict[str, Any] | None:
        return {"in_flight": 0, "ready": True}


def trials_rig(*, fail: bool = False) -> tuple[RouteTable, Launcher, ReplicaCanary]:
    routes = RouteTable()
    routes.set(MODULE, "v1", [PROD])
    launcher = Launcher(routes, fail=fail)
    trials = ReplicaCanary(routes, launcher, probe=Probe(), start_timeout_s=5, drain_timeout_s=1)
    return routes, launcher, trials


def test_a_candidate_replica_takes_traffic_only_once_it_serves_then_leaves_drained() -> None:
    routes, launcher, trials = trials_rig()
    before = routes.get(MODULE)
    assert before is not None
    candidate = trials.start(SPEC, ART, tier="fog", site="fog-1", share=0.25)
    (request,) = launcher.requests
    assert (request.module, request.version, request.tier, request.site) == (
        MODULE,
        "v2",
        "fog",
        "fog-1",
    )
    assert launcher.handles[0].polls == 3  # waited until it served
    route = routes.get(MODULE)
    assert route is not None and route.canary == (candidate.endpoint,)
    assert route.canary_share == 0.25 and route.endpoints == (PROD,)
    assert route.epoch == before.epoch + 1
    assert candidate.describe()["replica"] == request.replica_id
    routes.acquire(candidate.endpoint)
    routes.release(candidate.endpoint)
    assert trials.stop(candidate) is True
    after = routes.get(MODULE)
    assert after is not None and after.canary == () and after.endpoints == (PROD,)
    assert launcher.handles[0].stopped
    assert trials.stop(candidate) is True  # idempotent


@pytest.mark.parametrize("fail", [True, False], ids=["failed", "no-route"])
def test_a_candidate_replica_that_cannot_serve_leaves_the_route_as_it_was(fail: bool) -> None:
    routes, launcher, trials = trials_rig(fail=fail)
    if not fail:
        routes.remove(MODULE)
        with pytest.raises(DeployError, match="counter has no route"):
            trials.start(SPEC, ART, tier="fog", site=None, share=0.25)
        assert launcher.requests == []
        return
    before = routes.get(MODULE)
    with pytest.raises(DeployError, match="candidate replica failed: .* model failed to load"):
        trials.start(SPEC, ART, tier="fog", site=None, share=0.25)
    assert routes.get(MODULE) == before and launcher.handles[0].stopped


def test_a_share_outside_0_1_is_refused_before_anything_starts() -> None:
    _, launcher, trials = trials_rig()
    with pytest.raises(ValueError, match=r"a canary share must be in \(0, 1\), got 1.0"):
        trials.start(SPEC, ART, tier="fog", site=None, share=1.0)
    assert launcher.requests == []
    assert replica_share(1.0) == MAX_SHARE and replica_share(0.1) == 0.1


def test_tallies_are_the_gateways_own_counts_per_version_on_replica_nodes() -> None:
    metrics = MetricsRegistry()
    routes = RouteTable()
    gateway = Gateway(routes, metrics=metrics)
    trials = ReplicaCanary(routes, Launcher(routes), metrics=metrics)
    # the gateway's histogram: registering it again gives the gateway's own
    latency = metrics.histogram(
        "mesh_inference_latency_seconds", "Inference latency at the gateway.",
        ("module", "version", "node"),
    )  # fmt: skip
    requests = metrics.counter(
        "mesh_inference_requests_total", "?", ("module", "version", "node", "code")
    )
    base = trials.tally(MODULE, "v2")
    assert (base.requests, base.failures, base.p95_ms) == (0, 0, None)
    for node, ms in (("n1", 4), ("n2", 6), ("cam-1", 500)):
        for _ in range(10):
            latency.labels(MODULE, "v2", node).observe(ms / 1000)
            requests.labels(MODULE, "v2", node, "200").inc()
    latency.labels(MODULE, "v1", "n1").observe(0.5)
    routes.set(MODULE, "v1", [PROD])
    gateway.count_error(MODULE, "v1", "n1", UpstreamError("reset", model=MODULE))
    v2 = trials.tally(MODULE, "v2", skip_nodes={"cam-1"}).minus(base)
    assert (v2.requests, v2.failures) == (20, 0)
    assert v2.p95_ms is not None and 5.0 < v2.p95_ms <= 7.5
    v1 = trials.tally(MODULE, "v1")
    assert (v1.requests, v1.failures) == (1, 1)
    assert trials.tally(MODULE, "v9").requests == 0


# ---------------------------------------------------------------- the service


def tally(requests: int, failures: int, p95_ms: float) -> VersionTally:
    """``requests`` all at ``p95_ms`` (a bucket whose bounds are both that)."""
    bound = p95_ms / 1000
    return VersionTally(requests, failures, HistogramSnapshot((bound, bound), [0, requests, 0], 0))


@dataclass
class Trials:
    """Candidate replicas, faked: counts per version grow as :meth:`serve` says."""

    p95: dict[str, float] = field(default_factory=lambda: {"v1": 10.0, "v2": 11.0})
    failing: dict[str, float] = field(default_factory=dict)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    fail_start: bool = False
    fail_stop: bool = False
    down: bool = False
    started: list[dict[str, Any]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    skipped: list[frozenset[str]] = field(default_factory=list)
    deploys: list[Any] = field(default_factory=list)  # the manager's, to see the order
    deploys_at_stop: list[int] = field(default_factory=list)

    def serve(self, n: int) -> None:
        for version in ("v1", "v2"):
            share = 0.25 if version == "v2" else 0.75
            seen, failed = self.counts.get(version, (0, 0))
            k = int(n * share)
            self.counts[version] = (seen + k, failed + int(k * self.failing.get(version, 0.0)))

    def start(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        *,
        tier: str,
        site: str | None,
        share: float,
        node: str | None = None,
    ) -> CandidateReplica:
        if self.fail_start:
            raise DeployError(f"{spec.name} {artifact.version}: candidate replica failed")
        self.started.append(
            {"version": artifact.version, "tier": tier, "site": site, "share": share}
        )
        endpoint = ReplicaEndpoint("counter-v2-c", "n2", "10.0.0.2", 9000, artifact.version)
        return CandidateReplica(spec.name, artifact.version, endpoint, tier, site, share, None)  # type: ignore[arg-type]

    def stop(self, candidate: CandidateReplica) -> bool:
        if self.fail_stop:
            raise DeployError(f"replica of {candidate.version} did not stop")
        self.stopped.append(candidate.version)
        self.deploys_at_stop.append(len(self.deploys))
        return True

    def is_down(self, candidate: CandidateReplica) -> bool:
        return self.down

    def tally(self, module: str, version: str, *, skip_nodes: Iterable[str] = ()) -> VersionTally:
        self.skipped.append(frozenset(skip_nodes))
        seen, failed = self.counts.get(version, (0, 0))
        return tally(seen, failed, self.p95[version])


@dataclass
class ServiceRig:
    clock: Clock
    fleet: Fleet
    manager: Manager
    trials: Trials
    service: CanaryService
    registry: ModelRegistry

    def steps(self) -> list[str]:
        return [s.step for s in self.registry.lifecycle.steps(MODEL)]

    def step(self, name: str) -> dict[str, Any]:
        return next(dict(s.detail) for s in self.registry.lifecycle.steps(MODEL) if s.step == name)

    def window(self, seconds: float = 61.0, requests: int = 200) -> None:
        self.clock.t += seconds
        self.fleet.serve(requests // 4)
        self.trials.serve(requests)
        self.service.tick()


def service_rig(registry: ModelRegistry, *, agents: int = 0) -> ServiceRig:
    clock = Clock()
    fleet = Fleet(clock, {})
    from tests.unit.test_canary_service import Agent

    fleet.agents = {f"cam-{i}": Agent("v1", f"site-{i}") for i in range(agents)}
    fleet.serve(10)
    manager = Manager()
    trials = Trials(deploys=manager.deployed)
    trials.serve(400)  # served before the canary: not its window
    service = CanaryService(
        registry, Installer(fleet), Edge(fleet), manager=manager, replicas=trials,
        live_errors=Errors({"v1": 1.0, "v2": 0.5}), clock=clock,
    )  # fmt: skip
    service.track(SPEC)
    return ServiceRig(clock, fleet, manager, trials, service, registry)


def test_a_better_candidate_on_replicas_alone_is_promoted_its_replica_stopped_first(
    registry: ModelRegistry,
) -> None:
    r = service_rig(registry)
    r.service.tick()
    assert r.trials.started == [{"version": "v2", "tier": "fog", "site": "fog-1", "share": 0.25}]
    assert r.steps() == ["candidate_seen", "canary_started", "canary_sites"]
    assert r.step("candidate_seen")["replicas_serving"] == ["n1"]
    sites = r.step("canary_sites")
    assert sites["canary"] == {} and sites["replicas"]["replica"] == "counter-v2-c"
    assert sites["replicas"]["share"] == 0.25 and sites["replicas"]["production"] == "v1"
    # no agent tries it: outputs are joined with labels from agents' events only
    assert r.step("canary_started")["live_error"].startswith("not scored")
    assert r.service.active()[0]["replica"]["node"] == "n2"
    r.window(seconds=30)
    assert r.steps()[-1] == "canary_sites"  # within the window
    r.window()
    compared = r.step("compared")
    assert compared["verdict"] == "promote", compared
    # the window's requests only (not the 400 before), on each version
    assert compared["candidate"]["requests"] == 100 and compared["production"]["requests"] == 300
    assert compared["candidate"]["p95_ms"] == pytest.approx(11.0)
    assert compared["production"]["p95_ms"] == pytest.approx(10.0)
    # the candidate replica out, drained (its room freed), then production's redeployed
    assert r.trials.stopped == ["v2"] and r.trials.deploys_at_stop == [0]
    assert r.manager.deployed == [(MODULE, "v2", "fog")]
    promoted = r.step("promoted")
    assert promoted["replicas"] == ["fog@fog-1"]
    assert promoted["candidate_replica"]["stopped"] == "drained"
    assert registry.get(MODEL).version == "v2" and r.service.active() == []


@pytest.mark.parametrize(
    ("p95", "failing", "why"),
    [(40.0, 0.0, "p95 40 ms is above production's 10 ms"), (11.0, 0.5, "requests failed")],
)
def test_a_worse_candidate_replica_is_rolled_back_and_production_untouched(
    registry: ModelRegistry, p95: float, failing: float, why: str
) -> None:
    r = service_rig(registry)
    r.trials.p95["v2"] = p95
    r.trials.failing["v2"] = failing
    r.service.tick()
    r.window()
    assert r.steps()[-3:] == ["compared", "rolled_back", "archived"]
    rolled = r.step("rolled_back")
    assert why in rolled["reason"] and rolled["candidate_replica"]["stopped"] == "drained"
    assert r.trials.stopped == ["v2"] and r.manager.deployed == []
    assert registry.get(MODEL).version == "v1"
    assert registry.get(MODEL, "v2").stage == Stage.ARCHIVED


def test_a_candidate_replica_marked_down_is_rolled_back_at_once(registry: ModelRegistry) -> None:
    r = service_rig(registry)
    r.service.tick()
    r.trials.down = True
    r.window(seconds=5)  # long before the window ends
    assert r.steps()[-2:] == ["rolled_back", "archived"]
    assert "marked down" in r.step("rolled_back")["reason"] and r.trials.stopped == ["v2"]


def test_a_candidate_replica_that_does_not_start_rolls_the_agents_back_too(
    registry: ModelRegistry,
) -> None:
    r = service_rig(registry, agents=4)
    r.trials.fail_start = True
    r.service.tick()
    assert r.steps() == ["candidate_seen", "rolled_back", "archived"]
    rolled = r.step("rolled_back")
    assert rolled["reason"].startswith("candidate replica on fog did not start")
    assert rolled["agents"] == ["cam-0"] and rolled["candidate_replica"] is None
    assert {a.version for a in r.fleet.agents.values()} == {"v1"}


def test_agents_and_replicas_together_are_one_side_each(registry: ModelRegistry) -> None:
    r = service_rig(registry, agents=4)
    r.service.tick()
    assert r.step("canary_sites")["canary"] == {"cam-0": "site-0"}
    assert r.step("canary_started")["live_error"] == "scored"
    r.window()
    compared = r.step("compared")
    # the agents' heartbeats (50 each) plus what the gateway counted on replicas
    assert compared["candidate"]["requests"] == 50 + 50
    assert compared["production"]["requests"] == 3 * 50 + 150
    assert compared["candidate"]["mae"] == 0.5 and compared["verdict"] == "promote"
    # the agents' own figures are not counted twice from the gateway's
    assert frozenset({"cam-0", "cam-1", "cam-2", "cam-3"}) in r.trials.skipped
    assert r.trials.stopped == ["v2"] and registry.get(MODEL).version == "v2"


def test_untracking_or_stopping_takes_a_candidate_replica_out(registry: ModelRegistry) -> None:
    r = service_rig(registry)
    r.service.tick()
    assert r.service.untrack(MODULE) is True and r.trials.stopped == ["v2"]
    again = service_rig(registry)
    again.service.tick()
    again.service.stop()
    assert again.trials.stopped == ["v2"]
    assert registry.get(MODEL, "v2").stage == Stage.CANDIDATE  # tried again after a restart


def test_without_trials_replicas_are_not_tried(registry: ModelRegistry) -> None:
    fleet = Fleet(Clock(), {})
    service = CanaryService(registry, Installer(fleet), Edge(fleet), manager=Manager())
    service.track(SPEC)
    service.tick()
    assert [s.step for s in registry.lifecycle.steps(MODEL)] == ["candidate_seen"]
    assert service.active() == []  # no agent serves it, and its replicas are not tried


def test_a_candidate_replica_that_fails_to_stop_is_recorded_and_the_verdict_stands(
    registry: ModelRegistry,
) -> None:
    r = service_rig(registry)
    r.trials.p95["v2"] = 40.0
    r.trials.fail_stop = True
    r.service.tick()
    r.window()
    rolled = r.step("rolled_back")
    assert rolled["candidate_replica"]["stopped"] == "failed: replica of v2 did not stop"
    assert registry.get(MODEL, "v2").stage == Stage.ARCHIVED and r.service.active() == []
