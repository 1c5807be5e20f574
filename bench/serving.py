"""Serving benchmark: the gateway against Ray Serve's HTTP proxy, plain FastAPI and raw ORT.

One run, one table. The same ONNX CNN (355,600 parameters, input float32[1,1,32,32], one
ONNX Runtime thread everywhere) is served four ways on an embedded Ray cluster (a cloud
head and one fog node), and every HTTP path gets the same Open Inference Protocol v2 JSON
request:

* **gateway**: the mesh gateway (FastAPI app, token auth on) in this process, as the
  control plane runs it, forwarding to the module's replica on the fog node (a Ray actor
  pinned with ``label_selector``, serving its own socket); also with auth off (the cost
  of auth) and with binary tensors (what tritonclient sends by default);
* **serve_http**: a Ray Serve deployment on the fog node, through Serve's HTTP proxy;
* **fastapi**: a plain FastAPI + ONNX Runtime process (what a user would write);
* **raw_ort**: ``session.run`` in-process.

Latency is measured one request at a time (p50/p99), throughput with 16 requests in
flight, from a separate load process. Rounds alternate between the paths so that noise
from other processes on the host hits all of them alike; medians of the rounds are
reported, with the host's load average. The cost of auth is shown both end to end (auth on
against off; within run noise) and as the token check itself.

Usage::

    python bench/serving.py [--requests 500] [--seconds 2] [--rounds 3] [--json out.json]

Targets (issue #4): gateway p50 <= fastapi p50 + 1 ms; gateway rps at 16 in flight >= 60 %
of fastapi's and >= 5x serve_http's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# FastAPI resolves the plain FastAPI server's (string) annotations in this module's globals.
from fastapi import Request
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._setup import need_test_tools  # noqa: E402

MODULE = "cnn"
CONCURRENCY = 16


# ------------------------------------------------------------------ plain FastAPI


def run_fastapi_server(port: int, model: str) -> None:
    """What a user would write: FastAPI, ONNX Runtime (one thread), JSON in and out."""
    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> JSONResponse:
        doc = await request.json()
        feeds = {
            i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])
            for i in doc["inputs"]
        }
        results = session.run(None, feeds)
        return JSONResponse(
            {
                "model_name": name,
                "outputs": [
                    {
                        "name": n,
                        "datatype": "FP32",
                        "shape": list(r.shape),
                        "data": r.ravel().tolist(),
                    }
                    for n, r in zip(outputs, results, strict=True)
                ],
            }
        )

    print("fastapi ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------ Ray Serve


def deploy_serve(model: bytes) -> int:
    """A Serve deployment on the fog node doing what the FastAPI process does; its HTTP port."""
    from ray import serve

    from mesh.edge.broker._broker import free_port

    @serve.deployment(
        ray_actor_options={"num_cpus": 0.5, "label_selector": {"mesh.tier": "fog"}},
        max_ongoing_requests=CONCURRENCY,
    )
    class Cnn:
        def __init__(self, data: bytes) -> None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                data, sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self.outputs = [o.name for o in self.session.get_outputs()]

        async def __call__(self, request: Request) -> JSONResponse:
            import numpy as np

            doc = await request.json()
            feeds = {
                i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])
                for i in doc["inputs"]
            }
            results = self.session.run(None, feeds)
            return JSONResponse(
                {
                    "model_name": MODULE,
                    "outputs": [
                        {
                            "name": n,
                            "datatype": "FP32",
                            "shape": list(r.shape),
                            "data": r.ravel().tolist(),
                        }
                        for n, r in zip(self.outputs, results, strict=True)
                    ],
                }
            )

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Cnn.bind(model), name="cnn-serve", route_prefix=f"/v2/models/{MODULE}")
    return port


# ------------------------------------------------------------------ the load process


def run_load(spec_path: str) -> None:
    """Alternate rounds over the targets: c=1 latency, then c=16 throughput; print JSON."""
    import numpy as np

    from mesh.serving._oip import encode_request
    from mesh.serving._upstream import UpstreamPool

    spec = json.loads(Path(spec_path).read_text())
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    bodies = {binary: encode_request({"input": x}, binary=binary) for binary in (False, True)}

    async def main() -> dict[str, Any]:
        pool = UpstreamPool(max_idle=CONCURRENCY * 2)
        out: dict[str, Any] = {
            t["name"]: {"p50": [], "p99": [], "rps": [], "errors": 0} for t in spec["targets"]
        }

        async def one(target: dict[str, Any]) -> None:
            body, header_length = bodies[target["binary"]]
            headers = [(b"content-type", b"application/json")]
            if header_length is not None:
                headers.append((b"inference-header-content-length", str(header_length).encode()))
            if target.get("token"):
                headers.append((b"authorization", f"Bearer {target['token']}".encode()))
            response = await pool.request(
                "127.0.0.1",
                target["port"],
                "POST",
                target["path"],
                body=body,
                headers=headers,
                timeout_s=30,
            )
            if response.status != 200:
                out[target["name"]]["errors"] += 1
                raise RuntimeError(f"{target['name']}: {response.status} {response.body[:200]!r}")

        async def worker(target: dict[str, Any], stop: float) -> int:
            count = 0
            while time.perf_counter() < stop:
                await one(target)
                count += 1
            return count

        for target in spec["targets"]:
            for _ in range(spec["warmup"]):
                await one(target)
        for _ in range(spec["rounds"]):
            for target in spec["targets"]:
                n = spec["requests"] if not target.get("slow") else spec["requests"] // 4
                latencies = []
                for _ in range(n):
                    started = time.perf_counter()
                    await one(target)
                    latencies.append((time.perf_counter() - started) * 1e3)
                latencies.sort()
                out[target["name"]]["p50"].append(latencies[len(latencies) // 2])
                out[target["name"]]["p99"].append(latencies[int(len(latencies) * 0.99)])
                began = time.perf_counter()
                stop = began + spec["seconds"]
                counts = await asyncio.gather(*[worker(target, stop) for _ in range(CONCURRENCY)])
                out[target["name"]]["rps"].append(sum(counts) / (time.perf_counter() - began))
        await pool.close()
        return out

    try:
        import uvloop

        result = uvloop.run(main())
    except ImportError:
        result = asyncio.run(main())
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------ main


def raw_ort_ms(model: Path, runs: int = 2000) -> float:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    x = {"input": np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)}
    for _ in range(200):
        session.run(None, x)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def auth_check_us(runs: int = 20_000) -> dict[str, float]:
    """What a token check costs in the gateway: cached, and verified from scratch."""
    from mesh.security._auth import TokenSigner
    from mesh.security._token_auth import TokenAuth

    signer = TokenSigner(b"b" * 32)
    header = f"Bearer {signer.issue('bench', ['invoke'], ttl_s=3600, now=time.time())}"
    auth = TokenAuth(signer)
    started = time.perf_counter()
    for _ in range(runs):
        auth.check(header, "invoke")
    cached = (time.perf_counter() - started) / runs * 1e6
    started = time.perf_counter()
    for _ in range(runs // 10):
        TokenAuth(signer).check(header, "invoke")
    first = (time.perf_counter() - started) / (runs // 10) * 1e6
    return {"check_cached_us": round(cached, 2), "check_first_us": round(first, 2)}


def _wait_line(proc: subprocess.Popen[bytes], needle: bytes, timeout_s: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"process {proc.args} did not print {needle!r}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    need_test_tools("bench/serving.py")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per c=1 round")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per c=16 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--fastapi-server", nargs=2, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS
    )
    parser.add_argument("--load", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fastapi_server:
        run_fastapi_server(int(args.fastapi_server[0]), args.fastapi_server[1])
        return {}
    if args.load:
        run_load(args.load)
        return {}

    import logging

    from mesh import MeshSettings, QoS, Resources
    from mesh.edge.broker._broker import free_port
    from mesh.ray._backend import RayBackend
    from mesh.ray._replicas import RayReplicaLauncher
    from mesh.sdk import ModuleSpec
    from mesh.security._auth import TokenSigner
    from mesh.security._token_auth import TokenAuth
    from mesh.serving._gateway import Gateway
    from mesh.serving._gateway_app import create_gateway_app
    from mesh.serving._manager import ModelArtifact, ServingManager
    from mesh.serving._routes import RouteTable
    from mesh.serving.replica._server import serve_asgi
    from tests.support.agent_fixtures import build_cnn

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model = build_cnn(work / "cnn.onnx")
    raw = raw_ort_ms(model)
    settings = MeshSettings(
        data_dir=work / "mesh",
        fog_nodes=1,
        fog_cpus=1,
        cloud_cpus=1,
        object_store_mb=100,
        ray_auth_mode="disabled",
    )
    procs: list[subprocess.Popen[bytes]] = []
    backend = RayBackend.connect(settings)
    manager: ServingManager | None = None
    servers = []
    try:
        fastapi_port = free_port()
        fastapi = subprocess.Popen(
            [sys.executable, __file__, "--fastapi-server", str(fastapi_port), str(model)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        procs.append(fastapi)
        _wait_line(fastapi, b"fastapi ready")

        spec = ModuleSpec(
            name=MODULE,
            model=MODULE,
            qos=QoS(p95_latency_ms=20),
            tiers=("fog", "cloud"),
            resources=Resources(cpus=0.5),
        )
        manager = ServingManager(RouteTable(), RayReplicaLauncher(nodes=backend.nodes)).start()
        route = manager.deploy(
            spec, ModelArtifact.from_file(model, model=MODULE, version="v1"), tier="fog"
        )
        signer = TokenSigner.load_or_create(settings.data_dir)
        token = signer.issue("bench", ["invoke"], ttl_s=3600, now=time.time())
        gateways = {}
        for name, auth in (("gateway", TokenAuth(signer)), ("gateway_no_auth", TokenAuth(None))):
            server = serve_asgi(
                create_gateway_app(Gateway(manager.routes, auth=auth)),
                port=0,
                name=name,
                lifespan="on",
            )
            servers.append(server)
            gateways[name] = server.port
        serve_port = deploy_serve(model.read_bytes())
        time.sleep(1.0)  # let Serve's proxy learn its route

        path = f"/v2/models/{MODULE}/infer"
        targets = [
            {"name": "fastapi", "port": fastapi_port, "path": path, "binary": False},
            {
                "name": "gateway",
                "port": gateways["gateway"],
                "path": path,
                "binary": False,
                "token": token,
            },
            {
                "name": "gateway_no_auth",
                "port": gateways["gateway_no_auth"],
                "path": path,
                "binary": False,
            },
            {
                "name": "gateway_binary",
                "port": gateways["gateway"],
                "path": path,
                "binary": True,
                "token": token,
            },
            {
                "name": "serve_http",
                "port": serve_port,
                "path": f"/v2/models/{MODULE}/infer",
                "binary": False,
                "slow": True,
            },
        ]
        load_spec = work / "load.json"
        load_spec.write_text(
            json.dumps(
                {
                    "targets": targets,
                    "requests": args.requests,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "warmup": 100,
                }
            )
        )
        load = subprocess.run(
            [sys.executable, __file__, "--load", str(load_spec)],
            capture_output=True,
            cwd=REPO,
            timeout=1800,
        )
        if load.returncode != 0:
            raise RuntimeError(f"the load process failed:\n{load.stderr.decode()[-3000:]}")
        measured = json.loads(load.stdout.decode().strip().splitlines()[-1])
    finally:
        from ray import serve

        try:
            serve.shutdown()
        except Exception as exc:  # best effort at exit
            print(f"serve.shutdown: {exc}", file=sys.stderr)
        for server in servers:
            server.stop()
        if manager is not None:
            manager.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        backend.close()
        shutil.rmtree(work, ignore_errors=True)

    def summary(name: str) -> dict[str, float]:
        m = measured[name]
        return {
            "p50_ms": round(statistics.median(m["p50"]), 3),
            "p99_ms": round(statistics.median(m["p99"]), 3),
            "rps": round(statistics.median(m["rps"]), 1),
        }

    result: dict[str, Any] = {name: summary(name) for name in measured}
    result["raw_ort"] = {"p50_ms": round(raw, 3)}
    g, f, s = result["gateway"], result["fastapi"], result["serve_http"]
    result["targets"] = {
        "gateway_p50_le_fastapi_plus_1ms": g["p50_ms"] <= f["p50_ms"] + 1.0,
        "gateway_rps_ge_60pct_fastapi": g["rps"] >= 0.6 * f["rps"],
        "gateway_rps_ge_5x_serve_http": g["rps"] >= 5 * s["rps"],
    }
    result["auth_cost"] = {
        "p50_ms": round(g["p50_ms"] - result["gateway_no_auth"]["p50_ms"], 3),
        "rps_pct": round(100 * (g["rps"] / result["gateway_no_auth"]["rps"] - 1), 1),
        **auth_check_us(),
    }
    result["setup"] = {
        "model_parameters": 355_600,
        "replica_node": route.endpoints[0].node,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "seconds_per_round": args.seconds,
        "concurrency": CONCURRENCY,
    }

    rows = [
        ("raw ONNX Runtime (in process)", result["raw_ort"]["p50_ms"], None, None),
        ("plain FastAPI + ONNX Runtime", f["p50_ms"], f["p99_ms"], f["rps"]),
        ("gateway -> fog replica (auth on)", g["p50_ms"], g["p99_ms"], g["rps"]),
        (
            "gateway, auth off",
            result["gateway_no_auth"]["p50_ms"],
            result["gateway_no_auth"]["p99_ms"],
            result["gateway_no_auth"]["rps"],
        ),
        (
            "gateway, binary tensors (auth on)",
            result["gateway_binary"]["p50_ms"],
            result["gateway_binary"]["p99_ms"],
            result["gateway_binary"]["rps"],
        ),
        ("Ray Serve HTTP proxy -> replica", s["p50_ms"], s["p99_ms"], s["rps"]),
    ]
    print(f"\n{'path':<36} {'p50 ms':>8} {'p99 ms':>8} {'req/s @16':>10}")
    for label, p50, p99, rps in rows:
        p99_text = f"{p99:8.3f}" if p99 is not None else f"{'-':>8}"
        rps_text = f"{rps:10.0f}" if rps is not None else f"{'-':>10}"
        print(f"{label:<36} {p50:8.3f} {p99_text} {rps_text}")
    mark = {True: "ok", False: "MISSED"}
    t = result["targets"]
    print(
        f"\ntargets: gateway p50 {g['p50_ms']:.3f} <= fastapi {f['p50_ms']:.3f} + 1 ms: "
        f"{mark[t['gateway_p50_le_fastapi_plus_1ms']]}; gateway rps "
        f"{100 * g['rps'] / f['rps']:.0f}% of fastapi (>= 60%): "
        f"{mark[t['gateway_rps_ge_60pct_fastapi']]}; "
        f"{g['rps'] / s['rps']:.1f}x serve_http (>= 5x): "
        f"{mark[t['gateway_rps_ge_5x_serve_http']]}"
    )
    a = result["auth_cost"]
    print(
        f"auth cost: {a['p50_ms']:+.3f} ms p50 and {a['rps_pct']:+.1f}% throughput against "
        f"auth off (run noise); the check itself: {a['check_cached_us']:.1f} us per request "
        f"(a token seen before), {a['check_first_us']:.1f} us the first time"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
