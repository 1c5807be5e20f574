"""Warm standbys and node loss in the serving manager, with fakes behind its Protocols.

The fake launcher places replicas on named nodes and honours ``avoid_nodes`` as
Ray's ``ray.io/node-id: !in(...)`` selector does; the fake probe answers per node,
so "a node is gone" is one set away.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh import QoS, Resources, UnsatisfiableError
from mesh.core._metrics import MetricsRegistry
from mesh.models._export import ModelSignature, TensorSpec
from mesh.sdk import ModuleSpec
from mesh.serving._manager import (
    ModelArtifact,
    ReplicaRequest,
    ServingManager,
    wants_standby,
)
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint, RouteTable
from mesh.serving._supervisor import LOST_NODE_S, STANDBY_RETRY_S
from tests.support.metrics import sample

SIG = ModelSignature(
    inputs=(TensorSpec("x", "float32", ("N", 4)),),
    outputs=(TensorSpec("y", "float32", ("N", 4)),),
    opset=17,
)


def artifact(version: str = "v1") -> ModelArtifact:
    data = b"onnx-" + version.encode()
    return ModelArtifact("counter", version, hashlib.sha256(data).hexdigest(), data, SIG)


def spec(**kw: Any) -> ModuleSpec:
    options: dict[str, Any] = {
        "name": "counter",
        "model": "counter",
        "qos": QoS(p95_latency_ms=20),
        "tiers": ("fog", "cloud"),
        "resources": Resources(cpus=0.25),
    }
    options.update(kw)
    return ModuleSpec(**options)


@dataclass
class Handle:
    request: ReplicaRequest
    node: str
    port: int
    stopped: threading.Event = field(default_factory=threading.Event)
    killed: bool = False

    @property
    def replica_id(self) -> str:
        return self.request.replica_id

    def endpoint(self) -> ReplicaEndpoint:
        return ReplicaEndpoint(self.replica_id, self.node, "127.0.0.1", self.port, "v1")

    def poll(self) -> ReplicaEndpoint | None:
        return self.endpoint()

    def refresh(self, timeout_s: float) -> ReplicaEndpoint | None:
        return None  # its node is gone: Ray would say "restarting" for ~15 s

    def stop(self) -> None:
        self.stopped.set()

    def kill(self) -> None:  # what a lost replica gets: no graceful stop on a dead node
        self.killed = True
        self.stopped.set()


@dataclass
class Launcher:
    """Nodes by tier; of the tier's nodes not avoided (or the pinned one), the one with the
    fewest live replicas gets it, the first on a tie (``pack``: always the first, as Ray's
    default scheduling packs small actors)."""

    nodes: dict[str, str] = field(
        default_factory=lambda: {"fog-0": "fog", "fog-1": "fog", "cloud": "cloud"}
    )
    handles: list[Handle] = field(default_factory=list)
    pack: bool = False

    def launch(self, request: ReplicaRequest) -> Handle:
        fits = [
            n
            for n, tier in self.nodes.items()
            if tier == request.tier
            and n not in request.avoid_nodes
            and (request.node is None or n == request.node)
        ]
        if not fits:
            raise UnsatisfiableError(request.module, {"tier": request.tier}, [], "no node")
        load = Counter(h.node for h in self.live())
        node = fits[0] if self.pack else min(fits, key=lambda n: load[n])
        handle = Handle(request, node, 9000 + len(self.handles))
        self.handles.append(handle)
        return handle

    def live(self) -> list[Handle]:
        return [h for h in self.handles if not h.stopped.is_set()]


@dataclass
class Probe:
    """Every replica answers, except those on nodes in ``gone``."""

    gone: set[str] = field(default_factory=set)

    def stats(self, endpoint: ReplicaEndpoint, timeout_s: float) -> dict[str, Any] | None:
        if endpoint.node_id in self.gone:
            return None
        return {"ready": True, "in_flight": 0, "avg_in_flight": 0.0}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def standby_manager(
    launcher: Launcher, probe: Probe, clock: Clock | None = None, **kw: Any
) -> ServingManager:
    return ServingManager(
        RouteTable(),
        launcher,
        probe=probe,
        clock=clock or Clock(),
        start_timeout_s=5.0,
        drain_timeout_s=1.0,
        standby=True,
        metrics=kw.pop("metrics", None),
        **kw,
    )


def current(m: ServingManager) -> ModuleRoute:
    route = m.routes.get("counter")
    assert route is not None
    return route


def nodes(endpoints: tuple[Any, ...]) -> list[str]:
    return [e.node for e in endpoints]


def test_the_rule_every_always_on_module_asks_for_a_standby() -> None:
    assert wants_standby(spec()) and wants_standby(spec(min_replicas=2, max_replicas=2))
    assert not wants_standby(spec(min_replicas=0))


def test_a_deploy_switches_with_its_standby_serving_on_another_node() -> None:
    """The standby is asked for with the primary, not after it: never a module without one."""
    launcher, probe = Launcher(), Probe()
    metrics = MetricsRegistry()
    m = standby_manager(launcher, probe, metrics=metrics)
    switches: list[int] = []
    m.routes.on_change(lambda _old, new: switches.append(new.epoch if new else 0))
    route = m.deploy(spec(), artifact(), tier="fog")
    _primary, standby = launcher.handles
    assert standby.request.tier == "fog" and standby.request.avoid_nodes == ()
    # In the route's standby from its first epoch, not its endpoints.
    assert nodes(route.endpoints) == ["fog-0"] and nodes(route.standby) == ["fog-1"]
    assert route.epoch == 1 and switches == [1]
    assert route.describe()["standby"][0]["node"] == "fog-1"
    assert sorted(s.state for s in m.status()) == ["serving", "standby"]
    assert [v.nodes for v in m.deployments()] == [("fog-0",)]  # the controller sees the primary
    text = metrics.render()
    assert sample(text, "mesh_replicas", module="counter", version="v1", state="standby") == 1
    m.tick()
    m.tick()
    assert len(launcher.handles) == 2 and switches == [1]  # one standby, not one per tick
    m.close()
    assert not launcher.live()


def test_a_standby_sharing_its_primary_s_node_stands_by_until_one_elsewhere_serves() -> None:
    """Ray packs replicas: the deploy's standby may land beside its primary (the nodes
    are not known when both are asked for). It covers a replica process's death at
    once; one on another node is started for a node's, and then it retires."""
    launcher, probe = Launcher(pack=True), Probe()
    m = standby_manager(launcher, probe)
    route = m.deploy(spec(), artifact(), tier="fog")
    primary, beside = launcher.handles
    assert nodes(route.endpoints) == ["fog-0"] and nodes(route.standby) == ["fog-0"]
    m.tick()  # the primary's node is known: a standby off it is asked for
    (apart,) = launcher.handles[2:]
    assert apart.request.avoid_nodes == ("fog-0",) and apart.node == "fog-1"
    assert nodes(current(m).standby) == ["fog-0"]  # the one beside still stands by meanwhile
    m.tick()  # it serves: the one beside retires (not a switch)
    route = current(m)
    assert nodes(route.standby) == ["fog-1"] and route.epoch == 1
    m.tick()
    assert beside.stopped.is_set() and not beside.killed and not primary.stopped.is_set()
    assert sorted(s.state for s in m.status()) == ["serving", "standby"]
    m.tick()
    assert len(launcher.handles) == 3
    m.close()


