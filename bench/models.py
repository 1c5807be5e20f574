"""Model benchmark: the vehicle counter's raw ONNX Runtime latency (1 thread).

Times ``session.run`` of the counter CNN at batch 1, 8 and 32 on the CPU
provider with one intra-op thread, the figure the registry's profile and the
placement engine's service times are built on (DESIGN §10 assumes a ~357k
parameter CNN at 0.28 ms per call). Without ``--onnx`` it exports an untrained
counter first: weights do not change the latency.

Usage::

    python bench/models.py [--onnx counter.onnx] [--width 32] [--seconds 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export_counter(width: int, directory: Path) -> tuple[Path, int, float]:
    import torch

    from functions.traffic.models import count_parameters, vehicle_counter
    from mesh.models._export import export_onnx

    model = vehicle_counter(width=width).eval()
    held_out = torch.rand(40, 4, 2, 64)
    report = export_onnx(
        model,
        held_out[:2],
        directory / "counter.onnx",
        input_names=["occupancy"],
        output_names=["counts"],
        parity_inputs=[held_out[:1], held_out[1:8], held_out[8:]],
        tolerance=1e-3,
    )
    return report.path, count_parameters(model), report.max_abs_error


def measure(path: Path, batch: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    from mesh.models._export import ort_session

    session = ort_session(path, threads=1)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, 4, 2, 64), dtype=np.float32)
    for _ in range(20):
        session.run(None, {name: x})
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 50:
        t0 = time.perf_counter_ns()
        session.run(None, {name: x})
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    p50 = statistics.median(samples)
    return {
        "batch": batch,
        "runs": len(samples),
        "p50_ms": round(p50, 4),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 4),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
        "frames_per_s": round(batch * 1e3 / p50, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="An exported counter (default: export one).")
    parser.add_argument("--width", type=int, default=32, help="CNN width when exporting.")
    parser.add_argument("--seconds", type=float, default=1.0, help="Timing per batch size.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        parameters: int | None = None
        max_abs_error: float | None = None
        path = args.onnx
        if path is None:
            path, parameters, max_abs_error = export_counter(args.width, Path(tmp))
        rows = [measure(path, batch, args.seconds) for batch in (1, 8, 32)]
        size = path.stat().st_size
    print(f"vehicle counter: {size / 1e6:.2f} MB ONNX", end="")
    if parameters is not None:
        print(f", {parameters:,} parameters, parity max abs error {max_abs_error:.2g}", end="")
    print("\nONNX Runtime, CPUExecutionProvider, 1 thread")
    print(f"{'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'frames/s':>10} {'runs':>7}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['frames_per_s']:>10.0f} {r['runs']:>7}"
        )
    if args.json:
        result = {
            "model_bytes": size,
            "parameters": parameters,
            "max_abs_error": max_abs_error,
            "results": rows,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
