"""After a restart, a restored module comes back with its warm standby: a kill at once loses nothing.

What ``mesh up`` does after a restart, on real Ray: the recorded deployment is
re-applied through the :class:`~mesh.control._restore.Restorer`, by a serving
manager that keeps standbys. Its standby is asked for with its replica and
serves from the route's first epoch (before, it was asked for only once the
replica served, and a replica killed in between left the module with none: a
chaos soak failed a request that way). Then, under a paced load through a real
gateway, the replica's process is killed (``kill -9``) as soon as the load is
answered: no request fails, none takes more than 2x the module's SLO.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import pytest

from mesh import QoS, Resources
from mesh.control._restore import Restorer, RetryPolicy
from mesh.control._store import DeploymentRecord
from mesh.sdk import ModuleSpec
from mesh.serving._manager import ModelArtifact, ServingManager
from mesh.serving._routes import ModuleRoute, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.placement import PacedLoad
from tests.support.serving import running_gateway, wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

MODULE = "restored"
RATE_HZ = 20.0
# Generous for a shared 2-core host; the bound checked is 2x this (issue 15's target).
SLO_MS = 1000.0


def listener_pid(port: int) -> int:
    """The process listening on ``port`` (a replica's own socket)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port and conn.pid:
            return int(conn.pid)
    raise AssertionError(f"no process listens on port {port}")


def test_a_replica_killed_right_after_a_restore_fails_over_to_its_standby(
    tmp_path: Path, ray_backend: RayBackend
) -> None:
    from mesh.ray._replicas import RayReplicaLauncher

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
    # What the placement store recorded before the restart.
    record = DeploymentRecord(
        module=MODULE, spec_json=spec.model_dump_json(), version="v1", tier="fog", site=None,
        agent=None,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        manager = ServingManager(
            RouteTable(),
            RayReplicaLauncher(nodes=ray_backend.nodes),
            period_s=0.25,
            start_timeout_s=120,
            drain_timeout_s=5,
            standby=True,
        ).start()
        stack.callback(manager.close)

        def apply(r: DeploymentRecord) -> None:
            manager.deploy(
                ModuleSpec.model_validate_json(r.spec_json), artifact, tier=r.tier, site=r.site
            )

        restorer = Restorer(RetryPolicy(attempts=1))
        assert restorer.run([record], apply, stop=threading.Event()) == [MODULE]

        def current() -> ModuleRoute:
            route = manager.routes.get(MODULE)
            assert route is not None
            return route

        restored = current()
        assert len(restored.endpoints) == 1
        assert len(restored.standby) == 1, "restored without its standby"
        primary = restored.endpoints[0]

        _gateway, server = stack.enter_context(running_gateway(manager.routes))
        load = PacedLoad(
            server.host,
            server.port,
            MODULE,
            {"x": np.ones((1, 4), np.float32)},
            rate_hz=RATE_HZ,
            timeout_s=30.0,
        ).start()
        stack.callback(load.stop)
        wait_until(lambda: len(load.samples) >= 1, 60, "the first answer")
        os.kill(listener_pid(primary.port), signal.SIGKILL)  # at once
        killed = time.monotonic()
        wait_until(lambda: primary not in current().endpoints, 60, "the standby promoted")
        wait_until(lambda: len(load.between(killed + 1.0, time.monotonic())) >= 20, 60, "answers")
        load.stop()
    failed = load.failures()
    worst_ms = max(s.ms for s in load.samples)
    print(
        f"\nreplica killed right after the restore: {len(failed)} of {len(load.samples)} "
        f"requests failed; slowest {worst_ms:.0f} ms (2x SLO = {2 * SLO_MS:.0f} ms)"
    )
    assert failed == [], failed[:5]
    assert worst_ms <= 2 * SLO_MS, worst_ms