def test_a_standby_still_starting_replaces_a_lost_primary() -> None:
    """No cold start of a replacement when a standby is already on its way."""
    launcher, probe = Launcher(), Probe()
    m = standby_manager(launcher, probe)
    m.deploy(spec(), artifact(), tier="fog")
    primary, standby = launcher.handles
    ready = [False]
    # Its standby was lost, and the new one (on cloud) is still starting.
    probe.gone.add("fog-1")
    m.routes.mark_down("counter", standby.endpoint())
    m.tick()
    (starting,) = launcher.handles[2:]
    starting.poll = lambda: starting.endpoint() if ready[0] else None  # type: ignore[method-assign]
    assert starting.node == "cloud" and current(m).standby == ()
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", primary.endpoint())
    m.tick()  # lost: the starting standby takes its place, no replacement is launched
    assert len(launcher.handles) == 3 and current(m).endpoints == ()
    ready[0] = True
    m.tick()
    route = current(m)
    assert nodes(route.endpoints) == ["cloud"] and route.tier == "cloud"
    m.close()


def test_a_primary_marked_down_is_replaced_by_its_standby_at_once() -> None:
    launcher, probe, clock = Launcher(), Probe(), Clock()
    metrics = MetricsRegistry()
    m = standby_manager(launcher, probe, clock, metrics=metrics)
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    m.tick()
    primary, standby = launcher.handles
    before = current(m)
    probe.gone.add("fog-0")  # its node is gone
    assert m.routes.mark_down("counter", primary.endpoint())  # the gateway saw a reset
    assert not m.routes.mark_down("counter", primary.endpoint())  # once
    clock.now = 0.5
    m.tick()  # no waiting for health checks: one probe confirms, the standby is promoted
    route = current(m)
    assert route.epoch == before.epoch + 1
    assert nodes(route.endpoints) == ["fog-1"] and route.standby == ()
    assert not m.routes.is_down(primary.endpoint())  # the switch forgot the mark
    assert primary.stopped.wait(5) and primary.killed  # killed in the background
    assert not standby.stopped.is_set()
    # A new standby, off the new primary's node and the lost one: fog has none left.
    (fresh,) = launcher.handles[2:]
    assert set(fresh.request.avoid_nodes) == {"fog-0", "fog-1"}
    assert (fresh.request.tier, fresh.node) == ("cloud", "cloud")
    m.tick()
    route = current(m)
    assert nodes(route.endpoints) == ["fog-1"] and nodes(route.standby) == ["cloud"]
    assert [v.nodes for v in m.deployments()] == [("fog-1",)]
    assert [v.tier for v in m.deployments()] == ["fog"]
    lost = "mesh_replicas_lost_total"
    assert sample(metrics.render(), lost, module="counter", role="primary") == 1
    m.close()


