"""Migration benchmark: an SLO violation at the edge to the new route serving on fog.

For a ~0.3 MB and a ~5 MB model (MLPs built with onnx.helper), one run each:
the module serves on a real edge agent under a paced load of 200 req/s through
the gateway; the agent's link is slowed (RTT + 40 ms, p95 over the 40 ms SLO)
and the placement controller (window 1 s) moves the module to the fog node,
make-before-break. Reported per model: ``switch_s`` = from the start of the
violation (the link slowed) to the new route serving (the switch), ``lost`` =
requests that failed, ``max_ms`` = the slowest request the gateway answered
during the move (decision to removal), and the client's view of it.
Targets: switch <= 3 s, 0 lost, no request slower than 2x the SLO during the move.

Needs Ray, Mosquitto and the edge extra; run from the repository root::

    RAY_AUTH_MODE=disabled python bench/placement_migration.py [--json out.json]

``bench/placement.py --migration`` runs it and puts the rows under ``"migration"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._setup import need_test_tools

SLO_MS = 40.0
DELAY_MS = 20.0  # one way: + 40 ms a round trip
RATE_HZ = 200.0


def build_mlp(path: Path, hidden: int, inputs: int = 256, outputs: int = 10) -> Path:
    """x float32[N, inputs] -> Gemm -> ReLU -> Gemm -> float32[N, outputs]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        [w("w1", inputs, hidden), w("b1", hidden), w("w2", hidden, outputs), w("b2", outputs)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def run_one(backend: Any, tmp: Path, hidden: int) -> dict[str, Any]:
    import numpy as np

    from mesh import QoS, Resources
    from mesh.control._controller import ControllerSettings
    from mesh.sdk import ModuleSpec
    from mesh.serving._manager import ModelArtifact
    from tests.support.agent_fixtures import AgentProcess
    from tests.support.placement import PacedLoad, placement_plane
    from tests.support.serving import wait_until

    path = build_mlp(tmp / f"mlp{hidden}.onnx", hidden)
    model_mb = path.stat().st_size / 1e6
    artifact = ModelArtifact.from_file(path, model="mlp", version=f"h{hidden}")
    spec = ModuleSpec(
        name="mlp",
        model="mlp",
        qos=QoS(p95_latency_ms=SLO_MS),
        tiers=("edge", "fog"),
        resources=Resources(cpus=0.25),
    )
    settings = ControllerSettings(
        tick_s=0.05,
        period_s=600.0,
        window_s=1.0,
        min_samples=50,
        dwell_s=600.0,
        poll_s=0.5,
        canary_period_s=1.0,
    )
    agents: list[AgentProcess] = []

    def agent_process(args: list[str], log: Path) -> AgentProcess:
        agents.append(AgentProcess(args, log))
        return agents[-1]

    fog = {n.node_id for n in backend.nodes() if n.alive and n.tier == "fog"}
    try:
        with placement_plane(
            tmp,
            backend,
            agent_id="cam-bench",
            agent_site="int-b",
            controller_settings=settings,
            agent_process=agent_process,
        ) as plane:
            plane.manager.deploy_to_agent(spec, "cam-bench", artifact, timeout_s=60)
            plane.controller.set_sources("mlp", {"int-b": RATE_HZ})
            x = np.random.default_rng(1).random((1, 256), dtype=np.float32)
            load = PacedLoad(plane.server.host, plane.server.port, "mlp", {"x": x}, RATE_HZ)
            load.start()
            try:
                time.sleep(3.0)
                plane.controller.start()
                time.sleep(2.0)

                def node() -> str:
                    route = plane.manager.routes.get("mlp")
                    assert route is not None
                    return route.endpoints[0].node

                assert node() == "cam-bench", plane.controller.history()
                t_slow_wall = time.time()
                t_slow = time.monotonic()
                plane.link.set(delay_ms=DELAY_MS)
                wait_until(lambda: node() in fog, 120, "the module on fog")
                wait_until(lambda: not plane.controller.executor.running(), 60, "the move's end")
                time.sleep(1.0)
            finally:
                load.stop()
                plane.controller.close()
            [record] = plane.controller.history()
            switched = record.switched_at or time.time()
            slowest = _slowest_by_node(plane.monitors, "mlp", t_slow, t_slow_wall, switched)
            t_switch = t_slow + (switched - t_slow_wall)
            during = load.between(t_slow, t_switch + 1.0)
            t_decided = t_slow + (record.decided_at - t_slow_wall)
            sent_after = load.between(t_decided, t_switch + 1.0)
            return {
                "model_mb": round(model_mb, 2),
                "switch_s": round(switched - t_slow_wall, 3),
                "decision_to_switch_s": round(record.switch_s or 0.0, 3),
                "lost": len(load.failures()),
                "max_ms": round(record.max_ms or 0.0, 1),
                "client_max_ms": round(max((s.ms for s in during), default=0.0), 1),
                # Requests sent once the move was decided: those the move can be held to.
                "client_max_after_decision_ms": round(
                    max((s.ms for s in sent_after), default=0.0), 1
                ),
                "slo_ms": SLO_MS,
                "requests": len(load.samples),
                "reason": record.reason,
                "slowest_by_node": slowest,
            }
    finally:
        for agent in agents:
            agent.kill()


def _slowest_by_node(
    monitors: Any, module: str, t0: float, t0_wall: float, switched_wall: float
) -> dict[str, dict[str, float]]:
    """Where the slowest requests since ``t0`` ran: per node, the slowest and when it ended.

    ``at_s`` is its end relative to the switch (negative: before it). Reads the
    gateway's per-node rings (a diagnostic; no public reader exists).
    """
    t_switch = t0 + (switched_wall - t0_wall)
    out = {}
    for (m, node), ring in list(monitors._latency.items()):
        if m != module:
            continue
        samples = ring.since(t0)
        if samples:
            at, ms, _ = max(samples, key=lambda s: s[1])
            over = sum(1 for _, v, _ in samples if v > 2 * SLO_MS)
            out[node[:12]] = {
                "max_ms": round(ms, 1),
                "at_s": round(at - t_switch, 3),
                "over_2x": over,
            }
    return out


def run(hidden_sizes: tuple[int, ...] = (280, 4900)) -> list[dict[str, Any]]:
    """One migration per model size; returns the rows."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from mesh import MeshSettings
    from mesh.ray._backend import RayBackend

    with tempfile.TemporaryDirectory(prefix="mesh-migration-") as raw:
        tmp = Path(raw)
        settings = MeshSettings(
            data_dir=tmp / "ray",
            ray_address=None,
            cloud_cpus=1,
            cloud_gpus=0,
            fog_nodes=1,
            fog_cpus=1,
            object_store_mb=100,
            include_dashboard=False,
            ray_auth_mode="disabled",
        )
        backend = RayBackend.connect(settings)
        try:
            rows = []
            for i, hidden in enumerate(hidden_sizes):
                (tmp / f"{i}-{hidden}").mkdir()
                rows.append(run_one(backend, tmp / f"{i}-{hidden}", hidden))
            return rows
        finally:
            backend.close()


def main(argv: list[str] | None = None) -> int:
    need_test_tools("bench/placement_migration.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--hidden", type=int, nargs="*", default=[280, 4900])
    args = parser.parse_args(argv)
    rows = run(tuple(args.hidden))
    print(
        f"{'model MB':>9}{'switch s':>10}{'lost':>6}{'max ms':>9}{'client max':>12}"
        f"{'after decision':>16}{'slo':>6}"
    )
    for r in rows:
        print(
            f"{r['model_mb']:>9.2f}{r['switch_s']:>10.2f}{r['lost']:>6}{r['max_ms']:>9.1f}"
            f"{r['client_max_ms']:>12.1f}{r['client_max_after_decision_ms']:>16.1f}"
            f"{r['slo_ms']:>6.0f}"
        )
    for r in rows:
        print(f"{r['model_mb']:>9.2f} slowest by node: {r['slowest_by_node']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
