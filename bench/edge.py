"""Edge agent benchmark: the agent against a bare paho device, same broker, same run.

Measures, through one Mosquitto (QoS 1, TCP_NODELAY on every client and the
broker) and the same ONNX CNN (1 ONNX Runtime thread):

* round trip request -> ONNX -> reply, one request at a time (p50/p99), for the
  agent and for the *floor*: a bare paho device written here that runs the model
  right in its message callback and answers raw bytes; the two alternate in
  blocks of 50 requests (ABBA), so the machine's drift hits both alike;
* throughput with a window of requests in flight (default 64), the best of
  four alternating passes each;
* the agent's RSS with the model loaded;
* cold start to ready: process start -> first answered request, from the cache
  (restart) and from nothing (desired state retained, download, load, warm-up);
* the raw ONNX Runtime call, for reference.

Usage::

    python bench/edge.py [--requests 2000] [--window 64] [--seconds 3] [--json out.json]

Targets (issue #3): agent p50 <= floor p50 + 0.3 ms; agent rps >= 80 % of the
floor; RSS <= 100 MB; ready <= 1.5 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._setup import need_test_tools  # noqa: E402

FLOOR_REQ = "bench/floor/req"
FLOOR_REPLY = "bench/floor/reply"


# ------------------------------------------------------------------ the floor device


def run_floor_device(host: str, port: int, model: str) -> None:
    """A bare paho device: raw float32 in, raw float32 out, inference in the callback."""
    import numpy as np
    import onnxruntime as ort
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: np.zeros((1, 1, 32, 32), np.float32)})

    def on_message(c: Any, _u: Any, msg: Any) -> None:
        corr, body = msg.payload[:16], msg.payload[16:]
        x = np.frombuffer(body, dtype=np.float32).reshape(1, 1, 32, 32)
        (y,) = sess.run(None, {name: x})
        c.publish(FLOOR_REPLY, corr + y.tobytes(), qos=1)

    def on_connect(c: Any, *_a: Any) -> None:
        c.subscribe(FLOOR_REQ, qos=1)
        print("floor ready", flush=True)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-floor", protocol=mqtt.MQTTv5)
    c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.on_connect = on_connect
    c.on_message = on_message
    c.max_inflight_messages_set(256)
    c.connect(host, port, keepalive=30)
    c.loop_forever()


# ------------------------------------------------------------------ the client


class Client:
    """One paho client sending requests and matching replies by correlation id."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from edge_agent.protocol import FrameTemplate, decode_frame

        self._decode_frame = decode_frame
        self.waiters: dict[bytes, Callable[[bytes], None]] = {}
        self.lock = threading.Lock()
        #: Throughput requests never answered (lost): each pass adds its own.
        self.lost = 0
        self.cid = f"bench-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"mesh/v1/replies/{self.cid}"
        self._subacked = threading.Event()
        # What every request to the agent's module says, encoded once (a client
        # that sends many requests to one module does this).
        self._requests = FrameTemplate(
            {
                "schema_version": 1,
                "kind": "infer_request",
                "module": "cnn",
                "reply_to": self.reply_topic,
            }
        )
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=mqtt.MQTTv5)
        c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.on_message = self._on_message
        c.on_subscribe = lambda *_a: self._subacked.set()
        c.max_inflight_messages_set(256)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        c.subscribe([(FLOOR_REPLY, 1), (self.reply_topic, 1)])
        assert self._subacked.wait(10)
        self.c = c

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        if msg.topic == FLOOR_REPLY:
            corr = payload[:16]
        else:
            header, _ = self._decode_frame(payload)
            corr = str(header.get("correlation_id", "")).encode()
        with self.lock:
            cb = self.waiters.pop(corr, None)
        if cb is not None:
            cb(payload)

    def send(self, target: str, x: Any, done: Callable[[bytes], None]) -> None:
        if target == "floor":
            corr = uuid.uuid4().bytes
            payload, topic = corr + x.tobytes(), FLOOR_REQ
        else:
            rid = uuid.uuid4().hex
            corr = rid.encode()
            payload = self._requests.encode_array({"id": rid, "correlation_id": rid}, "input", x)
            topic = f"mesh/v1/modules/cnn/infer/{target}"
        with self.lock:
            self.waiters[corr] = done
        self.c.publish(topic, payload, qos=1)

    def call(self, target: str, x: Any, timeout_s: float = 10.0) -> bytes:
        ev = threading.Event()
        box: list[bytes] = []

        def done(p: bytes) -> None:
            box.append(p)
            ev.set()

        self.send(target, x, done)
        if not ev.wait(timeout_s):
            raise TimeoutError(f"{target}: no reply in {timeout_s}s")
        return box[0]

    def latency(
        self, targets: tuple[str, str], x: Any, n: int, block: int = 50
    ) -> list[list[float]]:
        """``n`` round trips to each target, in alternating blocks (ABBA), so drift hits both."""
        for target in targets:
            for _ in range(50):
                self.call(target, x)
        out: list[list[float]] = [[], []]
        for b in range(max(1, n // block)):
            order = (0, 1) if b % 2 == 0 else (1, 0)
            for i in order:
                for _ in range(block):
                    t = time.perf_counter()
                    self.call(targets[i], x)
                    out[i].append((time.perf_counter() - t) * 1e3)
        return out

    def throughput(self, target: str, x: Any, window: int, seconds: float) -> float:
        sem = threading.Semaphore(window)
        count = [0]
        lock = threading.Lock()

        def done(_p: bytes) -> None:
            with lock:
                count[0] += 1
            sem.release()

        # warm up
        for _ in range(window):
            sem.acquire()
            self.send(target, x, done)
        for _ in range(window):
            sem.acquire()
        for _ in range(window):
            sem.release()
        with lock:
            count[0] = 0
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            sem.acquire()
            self.send(target, x, done)
            sent += 1
        for _ in range(window):
            sem.acquire(timeout=10)
        elapsed = time.perf_counter() - start
        with lock:
            answered = count[0]
        # A request with no reply within 10 s is lost, not merely slow: count it.
        self.lost += max(0, sent - answered)
        return answered / elapsed

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ------------------------------------------------------------------ helpers


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def spawn_agent(broker_url: str, cache: Path, pub: str, log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "edge_agent",
        "--id",
        "bench-agent",
        "--broker",
        broker_url,
        "--cache-dir",
        str(cache),
        "--public-key",
        pub,
        "--heartbeat-period-s",
        "5",
        "--log-level",
        "WARNING",
    ]
    with log.open("ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)


def time_to_first_reply(client: Client, x: Any, timeout_s: float = 30.0) -> float:
    """From now until a request is answered (resent every 20 ms until one is)."""
    start = time.perf_counter()
    got = threading.Event()
    while not got.is_set():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("agent never answered")
        client.send("bench-agent", x, lambda _p: got.set())
        got.wait(0.02)
    return time.perf_counter() - start


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ main


def main() -> int:
    need_test_tools("bench/edge.py")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--model", type=Path, help="an ONNX CNN with input float32[N,1,32,32]")
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument(
        "--floor-device", nargs=3, metavar=("HOST", "PORT", "MODEL"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.floor_device:
        run_floor_device(args.floor_device[0], int(args.floor_device[1]), args.floor_device[2])
        return 0

    import base64

    import numpy as np
    import onnxruntime as ort
    import psutil
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.protocol import artifact_signing_message
    from mesh.edge.broker._broker import start_mosquitto

    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    model = args.model
    if model is None:
        from tests.support.agent_fixtures import build_cnn

        model = build_cnn(work / "cnn.onnx")
    data = model.read_bytes()
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(100):
        sess.run(None, {"input": x})
    raw = []
    for _ in range(1000):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        raw.append((time.perf_counter() - t) * 1e3)
    del sess

    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    sha = hashlib.sha256(data).hexdigest()
    sig = base64.b64encode(key.sign(artifact_signing_message("cnn", "1", sha))).decode()
    from tests.support.agent_fixtures import ArtifactServer

    files = ArtifactServer()
    url = files.add("cnn.onnx", data)
    desired = {
        "schema_version": 1,
        "kind": "desired",
        "version": 1,
        "modules": [
            {
                "name": "cnn",
                "version": "1",
                "url": url,
                "sha256": sha,
                "signature": sig,
            }
        ],
    }

    broker = start_mosquitto(workdir=work / "mosquitto", persistence=False)
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        floor = subprocess.Popen(
            [sys.executable, __file__, "--floor-device", broker.host, str(broker.port), str(model)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        procs.append(floor)
        assert floor.stdout is not None and b"floor ready" in floor.stdout.readline()
        client = Client(broker.host, broker.port)
        client.c.publish(
            "mesh/v1/agents/bench-agent/desired", json.dumps(desired), qos=1, retain=True
        ).wait_for_publish(5)

        cache = work / "cache"
        log = work / "agent.log"
        agent = spawn_agent(broker.url, cache, pub, log)
        procs.append(agent)
        fresh_s = time_to_first_reply(client, x)
        stop(agent)
        agent = spawn_agent(broker.url, cache, pub, log)
        procs.append(agent)
        ready_s = time_to_first_reply(client, x)

        floor_lat, agent_lat = client.latency(("floor", "bench-agent"), x, 2 * args.requests)
        # Throughput: the best of four passes of --seconds/2 each, alternating (ABBA ABBA).
        rps = {"floor": 0.0, "bench-agent": 0.0}
        for order in (("floor", "bench-agent"), ("bench-agent", "floor")) * 2:
            for target in order:
                passed = client.throughput(target, x, args.window, args.seconds / 2)
                rps[target] = max(rps[target], passed)
        floor_rps, agent_rps = rps["floor"], rps["bench-agent"]
        lost = client.lost
        agent_rss = psutil.Process(agent.pid).memory_info().rss / 2**20
        floor_rss = psutil.Process(floor.pid).memory_info().rss / 2**20
        client.close()
        result = {
            "agent": {
                "p50_ms": statistics.median(agent_lat),
                "p99_ms": pct(agent_lat, 0.99),
                "rps": agent_rps,
                "rss_mib": agent_rss,
                "ready_s": ready_s,
                "fresh_install_ready_s": fresh_s,
            },
            "floor": {
                "p50_ms": statistics.median(floor_lat),
                "p99_ms": pct(floor_lat, 0.99),
                "rps": floor_rps,
                "rss_mib": floor_rss,
            },
            "raw_onnx": {"p50_ms": statistics.median(raw)},
            # Throughput requests (agent and floor) that never got a reply.
            "lost_requests": lost,
            "config": {
                "requests": args.requests,
                "window": args.window,
                "seconds": args.seconds,
                "qos": 1,
                "broker": "mosquitto",
                "cpus": os.cpu_count(),
            },
        }
    finally:
        for p in procs:
            stop(p)
        broker.stop()
        files.close()

    a, f = result["agent"], result["floor"]
    checks = [
        ("agent p50 <= floor p50 + 0.3 ms", a["p50_ms"] <= f["p50_ms"] + 0.3),
        ("agent rps >= 80% of floor", a["rps"] >= 0.8 * f["rps"]),
        ("agent RSS <= 100 MB", a["rss_mib"] <= 100),
        ("ready <= 1.5 s", a["ready_s"] <= 1.5),
        ("no request lost", result["lost_requests"] == 0),
    ]
    result["targets_met"] = {name: ok for name, ok in checks}
    print(f"{'path':<28}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'RSS MiB':>9}")
    print(f"{'raw ONNX Runtime':<28}{result['raw_onnx']['p50_ms']:>9.3f}")
    print(
        f"{'floor: bare paho device':<28}{f['p50_ms']:>9.3f}{f['p99_ms']:>9.3f}"
        f"{f['rps']:>9.0f}{f['rss_mib']:>9.1f}"
    )
    print(
        f"{'edge agent':<28}{a['p50_ms']:>9.3f}{a['p99_ms']:>9.3f}"
        f"{a['rps']:>9.0f}{a['rss_mib']:>9.1f}"
    )
    print(
        f"agent ready from cache {a['ready_s']:.3f} s; from nothing (download+load) "
        f"{a['fresh_install_ready_s']:.3f} s"
    )
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'MISS'}] {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