def test_a_mark_the_probe_does_not_confirm_is_cleared() -> None:
    launcher, probe = Launcher(), Probe()
    m = standby_manager(launcher, probe)
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    m.tick()
    primary = launcher.handles[0]
    epoch = current(m).epoch
    m.routes.mark_down("counter", primary.endpoint())
    m.tick()  # it answers its probe: a passing fault, it keeps serving
    assert not m.routes.is_down(primary.endpoint()) and current(m).epoch == epoch
    assert not primary.stopped.is_set() and len(launcher.handles) == 2
    m.close()


def test_a_primary_failing_health_checks_is_replaced_without_traffic() -> None:
    launcher, probe = Launcher(), Probe()
    m = standby_manager(launcher, probe, unhealthy_after=2)
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    m.tick()
    probe.gone.add("fog-0")
    m.tick()
    assert nodes(current(m).endpoints) == ["fog-0"]  # one failure is not enough
    m.tick()
    assert nodes(current(m).endpoints) == ["fog-1"]
    m.close()


def test_a_node_that_lost_a_replica_holds_a_standby_only_when_no_other_can() -> None:
    """Two fog nodes: the primary's, and one where a replica was just lost.

    A lost replica makes its node suspect, not dead (a replica process killed
    leaves its node alive: the chaos suite's case). With no other node, the
    standby goes there rather than nowhere for ``LOST_NODE_S``; a second loss
    then still finds a standby to promote.
    """
    launcher, probe, clock = Launcher(nodes={"fog-0": "fog", "fog-1": "fog"}), Probe(), Clock()
    m = standby_manager(launcher, probe, clock)
    m.deploy(spec(tiers=("fog",)), artifact(), tier="fog")
    m.tick()
    m.tick()
    primary = launcher.handles[0]
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", primary.endpoint())
    m.tick()
    assert nodes(current(m).endpoints) == ["fog-1"]
    (fresh,) = launcher.handles[2:]
    assert fresh.node == "fog-0" and fresh.request.avoid_nodes == ("fog-1",)
    assert "fog-0" in m.lost_nodes()
    probe.gone.clear()  # it was the process, not the node
    m.tick()
    assert nodes(current(m).standby) == ["fog-0"]
    clock.now = LOST_NODE_S + 1
    assert m.lost_nodes() == frozenset()  # forgotten
    m.close()


