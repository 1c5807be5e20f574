"""A paced load of inference requests through the gateway, run as a process (in a test bed host).

Open loop: a request leaves every ``1/rate`` s whatever the earlier ones do, for
``--seconds`` (or until ``--stop-file`` exists), each with its own deadline
(``--timeout-s``); then it waits for those in flight (each ends by its
deadline), so the run is bounded. Every request
is one JSON line in ``--out`` as it ends (flushed, so a test can watch it grow)::

    {"sent": 1765040000.12, "ms": 41.7, "status": 200, "error": null}

``sent`` is Unix time (the hosts of the test bed share the machine's clock);
``status`` 0 means no HTTP answer (``error`` says why: a refused or reset
connection, the deadline). A summary line goes to stdout at the end. Example::

    ip netns exec fmtb-...-client python -m tests.support.client_load \\
        --gateway 10.77.0.10:8080 --module counter --token T --input input:2,1,32,32 \\
        --rate 20 --seconds 60 --timeout-s 10 --out /tmp/load.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from mesh.serving._oip import encode_request
from mesh.serving._upstream import UpstreamPool

__all__ = ["load_argv", "main", "read_samples"]

_MAX_RATE_HZ = 1000.0
_MAX_SECONDS = 600.0


def load_argv(
    gateway: str,
    module: str,
    token: str,
    model_input: str,
    *,
    rate_hz: float,
    seconds: float,
    timeout_s: float,
    out: Path,
) -> list[str]:
    """The command that runs this load (for ``TestBed.spawn`` or ``subprocess.Popen``)."""
    return [
        sys.executable, "-m", "tests.support.client_load", "--gateway", gateway,
        "--module", module, "--token", token, "--input", model_input, "--rate", f"{rate_hz:g}",
        "--seconds", f"{seconds:g}", "--timeout-s", f"{timeout_s:g}", "--out", str(out),
    ]  # fmt: skip


def read_samples(path: Path) -> list[dict[str, object]]:
    """The requests written so far to ``path`` (a half-written last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line being written
    return out


async def _run(args: argparse.Namespace, out: IO[str]) -> dict[str, int]:
    host, _, port = args.gateway.removeprefix("http://").rpartition(":")
    name, _, dims = args.input.partition(":")
    shape = [int(d) for d in dims.split(",")]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    body, header_length = encode_request({name: x}, binary=True)
    headers = [(b"content-type", b"application/octet-stream")]
    if header_length is not None:
        headers.append((b"inference-header-content-length", str(header_length).encode()))
    auth = f"Bearer {args.token}".encode() if args.token else b""
    pool = UpstreamPool()
    counts = {"sent": 0, "ok": 0, "failed": 0}

    async def one() -> None:
        sent_wall, t0 = time.time(), time.perf_counter()
        status, error = 0, None
        try:
            response = await pool.request(
                host,
                int(port),
                "POST",
                f"/v2/models/{args.module}/infer",
                body=body,
                headers=headers,
                authorization=auth,
                timeout_s=args.timeout_s,
            )
            status = response.status
            if status != 200:
                error = bytes(response.body[:200]).decode(errors="replace")
        except Exception as exc:  # every outcome is recorded, none ends the load
            error = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1000.0
        counts["ok" if status == 200 else "failed"] += 1
        out.write(json.dumps({"sent": sent_wall, "ms": ms, "status": status, "error": error}))
        out.write("\n")
        out.flush()

    period, total = 1.0 / args.rate, round(args.rate * args.seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(total):  # bounded: rate x seconds requests
        if args.stop_file is not None and args.stop_file.exists():
            break
        delay = start + i * period - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
        counts["sent"] += 1
    await asyncio.gather(*tasks)  # each ends by its deadline
    await pool.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Send the load (see the module docstring); exit 0 when it ran, whatever the answers."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.client_load")
    parser.add_argument("--gateway", required=True, help="HOST:PORT of the gateway")
    parser.add_argument("--module", required=True)
    parser.add_argument("--token", default="", help="a token with the invoke scope")
    parser.add_argument("--input", required=True, help="NAME:D0,D1,... (float32)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="each request's deadline")
    parser.add_argument("--out", type=Path, required=True, help="one JSON line per request")
    parser.add_argument("--stop-file", type=Path, help="stop sending once this file exists")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.rate <= _MAX_RATE_HZ:
        parser.error(f"--rate must be in (0, {_MAX_RATE_HZ:g}], got {args.rate}")
    if not 0 < args.seconds <= _MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {_MAX_SECONDS:g}], got {args.seconds}")
    if ":" not in args.gateway or ":" not in args.input:
        parser.error("--gateway is HOST:PORT and --input NAME:D0,D1,...")
    with args.out.open("w") as out:
        counts = asyncio.run(_run(args, out))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
