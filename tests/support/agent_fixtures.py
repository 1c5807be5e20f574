"""Fixtures for edge-agent tests: test models, a signing key, an artifact server, agent
processes and a plain paho requester.

Import explicitly from test modules::

    from tests.support.agent_fixtures import cnn_model, signing_key  # noqa: F401

Brokers come from :mod:`tests.support.brokers` (Mosquitto and the embedded amqtt).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol import (
    InferReply,
    InferRequest,
    Tensor,
    Topics,
    artifact_signing_message,
    decode_frame,
    encode_frame,
    parse_header,
)

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- models


def build_tiny_model(
    path: Path, *, scale: float = 2.0, width: int = 4, opset: int = 17, op_domain: str = ""
) -> Path:
    """y = x * scale with x: float32[N, width] (onnx.helper, no torch; fast)."""
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["x", "s"], ["y"], domain=op_domain)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])],
    )
    opsets = [helper.make_opsetid("", opset)]
    if op_domain:
        opsets.append(helper.make_opsetid(op_domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def build_slow_model(path: Path, *, rows: int = 64, width: int = 512, depth: int = 24) -> Path:
    """y = mean(x @ I @ I ... @ I), x: float32[rows, width]: ``depth`` real matrix products.

    Slow on purpose (tens of ms a run), so that frames wait in an agent's hands.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, last = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i}"]))
        last = f"h{i}"
    nodes.append(helper.make_node("ReduceMean", [last], ["y"], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def build_cnn(path: Path, *, seed: int = 0) -> Path:
    """A 355,600-parameter CNN, input float32[N,1,32,32] -> logits float32[N,10].

    Conv(1->32,3x3)-ReLU-MaxPool-Conv(32->64,3x3)-ReLU-MaxPool-Flatten-Gemm(4096->82)-ReLU-
    Gemm(82->10), written with onnx.helper and random weights (no torch needed).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        data = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(data, name)

    inits = [
        w("c1w", 32, 1, 3, 3),
        w("c1b", 32),
        w("c2w", 64, 32, 3, 3),
        w("c2b", 64),
        w("f1w", 82, 4096),
        w("f1b", 82),
        w("f2w", 10, 82),
        w("f2b", 10),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["input", "c1w", "c1b"], ["a1"], kernel_shape=[3, 3], pads=pads),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["a2"], kernel_shape=[3, 3], pads=pads),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "f1w", "f1b"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "f2w", "f2b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def cnn_param_count() -> int:
    return 320 + 18496 + (4096 * 82 + 82) + (82 * 10 + 10)


@pytest.fixture(scope="session")
def cnn_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions (different weights) of the test CNN, built once per session."""
    d = tmp_path_factory.mktemp("cnn")
    return build_cnn(d / "cnn-v1.onnx", seed=1), build_cnn(d / "cnn-v2.onnx", seed=2)


# ---------------------------------------------------------------- signing


@dataclass
class SigningKey:
    """A control-plane Ed25519 key made with ``cryptography``."""

    private: Any
    public_raw: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(key, raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def sign(self, name: str, version: str, sha256: str) -> str:
        return base64.b64encode(
            self.private.sign(artifact_signing_message(name, version, sha256))
        ).decode()


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


# ---------------------------------------------------------------- artifact server


class ArtifactServer:
    """A tiny stdlib HTTP server serving registered byte strings."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        files, hits = self.files, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.base}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def artifact_server() -> Iterator[ArtifactServer]:
    server = ArtifactServer()
    try:
        yield server
    finally:
        server.close()


def module_spec(
    server: ArtifactServer,
    key: SigningKey,
    name: str,
    version: str,
    data: bytes,
    *,
    sha256: str | None = None,
    signature: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A desired-state module entry for ``data``, served and signed."""
    digest = hashlib.sha256(data).hexdigest()
    url = server.add(f"{name}-{version}-{uuid.uuid4().hex[:6]}.onnx", data)
    return {
        "name": name,
        "version": version,
        "url": url,
        "sha256": sha256 or digest,
        "signature": signature or key.sign(name, version, sha256 or digest),
        **extra,
    }


def desired(
    version: int,
    modules: Sequence[dict[str, Any]],
    pipelines: Sequence[dict[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "kind": "desired",
        "version": version,
        "modules": list(modules),
        "pipelines": list(pipelines),
        **extra,
    }


# ---------------------------------------------------------------- agent process


class AgentProcess:
    """``python -m edge_agent`` as a child process, logging to a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=self.env,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout_s: float = 15.0, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return self.log().count(needle) >= count
            time.sleep(0.05)
        return False

    def terminate(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@pytest.fixture
def agent_processes() -> Iterator[Callable[..., AgentProcess]]:
    """Factory of agent processes; every one is killed at the end of the test."""
    made: list[AgentProcess] = []

    def make(
        args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> AgentProcess:
        p = AgentProcess(args, log_path, env)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.kill()


# ---------------------------------------------------------------- amqtt in a process

_AMQTT_MAIN = """
import sys, threading, warnings
warnings.simplefilter("ignore")
from mesh.edge.broker._broker import start_embedded_broker
start_embedded_broker(port=int(sys.argv[1]), anonymous=True)
print("ready", flush=True)
threading.Event().wait()
"""


class AmqttProcess:
    """The embedded amqtt broker run in a child process, so that an outage is a clean kill
    and a restart binds the same port again."""

    kind = "amqtt"

    def __init__(self, port: int = 0) -> None:
        from mesh.edge.broker._broker import free_port

        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> AmqttProcess:
        import importlib.util

        if importlib.util.find_spec("amqtt") is None:
            reason = "amqtt is not installed (pip install 'fogmesh[cloud]')"
            if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
                pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
            pytest.skip(reason)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AMQTT_MAIN, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert b"ready" in line, f"amqtt did not start on {self.url}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


# ---------------------------------------------------------------- requester


@dataclass
class Requester:
    """A plain paho client that sends inference requests and collects replies."""

    host: str
    port: int
    prefix: str = "mesh/v1"
    protocol: str = "3.1.1"
    client_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:8]}")
    replies: dict[str, tuple[InferReply, list[Tensor]]] = field(default_factory=dict)
    events: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._cond = threading.Condition()
        self._subacks: set[int] = set()
        self._subscribed: list[str] = []
        self._connected = threading.Event()
        self.topics = Topics(self.prefix)
        self.reply_topic = self.topics.reply(self.client_id)
        proto = mqtt.MQTTv5 if self.protocol == "5" else mqtt.MQTTv311
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto)
        c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(6, 1, 1)  # TCP_NODELAY
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 0.2)  # type: ignore[arg-type]  # faster than agents
        c.connect_async(self.host, self.port, keepalive=30)
        c.loop_start()
        self.client = c
        assert self._connected.wait(10), "requester could not connect"
        self.subscribe(self.reply_topic)

    def _on_connect(self, client: Any, *_a: Any) -> None:
        for topic in self._subscribed:  # resubscribe after a broker restart
            client.subscribe(topic, qos=1)
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            if msg.topic == self.reply_topic:
                header, tensors = decode_frame(bytes(msg.payload))
                reply = parse_header(header, InferReply)
                owned = [Tensor(t.name, t.dtype, t.shape, bytes(t.data)) for t in tensors]
                self.replies[reply.correlation_id or ""] = (reply, owned)
            else:
                self.events.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def subscribe(self, topic: str) -> None:
        self._subscribed.append(topic)
        _, mid = self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: mid in self._subacks), f"no SUBACK for {topic}"

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def send(
        self,
        module: str,
        node: str,
        tensors: Sequence[Tensor],
        *,
        payload: bytes | None = None,
        deadline_ts: float | None = None,
        **header: Any,
    ) -> str:
        corr = uuid.uuid4().hex
        req = InferRequest(
            module=module, reply_to=self.reply_topic, correlation_id=corr, deadline_ts=deadline_ts
        )
        body = encode_frame({**req.model_dump(mode="json", exclude_none=True), **header}, tensors)
        self.client.publish(self.topics.infer(module, node), payload or body, qos=1)
        return corr

    def infer(
        self,
        module: str,
        node: str,
        tensors: Sequence[Tensor],
        timeout_s: float = 10.0,
        **header: Any,
    ) -> tuple[InferReply, list[Tensor]]:
        corr = self.send(module, node, tensors, **header)
        assert self.wait_for(lambda: corr in self.replies, timeout_s), (
            f"no reply from {node} for {module} within {timeout_s}s"
        )
        with self._cond:
            return self.replies.pop(corr)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def requester(host: str, port: int, **kw: Any) -> Iterator[Requester]:
    r = Requester(host, port, **kw)
    try:
        yield r
    finally:
        r.close()