def test_without_a_standby_a_lost_primary_is_replaced_at_once_off_its_node() -> None:
    launcher, probe = Launcher(), Probe()
    m = ServingManager(RouteTable(), launcher, probe=probe, start_timeout_s=5.0)
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    assert len(launcher.handles) == 1  # standby off: none
    primary = launcher.handles[0]
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", primary.endpoint())
    m.tick()
    replacement = launcher.handles[1]
    assert replacement.request.avoid_nodes == ("fog-0",) and replacement.node == "fog-1"
    m.tick()
    assert nodes(current(m).endpoints) == ["fog-1"]
    m.close()


def test_scaling_down_never_drains_the_standby() -> None:
    launcher, probe, clock = Launcher(), Probe(), Clock()
    m = standby_manager(
        launcher, probe, clock, autoscale_delays={"upscale_delay_s": 0, "downscale_delay_s": 0}
    )
    m.deploy(spec(min_replicas=1, max_replicas=2), artifact(), tier="fog", replicas=2)
    m.tick()  # wants 1: one primary drains; the standby waits for its node to be known
    m.tick()
    m.tick()
    m.tick()
    route = current(m)
    assert len(route.endpoints) == 1 and len(route.standby) == 1
    assert nodes(route.endpoints) != nodes(route.standby)
    m.close()


def test_the_mark_wakes_the_loop() -> None:
    launcher, probe = Launcher(), Probe()
    m = ServingManager(
        RouteTable(), launcher, probe=probe, period_s=3600, standby=True, start_timeout_s=5.0
    )
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    m.tick()
    assert current(m).standby != ()
    m.start()  # one tick at start, then sleeps an hour unless woken
    deadline = time.monotonic() + 30
    primary = launcher.handles[0]
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", primary.endpoint())
    while nodes(current(m).endpoints) != ["fog-1"]:
        assert time.monotonic() < deadline, "the mark did not wake the loop"
        time.sleep(0.01)
    m.close()


