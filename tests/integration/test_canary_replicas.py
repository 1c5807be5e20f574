"""The canary on replicas, on real Ray: a candidate replica beside production's on fog.

Real parts: the shared Ray cluster (one fog node), the serving manager with the
Ray launcher, the gateway on a socket, a model registry, the canary service
with :class:`~mesh.serving._canary_replicas.ReplicaCanary` reading the
gateway's own metrics (issue 18, item 4: "and beside production on fog"). No
edge agent serves the module, so none is asked for (:class:`NoEdge`).

One test, in order, under a paced load that never stops: production v1 on a
fog replica -> candidate v2 (as fast) -> a candidate replica takes a share of
the requests -> promoted, production's replicas redeployed with v2, the
candidate replica drained and stopped -> candidate v3 (the same answers, but
320 matrix products slower) -> rolled back on its p95, v2 untouched, v3
archived. Not one request fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from mesh.core._metrics import MetricsRegistry
from mesh.edge._records import AgentView
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.models._registry import ModelRegistry, Stage
from mesh.runtime._canary import CanaryService
from mesh.sdk._specs import Canary, ModuleSpec, QoS, Resources
from mesh.serving._canary_replicas import ReplicaCanary
from mesh.serving._contract import DeployError, ModelArtifact
from mesh.serving._manager import ServingManager
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.placement import PacedLoad
from tests.support.serving import running_gateway, wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

MODULE = MODEL = "tiny"
POLICY = Canary(
    fraction=0.25,
    window_s=15.0,
    min_samples=30,  # a p95 of 30 and more is not one stall of a shared 2-core machine
    p95_ratio=4.0,
    p95_slack_ms=25.0,  # production answers in ~2-7 ms; the slow one ~100 ms (320 products)
    max_wait_s=90.0,
)
SPEC = ModuleSpec(
    name=MODULE,
    model=MODEL,
    qos=QoS(p95_latency_ms=500),
    tiers=("fog",),
    resources=Resources(cpus=0.3),  # production, candidate and its successor: 0.9 of 1
    canary=POLICY,
)


def build_slow_tiny(path: Path, *, scale: float = 2.0, depth: int = 320) -> Path:
    """``y = x * scale`` like :func:`build_tiny_model`, after ``depth`` 64x512 products.

    The products start from the input's sum (so they cannot be folded at load)
    and their result cancels out (identity weights, to float rounding): the same answers,
    slower.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Expand", ["total", "shape"], ["h"]),
    ]
    last = "h"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i}"]))
        last = f"h{i}"
    nodes += [
        helper.make_node("ReduceMean", [last], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "total"], ["zero"]),
        helper.make_node("Mul", ["x", "s"], ["scaled"]),
        helper.make_node("Add", ["scaled", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow-tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [1], [scale]),
            numpy_helper.from_array(np.array([64, 512], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.eye(512, dtype=np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


class NoEdge:
    """No edge agent serves the module here: the canary's agent side is empty."""

    def agents(self) -> list[AgentView]:
        return []

    def install(
        self, agent_id: str, module: str, artifact: ModelArtifact, timeout_s: float
    ) -> None:
        raise DeployError(f"no edge in this test (asked to install on {agent_id})")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry(
        tmp_path / "mesh.db",
        ArtifactStore(tmp_path / "artifacts"),
        ArtifactSigner.generate(),
        profile_budget_s=0.01,
    )
    try:
        yield reg
    finally:
        reg.close()


def test_a_candidate_replica_is_promoted_then_a_slow_one_rolled_back_losing_nothing(
    ray_backend: RayBackend, registry: ModelRegistry, tmp_path: Path
) -> None:
    from mesh.ray._replicas import RayReplicaLauncher

    v1 = registry.register(MODEL, build_tiny_model(tmp_path / "v1.onnx"), code_version="c1")
    registry.promote(MODEL, v1.version)
    launcher = RayReplicaLauncher(nodes=ray_backend.nodes)
    metrics = MetricsRegistry()
    manager = ServingManager(
        RouteTable(), launcher, registry=registry, metrics=metrics, period_s=0.2,
        start_timeout_s=90,
    ).start()  # fmt: skip
    trials = ReplicaCanary(manager.routes, launcher, metrics=metrics, start_timeout_s=90)
    edge = NoEdge()
    canary = CanaryService(registry, edge, edge, manager=manager, replicas=trials, period_s=0.2)
    load: PacedLoad | None = None
    try:
        first = manager.deploy(SPEC, "production", tier="fog")
        (production,) = first.endpoints
        assert isinstance(production, ReplicaEndpoint) and production.version == "v1"
        with running_gateway(manager.routes, metrics=metrics) as (_, server):
            x = {"x": np.ones((1, 4), dtype=np.float32)}
            load = PacedLoad(server.host, server.port, MODULE, x, rate_hz=10.0).start()
            wait_until(lambda: len(load.samples) >= 10, 30, "the load's first answers")
            canary.track(SPEC)
            canary.start()

            def steps(version: str) -> list[str]:
                return [s.step for s in registry.lifecycle.steps(MODEL, version=version)]

            def detail(version: str, step: str) -> dict[str, Any]:
                found = registry.lifecycle.steps(MODEL, version=version)
                return next(dict(s.detail) for s in found if s.step == step)

            # -- a candidate as good: tried beside production, promoted
            registry.register(
                MODEL, build_tiny_model(tmp_path / "v2.onnx", scale=2.0), code_version="c2"
            )
            wait_until(lambda: "canary_sites" in steps("v2"), 120, "v2's candidate replica")
            route = manager.routes.get(MODULE)
            assert route is not None and route.version == "v1"
            (candidate,) = route.canary
            assert isinstance(candidate, ReplicaEndpoint) and candidate.version == "v2"
            assert route.canary_share == 0.25 and route.endpoints == (production,)
            sites = detail("v2", "canary_sites")
            assert sites["replicas"]["replica"] == candidate.replica_id
            assert sites["replicas"]["tier"] == "fog" and sites["canary"] == {}
            wait_until(lambda: "promoted" in steps("v2") or "rolled_back" in steps("v2"),
                       120, "v2's verdict")  # fmt: skip
            compared = detail("v2", "compared")
            assert compared["verdict"] == "promote", compared
            assert compared["candidate"]["requests"] >= POLICY.min_samples
            assert compared["production"]["requests"] > compared["candidate"]["requests"]
            promoted = detail("v2", "promoted")
            assert promoted["replicas"] == ["fog"] and promoted["failures"] == {}
            assert promoted["candidate_replica"]["stopped"] == "drained"
            assert registry.get(MODEL).version == "v2"
            route = manager.routes.get(MODULE)
            assert route is not None and route.version == "v2" and route.canary == ()
            assert all(e.version == "v2" for e in route.endpoints)
            promoted_at = len(load.samples)

            # -- a slower candidate: tried, rolled back on its p95, production untouched
            slow = build_slow_tiny(tmp_path / "v3.onnx")
            registry.register(MODEL, slow, code_version="c3")
            wait_until(lambda: "canary_sites" in steps("v3"), 120, "v3's candidate replica")
            wait_until(lambda: "rolled_back" in steps("v3") or "promoted" in steps("v3"),
                       120, "v3's verdict")  # fmt: skip
            rolled = detail("v3", "rolled_back")
            assert "p95" in rolled["reason"], rolled
            assert rolled["candidate_replica"]["stopped"] == "drained"
            assert registry.get(MODEL).version == "v2"
            assert registry.get(MODEL, "v3").stage == Stage.ARCHIVED
            after = manager.routes.get(MODULE)
            assert after is not None and after.canary == ()
            assert after.endpoints == route.endpoints  # production's replica untouched
            wait_until(lambda: len(load.samples) >= promoted_at + 20, 30, "answers after")
            load.stop()
            assert len(load.samples) > 100
            assert load.failures() == []
    finally:
        if load is not None:
            load.stop()
        canary.stop()
        manager.close()
