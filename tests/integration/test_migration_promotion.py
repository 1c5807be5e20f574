"""Issue 16 item 7: a migration to the node the warm standby is on promotes it, on real Ray.

Real Ray (the session's cloud + fog-0 cluster, plus a fog node this test adds),
the real serving manager with warm standbys, a real gateway on a socket under a
paced open-loop load, and the migration executor moving the module the way a
pin to a node does (``mesh placements pin --node``):

the module's primary serves on fog-0 (pinned), its warm standby on the added
fog node -> the module migrates to the standby's node -> the standby itself
takes the route (no replica is launched before the switch), the old primary
drains and stops, and a new standby starts off the new primary's node. No
request fails throughout.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from mesh import QoS, Resources
from mesh.control._migrations import MigrationExecutor, Target
from mesh.control._store import PlacementStore
from mesh.sdk import ModuleSpec
from mesh.serving._manager import ModelArtifact, ReplicaRequest, ServingManager
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.placement import PacedLoad
from tests.support.serving import running_gateway, wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

MODULE = "promoted"
EXTRA_SITE = "fog-promote"
RATE_HZ = 50.0
SLO_MS = 1000.0  # generous for a shared 2-core host


class CountingLauncher:
    """The Ray launcher, counting the replicas asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[ReplicaRequest] = []

    def launch(self, request: ReplicaRequest) -> Any:
        self.requests.append(request)
        return self.inner.launch(request)


def test_a_migration_to_the_standby_s_node_promotes_it_without_failing_a_request(
    tmp_path: Path, ray_backend: RayBackend
) -> None:
    from mesh.ray._replicas import RayReplicaLauncher

    cluster = ray_backend.cluster
    if cluster is None:
        pytest.skip("needs the backend's embedded cluster to add a node")
    extra = cluster.add_fog_node(site=EXTRA_SITE, cpus=1)
    try:
        wait_until(
            lambda: (
                extra.node_id in {n.node_id for n in ray_backend.nodes(refresh=True) if n.alive}
            ),
            60,
            "the extra fog node",
        )
        [fog_0] = [
            n.node_id
            for n in ray_backend.nodes()
            if n.alive and n.tier == "fog" and n.node_id != extra.node_id
        ]
        spec = ModuleSpec(
            name=MODULE,
            model=MODULE,
            qos=QoS(p95_latency_ms=SLO_MS),
            tiers=("fog", "cloud"),
            resources=Resources(cpus=0.25),
        )
        artifact = ModelArtifact.from_file(
            build_tiny_model(tmp_path / "tiny.onnx"), model=MODULE, version="v1"
        )
        launcher = CountingLauncher(RayReplicaLauncher(nodes=ray_backend.nodes))
        with contextlib.ExitStack() as stack:
            manager = ServingManager(
                RouteTable(),
                launcher,
                period_s=0.25,
                start_timeout_s=120,
                drain_timeout_s=10,
                standby=True,
            ).start()
            stack.callback(manager.close)
            manager.deploy(spec, artifact, tier="fog", node=fog_0)

            def route() -> ModuleRoute:
                r = manager.routes.get(MODULE)
                assert r is not None
                return r

            wait_until(lambda: route().standby != (), 120, "a warm standby")
            [primary] = route().endpoints
            [standby] = route().standby
            assert isinstance(primary, ReplicaEndpoint) and isinstance(standby, ReplicaEndpoint)
            assert primary.node == fog_0 and standby.node == extra.node_id

            _gateway, server = stack.enter_context(running_gateway(manager.routes))
            load = PacedLoad(
                server.host,
                server.port,
                MODULE,
                {"x": np.ones((1, 4), np.float32)},
                rate_hz=RATE_HZ,
                timeout_s=30.0,
            )
            load.start()
            stack.callback(load.stop)
            wait_until(lambda: len(load.samples) >= 20, 60, "the first answers")

            executor = MigrationExecutor(manager, PlacementStore(tmp_path / "placements.db"))
            launched_at_switch: list[int] = []
            manager.routes.on_change(
                lambda _old, _new: launched_at_switch.append(len(launcher.requests))
            )
            launched = len(launcher.requests)
            record = executor.migrate(
                MODULE,
                Target(extra.node_id, "fog", EXTRA_SITE, "ray"),
                site=EXTRA_SITE,
                reason="pinned to the standby's node",
                timeout_s=120,
            )
            assert record.status == "done", record.error
            assert launched_at_switch[0] == launched  # no replica asked for before the switch
            [now] = route().endpoints
            assert isinstance(now, ReplicaEndpoint)
            assert (now.replica_id, now.node) == (standby.replica_id, extra.node_id)
            assert manager.deployments()[0].nodes == (extra.node_id,)

            wait_until(
                lambda: [e.node for e in route().standby] not in ([], [extra.node_id]),
                120,
                "a new standby off the new primary's node",
            )
            sent = len(load.samples)
            wait_until(lambda: len(load.samples) >= sent + 20, 60, "answers after the move")
            load.stop()
        failed = load.failures()
        print(
            f"\n{MODULE}: standby {standby.replica_id} promoted on {extra.node_id[:8]} in "
            f"{record.switch_s:.2f} s (decision to switch); {len(failed)} of "
            f"{len(load.samples)} requests failed; slowest "
            f"{max(s.ms for s in load.samples):.0f} ms"
        )
        assert failed == [], failed[:5]
    finally:
        with contextlib.suppress(Exception):
            cluster.remove_node(extra.node_id, graceful=False)
