"""Issue #5: a fog Ray node removed -> its modules re-placed, requests keep being answered.

Real Ray (the session's cloud + fog cluster, plus a second fog node this test
adds and removes), the gateway on a socket feeding the monitors, a paced load,
and the placement controller's reconcile loop:

a module serves from a replica on the extra fog node -> the node is removed
(its raylet killed, not drained) -> the controller sees the node leave and
re-places the module on a live node -> requests are answered again. Requests
that reached the dead replica before the move fail; the test bounds how many
(the detection window), and every request sent after the move succeeds.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from mesh import QoS, Resources
from mesh.control._controller import ControllerSettings, PlacementController
from mesh.control._migrations import MigrationExecutor
from mesh.control._monitors import Monitors
from mesh.control._probes import PathProbe
from mesh.control._store import PlacementStore
from mesh.sdk import ModuleSpec
from mesh.serving._manager import ModelArtifact, ServingManager
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.placement import PacedLoad
from tests.support.serving import running_gateway, wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

MODULE = "lossy"
EXTRA_SITE = "fog-extra"
RATE_HZ = 20.0
# Requests the dead replica may still take (or the empty route refuses) before the
# controller's move: the replica fails its health checks (~1-2 s), the controller
# re-places it on a live node pinned by node id. Measured here: 4.7 s on a quiet
# machine, 13.5 s inside the full suite (the new replica was slow to start while
# Ray still counted the dead node); Ray's own node-death detection takes 14-15 s.
MAX_FAILED = int(RATE_HZ * 30)


def test_a_removed_fog_node_s_module_is_re_placed_on_a_live_node(
    tmp_path: Path, ray_backend: RayBackend
) -> None:
    from mesh.ray._probe import RayNodeProbe
    from mesh.ray._replicas import RayReplicaLauncher

    cluster = ray_backend.cluster
    if cluster is None:
        pytest.skip("needs the backend's embedded cluster to add and remove a node")
    # Two advertised CPUs (not burnt): more headroom than fog-0, so the engine keeps the
    # module here rather than break a tie between equal fog nodes by their ids.
    extra = cluster.add_fog_node(site=EXTRA_SITE, cpus=2)
    removed = False
    try:
        wait_until(
            lambda: any(
                n.node_id == extra.node_id and n.alive for n in ray_backend.nodes(refresh=True)
            ),
            60,
            "the extra fog node",
        )
        spec = ModuleSpec(
            name=MODULE,
            model=MODULE,
            # Generous: only the node's loss should move it. On this 2-core host a 2 s
            # window's p95 reached 154 ms with nothing wrong (a 100 ms SLO moved it).
            qos=QoS(p95_latency_ms=1000.0),
            tiers=("fog", "cloud"),
            resources=Resources(cpus=0.25),
        )
        artifact = ModelArtifact.from_file(
            build_tiny_model(tmp_path / "tiny.onnx"), model=MODULE, version="v1"
        )
        with contextlib.ExitStack() as stack:
            manager = ServingManager(
                RouteTable(),
                RayReplicaLauncher(nodes=ray_backend.nodes),
                period_s=0.25,
                start_timeout_s=120,
                drain_timeout_s=5,
            ).start()
            stack.callback(manager.close)
            probe = RayNodeProbe(ray_backend.nodes)
            stack.callback(probe.close)
            monitors = Monitors(
                node_probe=probe,
                rtt=PathProbe(manager.routes, node_probe=probe),
                host_cpu=False,
            )
            store = PlacementStore(tmp_path / "placement.db")
            stack.callback(store.close)
            executor = MigrationExecutor(manager, store, requests=monitors, settle_s=0.2)
            controller = PlacementController(
                manager,
                monitors,
                executor,
                store,
                settings=ControllerSettings(
                    tick_s=0.1, period_s=120.0, window_s=2.0, dwell_s=5.0, poll_s=0.5
                ),
            )
            stack.callback(controller.close)
            route = manager.deploy(spec, artifact, tier="fog", site=EXTRA_SITE)
            (endpoint,) = route.endpoints
            assert isinstance(endpoint, ReplicaEndpoint) and endpoint.node_id == extra.node_id
            gateway, server = stack.enter_context(running_gateway(manager.routes))
            gateway.observer = monitors
            x = np.ones((1, 4), np.float32)
            load = PacedLoad(
                server.host, server.port, MODULE, {"x": x}, rate_hz=RATE_HZ, timeout_s=5.0
            )
            load.start()
            stack.callback(load.stop)
            # The first requests pay the connections' set-up: let them leave the
            # controller's window before it watches, so that only a loss moves it.
            wait_until(lambda: len(load.samples) >= 20, 30, "the first answers")
            time.sleep(2.5)
            controller.start()
            time.sleep(3.0)
            assert controller.history() == [], [
                (m.to_tier, m.reason, m.explanation) for m in controller.history()
            ]
            assert load.failures() == [], load.failures()[:5]

            def served_by() -> str | None:
                current = manager.routes.get(MODULE)
                nodes = [e.node for e in current.endpoints] if current is not None else []
                return nodes[0] if nodes else None

            cluster.remove_node(extra.node_id, graceful=False)
            removed = True
            t_removed = time.monotonic()
            wall_removed = time.time()
            live = {n.node_id for n in ray_backend.nodes(refresh=True) if n.alive} - {extra.node_id}
            wait_until(lambda: served_by() in live, 120, "the module on a live node")
            t_moved = time.monotonic()
            wait_until(lambda: not controller.executor.running(), 30, "the migration's end")
            moves = controller.history(MODULE)
            assert moves and moves[0].status == "done", moves
            move = moves[0]
            # The dead replica has left the route by then, so the record may not name it.
            assert move.from_node in (extra.node_id, None) and move.to_node in live, move
            # The replica's failed health checks trigger it (about a second), else Ray's
            # dead-node detection (about 15 s).
            assert (
                f"no serving replica: {MODULE}" in move.reason
                or f"node left: {extra.node_id}" in move.reason
            ), move.reason
            time.sleep(3.0)  # requests on the new node
            load.stop()
            t_end = time.monotonic()
        failed = load.failures()
        after = [s for s in load.between(t_moved + 1.0, t_end) if s.status != 200]
        sent = len(load.samples)
        first_bad = min((s.at for s in failed), default=t_removed)
        print(
            f"\nnode removed -> module on {move.to_node[:8]} ({move.to_tier}): "
            f"{t_moved - t_removed:.2f} s; {len(failed)} of {sent} requests failed "
            f"(from {first_bad - t_removed:+.2f} s to "
            f"{max((s.at for s in failed), default=t_removed) - t_removed:+.2f} s after removal); "
            f"move decided {move.decided_at - wall_removed:+.2f} s, ready "
            f"{(move.ready_at or 0) - wall_removed:+.2f} s, switched "
            f"{(move.switched_at or 0) - wall_removed:+.2f} s; {move.reason}"
        )
        assert after == [], after[:5]
        assert len(failed) <= MAX_FAILED, len(failed)
        assert all(s.at >= t_removed - 1.0 for s in failed), "failures before the removal"
    finally:
        if not removed:
            with contextlib.suppress(Exception):
                cluster.remove_node(extra.node_id, graceful=False)
