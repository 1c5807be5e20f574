"""Issue #5 end to end: QoS-driven, make-before-break migration edge -> fog -> edge.

Real Ray (the session's cloud + fog cluster), a real Mosquitto with passwords and
ACLs, a real ``python -m edge_agent`` whose link to the broker goes through the
link emulator, the gateway on a socket feeding the monitors, and the placement
controller's reconcile loop with short windows:

a CNN module serves on the agent under a paced load through the gateway -> the
agent's link slows (RTT + 60 ms) -> the observed p95 passes the SLO for a window
-> the module migrates to the fog node and the SLO is met again -> the link
recovers (canaries see it) -> after the dwell time the module returns to the
agent; no request fails throughout, and both migrations are recorded with their
timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from mesh import QoS, Resources
from mesh.control._controller import ControllerSettings
from mesh.sdk import ModuleSpec
from mesh.serving._manager import ModelArtifact
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint
from tests.support.agent_fixtures import AgentProcess, agent_processes, build_cnn  # noqa: F401
from tests.support.brokers import require_mosquitto
from tests.support.placement import PacedLoad, placement_plane
from tests.support.serving import wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(300)]

AGENT = "cam-place"
SITE = "int-5-1"
SLO_MS = 30.0
DWELL_S = 8.0


def test_module_migrates_to_fog_under_a_slow_link_and_returns_after_the_dwell(
    tmp_path: Path,
    ray_backend: RayBackend,
    agent_processes: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    require_mosquitto()
    settings = ControllerSettings(
        tick_s=0.1,
        period_s=1.0,
        window_s=2.0,
        min_samples=20,
        dwell_s=DWELL_S,
        poll_s=0.5,
        canary_period_s=0.2,
        saturation_ttl_s=120.0,
    )
    artifact = ModelArtifact.from_file(build_cnn(tmp_path / "cnn.onnx"), model="cnn", version="v1")
    spec = ModuleSpec(
        name="cnn",
        model="cnn",
        qos=QoS(p95_latency_ms=SLO_MS),
        tiers=("edge", "fog"),
        resources=Resources(cpus=0.25),
    )
    fog_nodes = {n.node_id for n in ray_backend.nodes() if n.alive and n.tier == "fog"}
    with placement_plane(
        tmp_path,
        ray_backend,
        agent_id=AGENT,
        agent_site=SITE,
        controller_settings=settings,
        agent_process=agent_processes,
    ) as plane:
        manager, controller = plane.manager, plane.controller
        manager.deploy_to_agent(spec, AGENT, artifact, timeout_s=60)
        controller.set_sources("cnn", {SITE: 50.0})
        x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
        load = PacedLoad(plane.server.host, plane.server.port, "cnn", {"input": x}, rate_hz=50)
        route = manager.routes.get("cnn")
        assert route is not None
        load.inputs = {route.signature.inputs[0].name: x} if route.signature else load.inputs
        load.start()
        time.sleep(2.0)  # past the first requests' warm-up
        controller.start()
        try:

            def served_by() -> str:
                current = manager.routes.get("cnn")
                assert current is not None and current.endpoints
                return current.endpoints[0].node

            # ---- the agent meets the SLO: the module stays there
            time.sleep(4.0)
            assert served_by() == AGENT, controller.history()
            edge_before = plane.monitors.latency("cnn", AGENT, 2.0)
            assert edge_before is not None and edge_before.p95_ms < SLO_MS, edge_before

            # ---- the link slows: the module moves to fog, make-before-break
            plane.link.set(delay_ms=30.0)
            t_slow = time.monotonic()
            wait_until(lambda: served_by() in fog_nodes, 90, "the module on the fog node")
            t_fog = time.monotonic()
            route = manager.routes.get("cnn")
            assert route is not None and isinstance(route.endpoints[0], ReplicaEndpoint)
            wait_until(lambda: not controller.executor.running(), 30, "the migration's end")
            [to_fog] = controller.history()
            assert to_fog.status == "done" and to_fog.from_node == AGENT
            assert to_fog.to_tier == "fog" and "observed p95" in to_fog.reason
            assert to_fog.lost == 0 and "fog" in to_fog.explanation
            assert to_fog.switched_at is not None and to_fog.removed_at is not None
            time.sleep(3.0)
            fog = plane.monitors.latency("cnn", to_fog.to_node, 2.0)
            assert fog is not None and fog.p95_ms < SLO_MS, fog
            fog_p95 = fog.p95_ms

            # ---- the link recovers: canaries see it, and after the dwell it returns
            plane.link.set(delay_ms=0.0)
            t_fixed = time.monotonic()
            wait_until(lambda: served_by() == AGENT, 90, "the module back on the agent")
            t_back = time.monotonic()
            assert isinstance(manager.routes.get("cnn").endpoints[0], AgentEndpoint)  # type: ignore[union-attr]
            wait_until(lambda: not controller.executor.running(), 30, "the migration's end")
            back, _ = controller.history()
            assert back.to_node == AGENT and back.status == "done" and back.lost == 0
            assert t_back - t_fog >= DWELL_S - 0.5
            # Back on the agent it meets the SLO again. The fog replica's
            # teardown shares these two cores, so one 1.5 s window may hold a
            # stall of the machine: the agent gets 10 s to show a window that
            # meets the SLO, polled every 0.5 s.
            time.sleep(2.0)
            windows = []
            for _ in range(20):
                edge = plane.monitors.latency("cnn", AGENT, 1.5)
                windows.append(edge)
                if edge is not None and edge.p95_ms < SLO_MS:
                    break
                time.sleep(0.5)
            assert edge is not None and edge.p95_ms < SLO_MS, windows[-3:]
            edge_p95 = edge.p95_ms
        finally:
            load.stop()
            controller.close()
        failures = load.failures()
        assert failures == [], failures[:5]
        plans = plane.store.plans()
        assert len(plans) >= 3 and plans[0].routes["cnn"]["node"] == AGENT
        print(
            f"\nslow link -> fog route: {t_fog - t_slow:.2f} s "
            f"(decision -> switch {to_fog.switch_s:.2f} s, max {to_fog.max_ms:.0f} ms); "
            f"fog p95 {fog_p95:.1f} ms; recovered -> back on edge: {t_back - t_fixed:.2f} s; "
            f"edge p95 {edge_p95:.1f} ms; {len(load.samples)} requests, 0 lost"
        )
