"""The serving manager and the route table, with fakes behind the launcher/probe Protocols."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh import QoS, Resources, UnsatisfiableError
from mesh.core._metrics import MetricsRegistry
from mesh.models._export import ModelSignature, TensorSpec
from mesh.sdk import ModuleSpec
from mesh.serving._autoscale import AutoscalePolicy, Autoscaler
from mesh.serving._manager import (
    DeployError,
    ModelArtifact,
    ReplicaFailedError,
    ReplicaRequest,
    ServingManager,
)
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.metrics import sample

SIG = ModelSignature(
    inputs=(TensorSpec("x", "float32", ("N", 4)),),
    outputs=(TensorSpec("y", "float32", ("N", 4)),),
    opset=17,
)


def artifact(version: str) -> ModelArtifact:
    import hashlib

    data = b"onnx-" + version.encode()
    return ModelArtifact("counter", version, hashlib.sha256(data).hexdigest(), data, SIG)


def spec(**kw: Any) -> ModuleSpec:
    options: dict[str, Any] = {
        "name": "counter",
        "model": "counter",
        "qos": QoS(p95_latency_ms=20),
        "tiers": ("edge", "fog", "cloud"),
        "resources": Resources(cpus=0.5),
    }
    options.update(kw)
    return ModuleSpec(**options)


# ---------------------------------------------------------------- fakes


@dataclass
class FakeHandle:
    request: ReplicaRequest
    port: int
    events: list[str]
    polls_until_ready: int = 1
    fail: str | None = None
    stopped: bool = False
    restarted_port: int | None = None
    dead: bool = False
    polls: int = 0

    @property
    def replica_id(self) -> str:
        return self.request.replica_id

    def endpoint(self) -> ReplicaEndpoint:
        return ReplicaEndpoint(
            self.replica_id,
            f"node-{self.request.tier}",
            "127.0.0.1",
            self.port,
            self.request.version,
        )

    def poll(self) -> ReplicaEndpoint | None:
        if self.fail:
            raise ReplicaFailedError(self.fail)
        self.polls += 1
        if self.polls < self.polls_until_ready:
            return None
        if self.polls == self.polls_until_ready:
            self.events.append(f"ready {self.request.version}")
        return self.endpoint()

    def refresh(self, timeout_s: float) -> ReplicaEndpoint | None:
        if self.dead:
            raise ReplicaFailedError("actor died")
        if self.restarted_port is not None:
            self.port = self.restarted_port
        return self.endpoint()

    def stop(self) -> None:
        if not self.stopped:
            self.events.append(f"stop {self.request.version}")
        self.stopped = True


@dataclass
class FakeLauncher:
    events: list[str] = field(default_factory=list)
    handles: list[FakeHandle] = field(default_factory=list)
    polls_until_ready: int = 1
    fail: str | None = None
    unsatisfiable: bool = False
    next_port: int = 9000

    def launch(self, request: ReplicaRequest) -> FakeHandle:
        if self.unsatisfiable:
            raise UnsatisfiableError(request.module, {"tier": request.tier}, [], "no node")
        self.events.append(f"launch {request.version}")
        self.next_port += 1
        handle = FakeHandle(request, self.next_port, self.events, self.polls_until_ready, self.fail)
        self.handles.append(handle)
        return handle

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.stopped]


@dataclass
class FakeProbe:
    """Stats per port; a port missing from ``down`` answers."""

    down: set[int] = field(default_factory=set)
    in_flight: dict[int, float] = field(default_factory=dict)

    def stats(self, endpoint: ReplicaEndpoint, timeout_s: float) -> dict[str, Any] | None:
        if endpoint.port in self.down:
            return None
        load = self.in_flight.get(endpoint.port, 0.0)
        return {"ready": True, "in_flight": 0, "avg_in_flight": load, "requests": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def manager(launcher: FakeLauncher, probe: FakeProbe | None = None, **kw: Any) -> ServingManager:
    kw.setdefault("drain_timeout_s", 5.0)
    kw.setdefault("start_timeout_s", 5.0)
    return ServingManager(RouteTable(), launcher, probe=probe or FakeProbe(), **kw)


# ---------------------------------------------------------------- route table


def test_route_switches_bump_the_epoch_and_keep_defaults() -> None:
    table = RouteTable()
    changes: list[tuple[Any, Any]] = []
    table.on_change(lambda old, new: changes.append((old, new)))
    first = table.set("m", "v1", [AgentEndpoint("a", "v1")], signature=SIG, tier="edge", slo_ms=20)
    second = table.set("m", "v2", [])
    assert (first.epoch, second.epoch) == (1, 2)
    assert second.signature is SIG and second.tier == "edge" and second.slo_ms == 20
    assert table.remove("m") is second and table.get("m") is None
    assert [(o and o.epoch, n and n.epoch) for o, n in changes] == [(None, 1), (1, 2), (2, None)]


def test_pick_prefers_the_least_busy_endpoint() -> None:
    table = RouteTable()
    a, b = (ReplicaEndpoint(r, "n", "h", p, "v1") for r, p in (("a", 1), ("b", 2)))
    route = table.set("m", "v1", [a, b])
    table.acquire(a)
    assert {table.pick(route) for _ in range(4)} == {b}
    table.acquire(b)
    table.acquire(b)
    assert table.pick(route) == a
    assert table.pick(route, exclude=[a]) == b
    assert table.pick(route, exclude=[a, b]) is None
    assert table.module_in_flight("m") == 3


def test_wait_drained_blocks_until_requests_leave() -> None:
    table = RouteTable()
    a = ReplicaEndpoint("a", "n", "h", 1, "v1")
    table.acquire(a)
    assert not table.wait_drained([a], 0.05)
    threading.Timer(0.05, table.release, args=(a,)).start()
    started = time.monotonic()
    assert table.wait_drained([a], 5.0)
    assert time.monotonic() - started < 2.0
    assert table.in_flight(a) == 0


def test_demand_is_noted_once_and_taken() -> None:
    table = RouteTable()
    woken: list[str] = []
    table.on_demand(woken.append)
    table.note_demand("m")
    table.note_demand("m")
    assert woken == ["m"] and table.has_demand("m")
    assert table.take_demand() == {"m"} and not table.has_demand("m")


# ---------------------------------------------------------------- autoscaling


def test_policy_bounds_and_targets() -> None:
    policy = AutoscalePolicy(min_replicas=1, max_replicas=4, target_in_flight=2)
    assert [policy.wanted(load) for load in (0, 0.5, 2, 2.1, 7, 100)] == [1, 1, 1, 2, 4, 4]
    zero = AutoscalePolicy(min_replicas=0, max_replicas=2, target_in_flight=1)
    assert zero.wanted(0) == 0 and zero.wanted(0.2) == 1
    module = spec(min_replicas=0, max_replicas=3, target_in_flight=4)
    assert AutoscalePolicy.of(module, downscale_delay_s=5) == AutoscalePolicy(
        0, 3, 4.0, 1.0, 5.0, 60.0
    )


def test_autoscaler_waits_before_scaling_and_wakes_from_zero_at_once() -> None:
    scaler = Autoscaler(
        AutoscalePolicy(
            min_replicas=0,
            max_replicas=3,
            target_in_flight=1,
            upscale_delay_s=1,
            downscale_delay_s=10,
            scale_to_zero_delay_s=30,
        )
    )
    assert scaler.decide(0, 0.5, now=0) == 1  # a request waits: no delay from zero
    assert scaler.decide(1, 3.0, now=1) == 1
    assert scaler.decide(1, 3.0, now=1.5) == 1
    assert scaler.decide(1, 3.0, now=2.0) == 3
    assert scaler.decide(3, 1.0, now=3) == 3
    assert scaler.decide(3, 1.0, now=12.9) == 3
    assert scaler.decide(3, 1.0, now=13.0) == 1
    assert scaler.decide(1, 0.0, now=14) == 1
    assert scaler.decide(1, 0.0, now=43.9) == 1
    assert scaler.decide(1, 0.0, now=44.0) == 0
    assert scaler.decide(1, 5.0, now=50) == 1  # a burst resets the countdown


# ---------------------------------------------------------------- deploys


def test_deploy_starts_replicas_and_publishes_the_route() -> None:
    launcher = FakeLauncher()
    m = manager(launcher)
    route = m.deploy(spec(min_replicas=2, max_replicas=3), artifact("v1"), tier="fog")
    assert route.epoch == 1 and route.version == "v1" and route.tier == "fog"
    assert len(route.endpoints) == 2 and route.signature is SIG and route.slo_ms == 20
    requests = [h.request for h in launcher.handles]
    assert {(r.tier, r.site, r.resources.cpus) for r in requests} == {("fog", None, 0.5)}
    assert [s.state for s in m.status()] == ["serving", "serving"]
    m.close()
    assert not launcher.live() and m.routes.get("counter") is None


def test_new_version_is_make_before_break() -> None:
    launcher = FakeLauncher(polls_until_ready=3)
    m = manager(launcher)
    m.deploy(spec(), artifact("v1"))
    old = m.routes.get("counter")
    assert old is not None
    in_flight = old.endpoints[0]
    m.routes.acquire(in_flight)  # a request is still running on v1
    launcher.events.clear()
    done = threading.Event()
    threading.Thread(target=lambda: (m.deploy(spec(), artifact("v2")), done.set())).start()
    deadline = time.monotonic() + 5
    while (route := m.routes.get("counter")) is not None and route.version != "v2":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert route is not None and route.epoch == 2
    assert launcher.events == ["launch v2", "ready v2"]  # v1 not stopped: still in flight
    m.routes.release(in_flight)
    assert done.wait(5)
    assert launcher.events == ["launch v2", "ready v2", "stop v1"]
    m.close()


def test_hooks_run_after_the_new_replicas_serve_and_before_the_old_stop() -> None:
    launcher = FakeLauncher()
    m = manager(launcher)
    m.deploy(spec(), artifact("v1"))
    seen: list[tuple[str, str | None, list[str]]] = []

    def hook(module: str) -> None:
        route = m.routes.get(module)
        seen.append((module, route.version if route else None, list(launcher.events)))

    def broken(module: str) -> None:
        raise RuntimeError("a follower failed")

    m.on_replacing(broken)  # logged; the redeploy and the other hooks go on
    remove = m.on_replacing(hook)
    launcher.events.clear()
    m.deploy(spec(), artifact("v2"))
    assert seen == [("counter", "v2", ["launch v2", "ready v2"])]  # v1 still running
    assert launcher.events == ["launch v2", "ready v2", "stop v1"]
    remove()
    m.deploy(spec(), artifact("v3"))
    assert len(seen) == 1
    m.close()


def test_failed_start_keeps_the_old_version() -> None:
    launcher = FakeLauncher()
    m = manager(launcher)
    m.deploy(spec(), artifact("v1"))
    launcher.fail = "ONNX Runtime cannot load the model"
    with pytest.raises(ReplicaFailedError, match="cannot load"):
        m.deploy(spec(), artifact("v2"))
    route = m.routes.get("counter")
    assert route is not None and (route.version, route.epoch) == ("v1", 1)
    assert [h.request.version for h in launcher.live()] == ["v1"]
    launcher.fail = None
    launcher.polls_until_ready = 10**9
    slow = manager(launcher, start_timeout_s=0.1)
    with pytest.raises(DeployError, match="did not serve within 0.1 s"):
        slow.deploy(spec(), artifact("v1"))
    launcher.unsatisfiable = True
    with pytest.raises(UnsatisfiableError):
        m.deploy(spec(), artifact("v3"))
    m.close()


def test_tiers_are_checked() -> None:
    m = manager(FakeLauncher())
    with pytest.raises(DeployError, match="not 'cloud'"):
        m.deploy(spec(tiers=("edge", "fog")), artifact("v1"), tier="cloud")
    with pytest.raises(DeployError, match="deploy_to_agent"):
        m.deploy(spec(), artifact("v1"), tier="edge")
    with pytest.raises(DeployError, match="deploy_to_agent"):
        m.deploy(spec(tiers=("edge",)), artifact("v1"))
    assert m.deploy(spec(tiers=("cloud", "fog")), artifact("v1")).tier == "cloud"
    m.close()


def test_deploy_to_an_agent_and_back() -> None:
    installs: list[tuple[str, str, str]] = []

    class Installer:
        def install(self, agent_id: str, module: str, art: ModelArtifact, timeout_s: float) -> None:
            installs.append((agent_id, module, art.version))

    launcher = FakeLauncher()
    m = manager(launcher, installer=Installer())
    m.deploy(spec(), artifact("v1"))
    route = m.deploy_to_agent(spec(), "cam-1", artifact("v1"))
    assert route.endpoints == (AgentEndpoint("cam-1", "v1"),) and route.tier == "edge"
    assert installs == [("cam-1", "counter", "v1")] and not launcher.live()
    back = m.deploy(spec(), artifact("v1"), tier="fog")
    assert back.tier == "fog" and isinstance(back.endpoints[0], ReplicaEndpoint)
    assert [s.state for s in m.status()] == ["serving"]
    with pytest.raises(DeployError, match="not on edge"):
        m.deploy_to_agent(spec(tiers=("fog",)), "cam-1", artifact("v1"))
    m.close()


def test_registry_versions_are_resolved(tmp_path: Path) -> None:
    from mesh import MeshSettings
    from mesh.models import ModelRegistry

    registry = ModelRegistry.open(MeshSettings(data_dir=tmp_path))
    try:
        v1 = registry.register(
            "counter", build_tiny_model(tmp_path / "a.onnx", scale=1.0), code_version="c1"
        )
        registry.register(
            "counter", build_tiny_model(tmp_path / "b.onnx", scale=2.0), code_version="c1"
        )
        registry.promote("counter", "v1")
        launcher = FakeLauncher()
        m = manager(launcher, registry=registry)
        assert m.deploy(spec()).version == "v1"  # production
        assert m.deploy(spec(), "v2").version == "v2"
        assert m.deploy(spec(), v1).version == "v1"
        sent = launcher.handles[-1].request.artifact
        assert sent.sha256 == v1.sha256 and sent.data == (tmp_path / "a.onnx").read_bytes()
        assert [s.name for s in sent.signature.inputs] == ["x"]
        m.close()
    finally:
        registry.close()
    with pytest.raises(DeployError, match="registry"):
        manager(FakeLauncher()).deploy(spec(), "production")


def test_artifact_from_file(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "t.onnx")
    art = ModelArtifact.from_file(path, model="t", version="v9")
    assert art.data == path.read_bytes() and len(art.sha256) == 64
    assert art.signature.inputs[0].shape == ("N", 4)


# ---------------------------------------------------------------- the background loop


def test_unhealthy_replica_leaves_the_route_and_returns_after_restart() -> None:
    launcher = FakeLauncher()
    probe = FakeProbe()
    m = manager(launcher, probe, unhealthy_after=2)
    m.deploy(spec(min_replicas=2, max_replicas=2), artifact("v1"))
    sick = launcher.handles[0]
    probe.down.add(sick.port)
    m.tick()
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 2  # one failure is not enough
    sick.restarted_port = 9999  # Ray restarted it; it listens elsewhere now
    m.tick()
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 1 and route.epoch == 2
    m.tick()  # the new port answers
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 2
    assert any(e.port == 9999 for e in route.endpoints if isinstance(e, ReplicaEndpoint))
    m.close()


def test_dead_replica_is_replaced() -> None:
    launcher = FakeLauncher()
    probe = FakeProbe()
    m = manager(launcher, probe, unhealthy_after=1)
    m.deploy(spec(), artifact("v1"))
    first = launcher.handles[0]
    probe.down.add(first.port)
    first.dead = True
    m.tick()
    assert first.stopped and len(launcher.handles) == 2
    m.tick()  # the replacement is ready
    route = m.routes.get("counter")
    assert route is not None and [
        e.port
        for e in route.endpoints  # type: ignore[union-attr]
    ] == [launcher.handles[1].port]
    m.close()


def test_replicas_follow_the_load() -> None:
    launcher = FakeLauncher()
    probe = FakeProbe()
    clock = Clock()
    metrics = MetricsRegistry()
    m = manager(
        launcher,
        probe,
        clock=clock,
        metrics=metrics,
        autoscale_delays={"upscale_delay_s": 1, "downscale_delay_s": 10},
    )
    m.deploy(spec(min_replicas=1, max_replicas=3, target_in_flight=2), artifact("v1"))
    probe.in_flight[launcher.handles[0].port] = 5.0
    m.tick()
    assert len(launcher.live()) == 1
    clock.now = 1.0
    m.tick()  # wanted 3 for a second: two more start
    assert len(launcher.live()) == 3
    m.tick()  # they are ready: in the route
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 3
    for h in launcher.handles:
        probe.in_flight[h.port] = 0.0
    clock.now = 2.0
    m.tick()
    clock.now = 12.0
    m.tick()  # quiet for 10 s: back to one (the others drain first)
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 1
    m.tick()
    assert len(launcher.live()) == 1
    text = metrics.render()
    assert sample(text, "mesh_replicas", module="counter", version="v1", state="serving") == 1
    assert sample(text, "mesh_route_switches_total", module="counter") == 3
    m.close()


def test_scale_to_zero_and_back_on_demand() -> None:
    launcher = FakeLauncher()
    probe = FakeProbe()
    clock = Clock()
    m = manager(launcher, probe, clock=clock, autoscale_delays={"scale_to_zero_delay_s": 5})
    route = m.deploy(spec(min_replicas=0, max_replicas=2), artifact("v1"))
    assert route.scale_from_zero and len(route.endpoints) == 1
    m.tick()
    clock.now = 5.0
    m.tick()
    m.tick()
    route = m.routes.get("counter")
    assert route is not None and route.endpoints == () and not launcher.live()
    m.routes.note_demand("counter")  # a request waits at the gateway
    m.tick()
    assert len(launcher.live()) == 1
    m.tick()
    route = m.routes.get("counter")
    assert route is not None and len(route.endpoints) == 1
    m.close()


def test_modules_that_keep_a_minimum_never_go_to_zero() -> None:
    launcher = FakeLauncher()
    clock = Clock()
    m = manager(launcher, FakeProbe(), clock=clock, autoscale_delays={"scale_to_zero_delay_s": 1})
    route = m.deploy(spec(min_replicas=1), artifact("v1"))
    assert not route.scale_from_zero
    for t in range(1, 100, 10):
        clock.now = float(t)
        m.tick()
    assert len(launcher.live()) == 1
    m.close()


def test_background_loop_runs_and_stops() -> None:
    launcher = FakeLauncher()
    probe = FakeProbe()
    m = ServingManager(RouteTable(), launcher, probe=probe, period_s=0.01, unhealthy_after=1)
    with m:
        m.deploy(spec(min_replicas=2, max_replicas=2), artifact("v1"))
        probe.down.add(launcher.handles[0].port)
        launcher.handles[0].dead = True
        deadline = time.monotonic() + 5
        while not launcher.handles[0].stopped:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert not launcher.live()


# ---------------------------------------------------------------- the edge installer


class FakeEdgeGateway:
    """The part of EdgeBus the installer uses; the agent installs or refuses."""

    def __init__(self, refuse: bool = False) -> None:
        from types import SimpleNamespace

        self.refuse = refuse
        self.published: list[Any] = []
        self.view = SimpleNamespace(observed=SimpleNamespace(version=3), desired_version=4)

    def agent(self, agent_id: str) -> Any:
        return self.view

    def publish_desired(self, agent_id: str, desired: Any) -> None:
        self.published.append(desired)

    def wait_for_observed(self, agent_id: str, version: int, *, timeout_s: float) -> Any:
        from edge_agent.protocol import InstalledModule, ModuleError, ObservedState

        modules = self.published[-1].modules
        if self.refuse:
            return ObservedState(
                agent=agent_id,
                version=version,
                errors=[
                    ModuleError(module=modules[-1].name, code="integrity", message="bad signature")
                ],
            )
        return ObservedState(
            agent=agent_id,
            version=version,
            installed=[InstalledModule(name=m.name, version=m.version) for m in modules],
        )


def test_edge_installer_publishes_signed_modules_with_newer_versions(tmp_path: Path) -> None:
    from mesh.edge._artifact_api import UrlSigner
    from mesh.edge._install import EdgeInstaller
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    edge = FakeEdgeGateway()
    installer = EdgeInstaller(
        edge,
        store=store,
        signer=ArtifactSigner.generate(),  # type: ignore[arg-type]
        url_signer=UrlSigner(b"u" * 32),
        base_url="http://cp:8471",
        module_options={"max_batch": 4},
    )
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-1", "other", artifact("v2"), 5.0)
    first, second = edge.published
    assert (first.version, second.version) == (5, 6)  # newer than what the agent held
    assert [m.name for m in second.modules] == ["counter", "other"]
    entry = first.modules[0]
    assert entry.sha256 == artifact("v1").sha256 and entry.max_batch == 4
    assert entry.url is not None and entry.url.startswith("http://cp:8471/v1/artifacts/")
    assert entry.signature and store.has(artifact("v1").sha256)
    edge.refuse = True
    with pytest.raises(DeployError, match="integrity: bad signature"):
        installer.install("cam-1", "third", artifact("v3"), 5.0)
    assert [m.name for m in edge.published[-1].modules] == ["counter", "other", "third"]
    edge.refuse = False
    installer.install("cam-1", "fourth", artifact("v4"), 5.0)  # the refused one is not kept
    assert [m.name for m in edge.published[-1].modules] == ["counter", "other", "fourth"]


class Registryless:
    """What :meth:`PlacementController.restore` calls; a recorded version is an artifact id."""

    def __init__(self, inner: ServingManager) -> None:
        self.inner = inner

    def deploy_to_agent(self, s: Any, agent: str, version: str, **kw: Any) -> Any:
        return self.inner.deploy_to_agent(s, agent, artifact(version), **kw)

    def deploy(self, s: Any, version: str, **kw: Any) -> Any:
        return self.inner.deploy(s, artifact(version), **kw)
