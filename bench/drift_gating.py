"""What a drift summary costs an inference, and what gating it saves.

Every inference of a module whose drift check reads inputs or outputs is
summarised (:class:`edge_agent._drift_stats.DriftStats`: its first input's and
each output's row means, merged into running moments); the others skip it (an
agent's ``drift_stats`` flag, a replica's read lease). Measured in one run, on
the same models, alternating the variants in blocks so the machine's drift hits
them alike:

* **agent**: one inference at a time through an agent's
  :class:`~edge_agent._runtime.ModuleServer` (queue, worker thread, ONNX
  Runtime, reply callback), summarised and not;
* **replica**: :meth:`ModelRunner.run <mesh.serving.replica._server.ModelRunner.run>`
  with no summaries at all (the baseline), with the gate closed (a replica of
  an untracked module) and open;
* the summary alone (``DriftStats.observe`` on the agent's tensors).

Two models: the tests' tiny ``y = 2x`` (the worst case: the model costs next to
nothing) and the 355,600-parameter CNN of ``bench/edge.py``.

Usage::

    python bench/drift_gating.py [--runs 2000] [--json out.json]

Figures are medians in microseconds; ``overhead`` is summarised minus not, and
``ratio`` summarised over not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._setup import need_test_tools  # noqa: E402

BLOCK = 100


def alternate(variants: dict[str, Callable[[], None]], runs: int) -> dict[str, float]:
    """Median us per call of each variant, run in alternating blocks of :data:`BLOCK`."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(1, runs // BLOCK)):  # bounded: runs / BLOCK rounds
        for name, call in variants.items():
            for _ in range(BLOCK):
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1e6)
    return {name: round(statistics.median(t), 2) for name, t in times.items()}


def agent_calls(model: Path, inputs: Any) -> tuple[dict[str, Callable[[], None]], Any]:
    from edge_agent._runtime import Job, ModuleServer, load_model
    from edge_agent.protocol import Tensor

    server = ModuleServer("bench")
    server.swap(load_model(model, name="bench", version="v1", warmup_runs=5))
    tensor = Tensor.from_numpy(server.current.inputs[0].name, inputs)  # type: ignore[union-attr]
    done = threading.Event()

    def one(summarise: bool) -> Callable[[], None]:
        def call() -> None:
            server.drift_stats = summarise
            done.clear()
            server.submit(Job([tensor], lambda _r: done.set(), enqueued=time.perf_counter()))
            if not done.wait(10):
                raise RuntimeError("the agent's module server did not answer in 10 s")

        return call

    return {"not_summarised": one(False), "summarised": one(True)}, server


def replica_calls(model: Path, inputs: Any) -> tuple[dict[str, Callable[[], None]], Any]:
    from mesh.serving.replica._drift import ReplicaDrift
    from mesh.serving.replica._server import ModelRunner

    runner = ModelRunner(model, cpus=1, batching="off", warmup_runs=5)
    runner.warmup()
    feeds = {runner.signature.inputs[0].name: inputs}
    closed = ReplicaDrift("v1", runner.signature.inputs[0].name)
    opened = ReplicaDrift("v1", runner.signature.inputs[0].name)
    opened.take()  # a reader asked: summarising

    def with_drift(drift: ReplicaDrift | None) -> Callable[[], None]:
        def call() -> None:
            runner.drift = drift
            runner.run(feeds)

        return call

    calls = {
        "baseline": with_drift(None),
        "gate_closed": with_drift(closed),
        "summarised": with_drift(opened),
    }
    return calls, runner.run(feeds)


def summary_alone(inputs: Any, runner_outputs: dict[str, Any]) -> dict[str, float]:
    from edge_agent._drift_stats import DriftStats
    from edge_agent.protocol import Tensor

    stats = DriftStats()
    x = [Tensor.from_numpy("x", inputs)]
    y = [Tensor.from_numpy(k, v) for k, v in runner_outputs.items()]
    return alternate({"observe": lambda: stats.observe("v1", x, y)}, 5000)


def main() -> None:
    """Run the benchmark and print (and optionally write) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="calls per variant and model")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    need_test_tools("bench/drift_gating.py")
    import numpy as np

    from tests.support.agent_fixtures import build_cnn, build_tiny_model

    out: dict[str, Any] = {"runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "tiny": (build_tiny_model(Path(tmp) / "tiny.onnx"), np.ones((1, 4), np.float32)),
            "cnn": (
                build_cnn(Path(tmp) / "cnn.onnx"),
                np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32),
            ),
        }
        for name, (model, inputs) in models.items():
            calls, server = agent_calls(model, inputs)
            try:
                agent = alternate(calls, args.runs)
            finally:
                server.stop()
            variants, outputs = replica_calls(model, inputs)
            replica = alternate(variants, args.runs)
            out[name] = {
                "agent_us": {
                    **agent,
                    "overhead": round(agent["summarised"] - agent["not_summarised"], 2),
                    "ratio": round(agent["summarised"] / agent["not_summarised"], 3),
                },
                "replica_us": {
                    **replica,
                    "gate_closed_ratio": round(replica["gate_closed"] / replica["baseline"], 3),
                    "summarised_ratio": round(replica["summarised"] / replica["baseline"], 3),
                },
                "observe_us": summary_alone(inputs, outputs)["observe"],
            }
    print(json.dumps(out, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
