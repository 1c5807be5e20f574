"""A ping over TCP: an echo server and a probe that times round trips, run inside test bed hosts.

Server (prints its port, echoes every byte until SIGTERM)::

    python -m tests.support.testbed._echo serve --host 10.77.0.10

Probe (prints one JSON line: ``{"connect_ms": .., "rtt_ms": [..]}``, with
``"bulk_s"``, the time to echo ``--bulk-bytes``, when asked; or ``{"error": ".."}``
with exit status 1 when it cannot connect)::

    python -m tests.support.testbed._echo probe --host 10.77.0.10 --port 40123 --count 20
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["main"]

_PAYLOAD = b"x" * 32
_MAX_COUNT = 10_000
_MAX_BULK = 100_000_000


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := sock.recv(65536):  # until the peer closes
            sock.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(host: str) -> int:
    with _Server((host, 0), _Echo) as server:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        print(server.server_address[1], flush=True)
        while not stop.wait(0.5):  # until SIGTERM
            pass
        server.shutdown()
    return 0


def _bulk(sock: socket.socket, size: int) -> float:
    """Send ``size`` bytes and read them back; the seconds it took."""
    start = time.perf_counter()
    sender = threading.Thread(target=sock.sendall, args=(b"b" * size,), daemon=True)
    sender.start()
    got = 0
    for _ in range(size):  # at most one recv per byte
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        got += len(chunk)
        if got == size:
            break
    sender.join()
    return time.perf_counter() - start


def _probe(host: str, port: int, count: int, timeout_s: float, bulk_bytes: int) -> int:
    start = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "errno": exc.errno}), flush=True)
        return 1
    connect_ms = (time.perf_counter() - start) * 1000.0
    rtts: list[float] = []
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sent = time.perf_counter()
            sock.sendall(_PAYLOAD)
            got = 0
            for _ in range(len(_PAYLOAD)):  # at most one recv per byte
                chunk = sock.recv(len(_PAYLOAD) - got)
                if not chunk:
                    print(json.dumps({"error": "the server closed the connection"}), flush=True)
                    return 1
                got += len(chunk)
                if got == len(_PAYLOAD):
                    break
            rtts.append((time.perf_counter() - sent) * 1000.0)
        result: dict[str, object] = {"connect_ms": connect_ms, "rtt_ms": rtts}
        if bulk_bytes:
            result["bulk_s"] = _bulk(sock, bulk_bytes)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` or ``probe`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.testbed._echo")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="echo server; prints its port")
    serve.add_argument("--host", required=True)
    probe = sub.add_parser("probe", help="time round trips to an echo server")
    probe.add_argument("--host", required=True)
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--count", type=int, default=20)
    probe.add_argument("--timeout-s", type=float, default=10.0)
    probe.add_argument("--bulk-bytes", type=int, default=0, help="then echo this many bytes")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return _serve(args.host)
    if not 1 <= args.count <= _MAX_COUNT:
        parser.error(f"--count must be 1..{_MAX_COUNT}, got {args.count}")
    if not 0 <= args.bulk_bytes <= _MAX_BULK:
        parser.error(f"--bulk-bytes must be 0..{_MAX_BULK}, got {args.bulk_bytes}")
    return _probe(args.host, args.port, args.count, args.timeout_s, args.bulk_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
