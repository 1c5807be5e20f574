"""What agents summarise for drift (per heartbeat), and the reference exports record."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent._drift_stats import DriftStats
from edge_agent._runtime import Job, JobResult, ModuleServer, load_model
from edge_agent.protocol import ModuleStats, Tensor
from mesh.models._reference import drift_reference
from tests.support.agent_fixtures import build_tiny_model


def t(name: str, array: list[list[float]]) -> Tensor:
    return Tensor.from_numpy(name, np.asarray(array, dtype=np.float32))


def test_row_means_per_window_and_a_new_window_per_version() -> None:
    stats = DriftStats()
    assert stats.take() is None
    stats.observe("v1", [t("x", [[1, 3], [5, 7]])], [t("y", [[2.0], [4.0]])])
    stats.observe("v1", [t("x", [[0, 0]])], [t("y", [[6.0]])])
    summary = stats.take()
    assert summary is not None and summary.version == "v1"
    rows = np.array([2.0, 6.0, 0.0])
    assert summary.inputs.count == 3 and summary.inputs.mean == pytest.approx(rows.mean())
    assert summary.inputs.m2 == pytest.approx(((rows - rows.mean()) ** 2).sum())
    assert summary.outputs["y"].mean == pytest.approx(4.0)
    assert stats.take() is None  # taken: a new window
    stats.observe("v1", [t("x", [[1, 1]])], [t("y", [[1.0]])])
    stats.observe("v2", [t("x", [[9, 9]])], [t("y", [[9.0]])])  # swapped: v2's window
    summary = stats.take()
    assert summary is not None and summary.version == "v2" and summary.inputs.count == 1


def test_what_cannot_be_summarised_is_left_out() -> None:
    stats = DriftStats()
    stats.observe("v1", [t("x", [[float("nan"), 1.0]])], [t("y", [[1.0]])])
    broken = Tensor("x", "float32", (2, 2), b"\x00" * 4)  # data shorter than its shape
    stats.observe("v1", [broken], [t("y", [[1.0]])])  # never raises
    summary = stats.take()
    assert summary is not None and summary.inputs.count == 0 and summary.outputs["y"].count == 1


def test_old_heartbeats_stay_valid() -> None:
    assert ModuleStats.model_validate({"requests": 3}).summary is None
    stats = ModuleStats.model_validate(
        {"summary": {"version": "v1", "inputs": {"count": 2, "mean": 1.0, "m2": 0.5}, "new": 1}}
    )
    assert stats.summary is not None and stats.summary.inputs.count == 2


def test_module_server_reports_its_summary_with_its_stats(tmp_path: Path) -> None:
    server = ModuleServer("tiny")
    server.drift_stats = True  # the desired state asks for summaries
    done = threading.Event()
    results: list[JobResult] = []

    def finished(result: JobResult) -> None:
        results.append(result)
        if len(results) == 2:
            done.set()

    try:
        server.swap(load_model(build_tiny_model(tmp_path / "t.onnx"), name="tiny", version="v1"))
        for value in (1.0, 3.0):
            x = Tensor.from_numpy("x", np.full((1, 4), value, dtype=np.float32))
            assert server.submit(Job([x], finished, enqueued=time.perf_counter()))
        assert done.wait(10)
        summary = server.stats().summary
        assert summary is not None and summary.version == "v1"
        assert summary.inputs.count == 2 and summary.inputs.mean == pytest.approx(2.0)
        assert summary.outputs["y"].mean == pytest.approx(4.0)  # y = 2x
        assert server.stats().summary is None  # one window per heartbeat
    finally:
        server.stop()


def test_reference_from_validation_inputs(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "t.onnx", scale=3.0)
    rng = np.random.default_rng(0)
    batches = [rng.normal(1.0, 0.5, size=(n, 4)).astype(np.float32) for n in (1, 7, 24)]
    ref = drift_reference(model, batches, error=0.25)
    rows = np.concatenate([b.mean(axis=1) for b in batches])
    assert ref["samples"] == 32 and ref["error"] == 0.25
    assert ref["inputs"]["mean"] == pytest.approx(rows.mean(), rel=1e-5)
    assert ref["inputs"]["std"] == pytest.approx(rows.std(), rel=1e-4)
    assert ref["outputs"] == ref["by_output"]["y"]
    assert ref["outputs"]["mean"] == pytest.approx(3 * rows.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="graph's inputs"):
        drift_reference(model, [(batches[0], batches[0])])
    with pytest.raises(ValueError, match="at least one batch"):
        drift_reference(model, [])