@pytest.mark.parametrize("tiers", [("fog",), ("fog", "cloud")])
def test_no_node_for_a_standby_is_said_once(
    tiers: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    launcher, probe, clock = Launcher(nodes={"fog-0": "fog"}), Probe(), Clock()
    m = standby_manager(launcher, probe, clock)
    route = m.deploy(spec(tiers=tiers), artifact(), tier="fog")
    assert nodes(route.standby) == ["fog-0"]  # beside its primary: no other node
    for i in range(5):
        clock.now = i * STANDBY_RETRY_S
        m.tick()
    assert len(launcher.handles) == 2 and nodes(current(m).standby) == ["fog-0"]
    said = [r for r in caplog.records if "no node for a standby" in r.getMessage()]
    assert len(said) == 1
    m.close()


def test_a_standby_on_another_tier_takes_the_tier_with_it() -> None:
    launcher, probe = Launcher(nodes={"fog-0": "fog", "cloud": "cloud"}), Probe()
    m = standby_manager(launcher, probe)
    m.deploy(spec(), artifact(), tier="fog", site=None)
    m.tick()
    m.tick()
    assert nodes(current(m).standby) == ["cloud"]  # no other fog node: the next tier
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", launcher.handles[0].endpoint())
    m.tick()
    route = current(m)
    assert nodes(route.endpoints) == ["cloud"] and route.tier == "cloud"
    assert [(v.tier, v.nodes) for v in m.deployments()] == [("cloud", ("cloud",))]
    m.close()


def test_a_replacement_no_node_can_hold_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    launcher, probe = Launcher(nodes={"fog-0": "fog"}), Probe()
    m = ServingManager(RouteTable(), launcher, probe=probe, start_timeout_s=5.0)
    m.deploy(spec(tiers=("fog",)), artifact(), tier="fog")
    probe.gone.add("fog-0")
    launcher.nodes.clear()  # Ray knows the node is gone: no node can hold a replica
    m.routes.mark_down("counter", launcher.handles[0].endpoint())
    for _ in range(5):
        m.tick()
    assert current(m).endpoints == () and len(launcher.handles) == 1
    said = [
        r
        for r in caplog.records
        if "cannot start a replica" in r.getMessage() and r.levelname == "WARNING"
    ]
    assert len(said) == 1
    assert not [r for r in caplog.records if "scaling up" in r.getMessage()]
    m.close()


def test_a_lost_standby_is_replaced_without_a_switch() -> None:
    launcher, probe = Launcher(), Probe()
    m = standby_manager(launcher, probe, unhealthy_after=1)
    m.deploy(spec(), artifact(), tier="fog")
    m.tick()
    m.tick()
    standby = launcher.handles[1]
    probe.gone.add("fog-1")
    m.tick()  # its health check fails: lost, and a new one asked for off both nodes
    route = current(m)
    assert route.epoch == 1 and nodes(route.endpoints) == ["fog-0"] and route.standby == ()
    assert standby.stopped.wait(5)
    assert [(h.request.avoid_nodes, h.node) for h in launcher.handles[2:]] == [
        (("fog-0", "fog-1"), "cloud")
    ]
    m.tick()
    assert nodes(current(m).standby) == ["cloud"] and current(m).epoch == 1
    m.close()


def test_a_node_that_lost_a_replica_is_refused_and_avoided_by_deploys() -> None:
    launcher, probe, clock = Launcher(), Probe(), Clock()
    m = ServingManager(RouteTable(), launcher, probe=probe, clock=clock, start_timeout_s=5.0)
    m.deploy(spec(), artifact(), tier="fog")
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", launcher.handles[0].endpoint())
    m.tick()
    assert m.lost_nodes() == {"fog-0"}
    launched = len(launcher.handles)
    # Ray still counts fog-0 alive: a replica pinned there would wait ~15 s to fail.
    with pytest.raises(UnsatisfiableError, match="node fog-0 lost a replica"):
        m.deploy(spec(), artifact("v2"), tier="fog", node="fog-0")
    assert len(launcher.handles) == launched
    m.deploy(spec(), artifact("v2"), tier="fog")
    assert [h.node for h in launcher.handles[launched:]] == ["fog-1"]
    clock.now = LOST_NODE_S + 1
    assert m.lost_nodes() == frozenset()
    m.close()


def test_the_controller_counts_a_node_that_lost_a_replica_as_gone() -> None:
    from mesh.control._round import _without_lost_nodes
    from mesh.control._snapshot import NodeState, Snapshot

    launcher, probe = Launcher(), Probe()
    m = ServingManager(RouteTable(), launcher, probe=probe, start_timeout_s=5.0)
    snapshot = Snapshot(
        at=0.0,
        window_s=1.0,
        nodes={n: NodeState(n, "ray", t, n, alive=True) for n, t in launcher.nodes.items()},
        latency={},
    )
    assert _without_lost_nodes(snapshot, m) is snapshot  # nothing lost
    m.deploy(spec(), artifact(), tier="fog")
    probe.gone.add("fog-0")
    m.routes.mark_down("counter", launcher.handles[0].endpoint())
    m.tick()
    seen = _without_lost_nodes(snapshot, m)  # Ray still says alive: the engine must not
    assert {n: s.alive for n, s in seen.nodes.items()} == {
        "fog-0": False,
        "fog-1": True,
        "cloud": True,
    }
    m.close()
