"""Function invocation benchmark: the mesh's Ray backend against plain Ray, same run.

On one embedded cluster (a cloud head and a fog node), a trivial function is
invoked through the mesh — ``Runner.submit(...).result()``: name lookup, argument
check, node check and the two run-store writes (SQLite) around the Ray task —
and, as the floor, through a plain ``ray.remote`` task with the same options
(CPU budget, label selector, retries). The two are interleaved call by call (and round by round for
throughput) so that drift on a small host hits both alike.

* latency: sequential calls after a warm-up, p50/p99;
* throughput: a window of calls in flight (default 32), calls per second.

Usage::

    python bench/functions.py [--calls 1000] [--window 32] [--tier cloud] [--json out.json]

Target (issue: Ray backend): mesh p50 <= 1.2 x plain Ray p50.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh import Mesh, MeshSettings, Resources, Runner, SQLiteStore  # noqa: E402


def ping(x: int) -> int:
    return x


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _throughput(
    submit: Callable[[int], Any], wait: Callable[[Any], Any], calls: int, window: int
) -> float:
    started = time.perf_counter()
    in_flight: collections.deque[Any] = collections.deque()
    sent = 0
    while sent < min(window, calls):
        in_flight.append(submit(sent))
        sent += 1
    while in_flight:
        wait(in_flight.popleft())
        if sent < calls:
            in_flight.append(submit(sent))
            sent += 1
    return calls / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per side")
    parser.add_argument("--window", type=int, default=32, help="calls in flight for throughput")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per side")
    parser.add_argument("--tier", default="cloud", choices=["cloud", "fog"])
    parser.add_argument("--cpus", type=float, default=0.25, help="CPU budget of each call")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    from mesh.ray._backend import RayBackend
    from mesh.ray._remote import label_selector, task_resources

    app = Mesh("bench")
    registered = app.add_function(ping, tier=args.tier, resources=Resources(cpus=args.cpus))
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as data_dir:
        settings = MeshSettings(
            data_dir=Path(data_dir), ray_address=None, fog_nodes=1, ray_auth_mode="disabled"
        )
        started = time.perf_counter()
        backend = RayBackend.connect(settings)
        print(f"cluster up and connected in {time.perf_counter() - started:.1f} s")
        try:
            import ray

            plain = ray.remote(ping).options(
                **task_resources(registered.spec),
                label_selector=label_selector(registered.spec),
                max_retries=0,
                retry_exceptions=False,
                name="ping",
            )

            runner = Runner([app], backend=backend, store=SQLiteStore(settings.store_path))

            def mesh_call(i: int) -> Any:
                return runner.submit("ping", x=i)

            def mesh_wait(call: Any) -> Any:
                return call.result()

            def ray_call(i: int) -> Any:
                return plain.remote(i)

            def ray_wait(ref: Any) -> Any:
                return ray.get(ref)

            for i in range(100):  # warm-up: workers started, functions exported
                mesh_wait(mesh_call(i))
                ray_wait(ray_call(i))
            mesh_ms: list[float] = []
            ray_ms: list[float] = []
            sides = [(mesh_call, mesh_wait, mesh_ms), (ray_call, ray_wait, ray_ms)]
            for i in range(args.calls):
                for call, wait, samples in sides if i % 2 == 0 else sides[::-1]:
                    t0 = time.perf_counter()
                    wait(call(i))
                    samples.append((time.perf_counter() - t0) * 1000)
            mesh_rps: list[float] = []
            ray_rps: list[float] = []
            for r in range(args.rounds):
                order = [(mesh_call, mesh_wait, mesh_rps), (ray_call, ray_wait, ray_rps)]
                for call, wait, out in order if r % 2 == 0 else order[::-1]:
                    out.append(_throughput(call, wait, args.calls, args.window))
        finally:
            backend.close()

    def figures(samples: list[float], rps: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(_percentile(samples, 99), 3),
            "rps": round(statistics.median(rps), 1),
        }

    result: dict[str, Any] = {"mesh": figures(mesh_ms, mesh_rps), "ray": figures(ray_ms, ray_rps)}
    result["ratio_p50"] = round(result["mesh"]["p50_ms"] / result["ray"]["p50_ms"], 3)
    result["ratio_rps"] = round(result["mesh"]["rps"] / result["ray"]["rps"], 3)
    result["params"] = {
        "calls": args.calls,
        "window": args.window,
        "rounds": args.rounds,
        "tier": args.tier,
        "cpus": args.cpus,
    }

    print(f"\n{'path':<34}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}")
    for label, key in (
        ("mesh Runner.submit().result()", "mesh"),
        ("plain ray.remote + ray.get", "ray"),
    ):
        row = result[key]
        print(f"{label:<34}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['rps']:>10.1f}")
    verdict = "ok" if result["ratio_p50"] <= 1.2 else "OVER TARGET"
    print(
        f"\nmesh/ray p50 ratio {result['ratio_p50']:.3f} (target <= 1.2: {verdict}); "
        f"throughput ratio {result['ratio_rps']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
