"""Per-inference drift summaries only where a drift check reads them.

Agents summarise a module when its desired state says ``drift_stats`` (the
installer sets it for the modules the drift service tracks); the summary code is
one, :class:`~edge_agent._drift_stats.DriftStats`, for tensors and arrays alike.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edge_agent._drift_stats import DriftStats
from edge_agent._runtime import Job, JobResult, ModuleServer, load_model
from edge_agent.protocol import ModuleSpec, Tensor
from mesh.edge._install import EdgeInstaller
from tests.support.agent_fixtures import build_tiny_model
from tests.unit.test_installer_sampling import edge, installer  # noqa: F401  (fixtures)
from tests.unit.test_offload_routes import FakeAgentGateway, artifact, module_of


def test_arrays_and_tensors_are_summarised_alike() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    mask = np.ones((5, 1), dtype=bool)
    by_tensor, by_array = DriftStats(), DriftStats()
    by_tensor.observe(
        "v1",
        [Tensor.from_numpy("x", x)],
        [Tensor.from_numpy("y", y), Tensor.from_numpy("m", mask)],
    )
    by_array.observe_arrays("v1", x, {"y": y, "m": mask})
    assert by_tensor.take() == by_array.take()
    by_array.observe_arrays("v1", np.array(["a"], dtype=object), {"y": y})  # never raises
    by_array.observe_arrays("v1", mask, {})  # a boolean input: left out
    assert by_array.take() is None


def test_an_agent_module_is_summarised_only_when_asked(tmp_path: Path) -> None:
    server = ModuleServer("tiny")
    done = threading.Event()
    results: list[JobResult] = []

    def finished(result: JobResult) -> None:
        results.append(result)
        done.set()

    def run_one() -> None:
        done.clear()
        x = Tensor.from_numpy("x", np.ones((1, 4), dtype=np.float32))
        assert server.submit(Job([x], finished, enqueued=time.perf_counter()))
        assert done.wait(10)

    try:
        server.swap(load_model(build_tiny_model(tmp_path / "t.onnx"), name="tiny", version="v1"))
        run_one()
        assert results[-1].outputs and server.stats().summary is None  # not asked: skipped
        server.drift_stats = True
        run_one()
        summary = server.stats().summary
        assert summary is not None and summary.inputs.count == 1
    finally:
        server.stop()


def test_desired_states_without_the_flag_stay_valid() -> None:
    remote = {"name": "m", "version": "v1", "route": {"mode": "offload", "target": "r1"}}
    assert ModuleSpec.model_validate(remote).drift_stats is False


def test_set_drift_stats_republishes_the_holders_and_later_installs_carry_it(
    installer: EdgeInstaller,  # noqa: F811
    edge: FakeAgentGateway,  # noqa: F811
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-2", "other", artifact("v1"), 5.0)
    before = module_of(edge.published[-2], "counter")
    assert before.drift_stats is False
    n = len(edge.published)
    assert installer.set_drift_stats("counter", True) == ["cam-1"]
    desired = edge.published[-1]
    assert len(edge.published) == n + 1 and desired.version > edge.published[-2].version
    entry = module_of(desired, "counter")
    assert entry.drift_stats and entry.model_copy(update={"drift_stats": False}) == before
    assert installer.set_drift_stats("counter", True) == []  # already so: nothing published
    installer.install("cam-2", "counter", artifact("v2"), 5.0)
    assert module_of(edge.published[-1], "counter").drift_stats
    installer.set_route("cam-3", "counter", "offload", "r1", 5.0)  # a remote-only entry
    assert module_of(edge.published[-1], "counter").drift_stats
    assert installer.set_drift_stats("counter", False) == ["cam-1", "cam-2", "cam-3"]
    assert not module_of(edge.published[-1], "counter").drift_stats
