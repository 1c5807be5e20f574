"""The lifecycle bench's offline run: SUMO and the counter, without the mesh.

A 2x2 SUMO grid under its own actuated programs; every simulated second each
junction's camera frame (the cameras' default impairments) goes through the
counter (ONNX Runtime), scored against SUMO's exact counts per site
(:class:`functions.traffic.sim.camera.CameraRelay`'s error series); from the
drift on, the first counter also counts the drifted cameras' frames as they
would have been without the change (the ``undrifted`` error). At
``drift_at_s`` the drifted sites' cameras change
(:class:`functions.traffic.camera_drift.CameraDrift`); for ``collect_s`` the
frames of every site and their exact counts are kept (what the agents'
fresh-data upload and the late truth give the mesh); then
``functions.traffic.retrain.retrain`` trains a candidate on them, warm-started
from the counter, and from then on the candidate counts. The figures: the
drifted sites' count error before the drift, during it (the old counter), and
after the candidate took over; the other sites' error beside them.
"""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["offline_run"]


def _register_parent(onnx_path: str, data_dir: Path) -> None:
    """The counter as v1 of vehicle-counter in a private registry (the retrain's parent)."""
    from functions.traffic.app import code_version
    from functions.traffic.impairments import Impairments
    from mesh.models import Lineage, ModelRegistry

    os.environ["MESH_DATA_DIR"] = str(data_dir)
    registry = ModelRegistry.open()
    try:
        hyper = {"width": 32, "hidden": 256, "seed": 0, "impairments": Impairments().as_dict()}
        registry.register(
            "vehicle-counter",
            Path(onnx_path),
            code_version=code_version(),
            lineage=Lineage(hyperparameters=hyper),
        )
    finally:
        registry.close()


def offline_run(
    counter_onnx: str,
    *,
    workdir: Path,
    sites: tuple[str, ...] = ("A0", "B1"),
    severity: float = 0.6,
    drift_at_s: float = 120.0,
    collect_s: float = 120.0,
    end_s: float = 480.0,
    seed: int = 11,
    epochs: int = 10,
) -> dict[str, Any]:
    """One offline run (see the module docstring); returns the bench's figures."""
    import onnxruntime as ort

    from functions.traffic.camera_drift import CameraDrift
    from functions.traffic.control import ControllerConfig
    from functions.traffic.impairments import Impairments
    from functions.traffic.retrain import retrain
    from functions.traffic.sim.camera import CameraRelay
    from functions.traffic.sim.network import build_grid, make_demand
    from functions.traffic.sim.session import SumoSession

    grid = build_grid(workdir / "net", rows=2, cols=2, edge_length_m=200.0, lanes=2)
    demand = make_demand(workdir / "net", grid, level="medium", seed=seed, horizon_s=end_s)
    relay = CameraRelay(
        junctions={j: {} for j in grid.junctions},
        segments_m=ControllerConfig().segments_m,
        publish=lambda topic, payload: None,
        output=None,
        stream="counts",
        sim_time_at=lambda ts: ts,
        impairments=Impairments(),
        rng=np.random.default_rng([seed, 20]),
    )
    session_of = {"counter": ort.InferenceSession(counter_onnx, providers=["CPUExecutionProvider"])}
    fresh_x: list[np.ndarray] = []
    fresh_y: list[tuple[int, ...]] = []
    marks: dict[str, float | None] = {"drift_s": None, "candidate_s": None}
    retrain_s = 0.0
    session = SumoSession(grid, demand.path, control="actuated", seed=seed, end_s=end_s)
    session.start()
    try:
        while not session.done:
            now = session.time_s
            if marks["drift_s"] is None and now >= drift_at_s:
                relay.set_reference(partial(_count, session_of["counter"]))
                for site in sites:
                    relay.set_drift(site, CameraDrift.at(severity))
                marks["drift_s"] = now
            if marks["candidate_s"] is None and now >= drift_at_s + collect_s:
                data_dir = workdir / "mesh"
                _register_parent(counter_onnx, data_dir)
                path = workdir / "fresh.npz"
                np.savez(path, inputs=np.stack(fresh_x), labels=np.asarray(fresh_y, np.float32))
                t0 = time.perf_counter()
                ref = retrain(
                    {"payload": {"module": "counter", "model": "vehicle-counter", "version": "v1"}},
                    module="counter",
                    model="vehicle-counter",
                    data=str(path),
                    max_rows=10_000,
                    min_rows=64,
                    synthetic_ratio=1.0,
                    epochs=epochs,
                    lr=1e-3,
                    seed=0,
                    out_dir=str(workdir / "exports"),
                    register=True,
                    run_id=None,
                )
                retrain_s = time.perf_counter() - t0
                session_of["counter"] = ort.InferenceSession(
                    ref["onnx_path"], providers=["CPUExecutionProvider"]
                )
                marks["candidate_s"] = now
            for junction in grid.junctions:
                obs = session.observe(junction)
                frames, counts = relay.render(obs)
                ts = float(now)  # truths are kept per (junction, stamp)
                relay.expect(junction, ts, counts)
                [out] = session_of["counter"].run(None, {"occupancy": frames.astype(np.float32)})
                event = SimpleNamespace(
                    stream="counts",
                    agent="a",
                    site=junction,
                    source_ts=ts,
                    route="local",
                    outputs={"counts": SimpleNamespace(data=out.reshape(-1).tolist())},
                )
                relay.on_event(event)
                if marks["drift_s"] is not None and marks["candidate_s"] is None:
                    fresh_x.append(frames[0])
                    fresh_y.append(tuple(counts))
            session.step()
    finally:
        kpis = session.close()
    series = relay.error_series
    drift_s, cand_s = marks["drift_s"] or drift_at_s, marks["candidate_s"]
    others = sorted(set(grid.junctions) - set(sites))
    after_from = cand_s if cand_s is not None else float("inf")
    return {
        "sites": list(sites),
        "severity": severity,
        "drift_s": drift_s,
        "candidate_s": cand_s,
        "retrain_wall_s": round(retrain_s, 1),
        "fresh_frames": len(fresh_x),
        "error": {
            "before": series.mean(sites=sites, until_s=drift_s),
            "during": series.mean(sites=sites, since_s=drift_s, until_s=after_from),
            "after": series.mean(sites=sites, since_s=after_from),
            "undrifted": relay.undrifted_series.mean(sites=sites, since_s=after_from),
        },
        "error_other_sites": {
            "before": series.mean(sites=others, until_s=drift_s),
            "during": series.mean(sites=others, since_s=drift_s, until_s=after_from),
            "after": series.mean(sites=others, since_s=after_from),
        },
        "mean_wait_s": kpis.mean_wait_s,
    }


def _count(session: Any, batch: np.ndarray[Any, Any]) -> Any:
    """A counter session's counts of one frame batch."""
    return session.run(None, {"occupancy": batch})[0]


def default_workdir() -> Path:
    """A fresh temporary directory for one run."""
    return Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
