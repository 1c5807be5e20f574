"""A module replica's own inference server: ONNX Runtime behind a small OIP v2 HTTP server.

Ray-agnostic: the Ray actor in :mod:`mesh.ray._replicas` runs one of these,
and so can ``python -m mesh.serving.replica._server`` on any host. Requests reach it
directly (the gateway keeps pooled keep-alive connections to it); nothing goes
through Ray per request.

* :class:`ModelRunner`: an ONNX Runtime session with intra-op threads equal
  to the replica's whole reserved CPUs (at least one; spinning off, so a
  fractional replica does not burn a shared core), on the execution provider
  the node has (CUDA when the replica holds a GPU and ONNX Runtime has it).
  It warms up before the replica reports ready, and measures whether batching
  pays (batch-8 cost per item against batch 1).
* Dynamic batching (:mod:`mesh.serving.replica._batching`): requests that
  arrive while the model is busy share its next run; a full queue answers 503
  (:class:`~mesh.serving.replica._batching.ReplicaOverloadedError`), so the
  gateway tries another replica.
* :class:`ReplicaApp`: a raw ASGI app (no framework on the hot path) for the
  replica's one model, answering only callers with its replica key
  (:mod:`mesh.serving._replica_keys`; liveness and readiness are open):
  ``POST /v2/models/{name}[/versions/{v}]/infer`` (JSON and binary
  tensors; 400 naming the expected signature), health, metadata,
  ``GET /stats`` (in-flight requests, their time average, counts, latency),
  ``GET /drift`` (:mod:`mesh.serving.replica._drift`) and ``GET /metrics``.
  Health is answered on the event loop while the model runs on its thread, so
  a slow model does not fail health checks. Every error is raised and answered
  in one place, with the status and the one JSON body of
  :mod:`mesh.core._http_errors`. A body is capped by the model's signature
  (413 from ``Content-Length`` before reading, or while reading), must arrive
  within ``read_timeout_s`` (408), and a large one's memory is handed back
  afterwards (:mod:`mesh.serving.replica._limits`); these answers close the
  connection, so the rest of a refused body is never read.
* :func:`~mesh.core._http_server.serve_asgi` runs it under uvicorn (httptools
  and uvloop when installed) in a daemon thread.

Example:
    >>> runner = ModelRunner(Path("counter.onnx"), cpus=1)            # doctest: +SKIP
    >>> app = ReplicaApp(runner, model="counter", version="v1",
    ...                  key=new_replica_key())                          # doctest: +SKIP
    >>> server = serve_asgi(app, port=0)                              # doctest: +SKIP
    >>> server.url                                                     # doctest: +SKIP
    'http://127.0.0.1:40123'
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from edge_agent._budget import tune_malloc
from mesh.core._errors import (
    InvalidRequestError,
    MeshError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from mesh.core._http_errors import error_body, error_headers, error_status
from mesh.core._http_server import (
    MAX_BODY_BYTES,
    Receive,
    Scope,
    Send,
    ServerThread,
    header,
    read_body,
    respond,
    respond_json,
    serve_asgi,
)
from mesh.core._metrics import CONTENT_TYPE
from mesh.core._read_deadlines import ReadDeadlines
from mesh.models._export import ModelSignature
from mesh.security._auth import AuthError
from mesh.serving._oip import (
    HEADER_LENGTH,
    InferenceInputError,
    ModelNotServedError,
    ServingError,
    check_inputs,
    decode_request,
    encode_response,
    model_metadata,
    ort_signature,
    parse_model_path,
)
from mesh.serving._replica_keys import (
    OPEN_PATHS,
    REPLICA_KEY_ENV,
    ReplicaKeyCheck,
)
from mesh.serving.replica._batching import Batcher, Feeds
from mesh.serving.replica._drift import ReplicaDrift
from mesh.serving.replica._limits import (
    READ_TIMEOUT_S,
    MemoryRelease,
    body_limit,
)
from mesh.serving.replica._stats import ReplicaStats

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "ModelRunner",
    "ReplicaApp",
    "ReplicaStats",
    "ServerThread",
    "choose_providers",
    "serve_asgi",
]

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
#: Models faster than this run inline on the event loop (a thread hop costs 50-100 us).
INLINE_BELOW_MS = 3.0
_AUTHORIZATION = b"authorization"
_CONTENT_LENGTH = b"content-length"
#: Refusals sent before the body was read close the connection (its rest is never read).
_CLOSING = (AuthError, RequestTooLargeError, RequestTimeoutError)
_SERVER_METADATA = {"name": "fogmesh-replica", "version": "1", "extensions": ["binary_tensor_data"]}


def choose_providers(available: Sequence[str], gpus: float) -> list[str]:
    """Execution providers for a replica: CUDA first when it holds a GPU and ORT has CUDA.

    Example:
        >>> choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], gpus=0.5)
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
        >>> choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], gpus=0)
        ['CPUExecutionProvider']
    """
    if gpus > 0 and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def intra_op_threads(cpus: float) -> int:
    """ONNX Runtime intra-op threads for ``cpus`` reserved CPUs: the whole ones, at least 1."""
    return max(1, math.floor(cpus + 1e-9))


# ---------------------------------------------------------------- the model


class ModelRunner:
    """One ONNX Runtime session, warmed up, with a batching decision.

    Args:
        model: the ONNX file's bytes or path.
        cpus: CPUs the replica reserves (intra-op threads = whole CPUs, at least 1).
        gpus: GPUs it reserves; > 0 uses CUDA when ONNX Runtime has it.
        batching: ``"auto"`` (batch when it pays), ``"on"`` or ``"off"``.
        max_batch: the largest batch a run takes.
        warmup_runs: runs before the replica reports ready.
    """

    def __init__(
        self,
        model: bytes | Path,
        *,
        cpus: float = 1.0,
        gpus: float = 0.0,
        batching: Literal["auto", "on", "off"] = "auto",
        max_batch: int = 32,
        warmup_runs: int = 3,
    ) -> None:
        """Load the session (warm-up is :meth:`warmup`)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.threads = intra_op_threads(cpus)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # A spinning pool burns the cores it waits on; replicas share nodes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = choose_providers(ort.get_available_providers(), gpus)
        source = model if isinstance(model, bytes) else str(model)
        try:
            self._session = ort.InferenceSession(
                source, sess_options=options, providers=self.providers
            )
        except Exception as exc:
            raise MeshError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self.provider = self._session.get_providers()[0]
        self.signature: ModelSignature = ort_signature(self._session)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.batchable = all(
            s.batch_dynamic for s in (*self.signature.inputs, *self.signature.outputs)
        )
        self.max_batch = max(1, max_batch) if self.batchable else 1
        #: The largest batch one request may carry (its body cap is sized for it).
        self.max_request_batch = max(1, max_batch)
        self._batching = batching
        self.batching = batching == "on" and self.batchable
        self._warmup_runs = warmup_runs
        self.warm = False
        self.single_ms: float | None = None
        self.batch8_ms: float | None = None
        #: Summarises each run for drift checks (set by :class:`ReplicaApp`).
        self.drift: ReplicaDrift | None = None

    def feeds(self, batch: int = 1) -> Feeds:
        """Zero inputs of batch size ``batch`` (other symbolic sizes are 1)."""
        import numpy as np

        out: Feeds = {}
        for spec in self.signature.inputs:
            dims = [d if isinstance(d, int) else 1 for d in spec.shape]
            if dims and not isinstance(spec.shape[0], int):
                dims[0] = batch
            out[spec.name] = np.zeros(dims, dtype=spec.dtype)
        return out

    def run(self, feeds: Feeds) -> Feeds:
        """Run the model once (blocking; releases the GIL while ONNX Runtime works)."""
        outputs = dict(zip(self._output_names, self._session.run(None, feeds), strict=True))
        if self.drift is not None:
            self.drift.observe(feeds, outputs)
        return outputs

    def _best_ms(self, feeds: Feeds, runs: int) -> float:
        best = math.inf
        for _ in range(runs):
            started = time.perf_counter()
            self.run(feeds)
            best = min(best, (time.perf_counter() - started) * 1000.0)
        return best

    def warmup(self) -> None:
        """Run the model ``warmup_runs`` times and decide whether batching pays."""
        single = self.feeds(1)
        for _ in range(self._warmup_runs):
            self.run(single)
        self.single_ms = self._best_ms(single, 5)
        if self.batchable and self._batching == "auto":
            self.batch8_ms = self._best_ms(self.feeds(8), 3)
            # Batching pays when a batch of 8 costs clearly less than 8 single runs.
            self.batching = self.batch8_ms / 8 < 0.75 * self.single_ms
        self.warm = True
        logger.info(
            "model warm on %s with %d thread(s): %.3f ms at batch 1%s; batching %s",
            self.provider,
            self.threads,
            self.single_ms,
            f", {self.batch8_ms:.3f} ms at batch 8" if self.batch8_ms else "",
            "on" if self.batching else "off",
        )


# ---------------------------------------------------------------- the app


class ReplicaApp:
    """The replica's ASGI app: OIP v2 for one model, plus ``/stats`` and ``/metrics``.

    Args:
        runner: the loaded model.
        model: the name it is served under.
        version: the version it is.
        node_id: the node it runs on (reported in ``/stats``).
        replica_id: its id (reported in ``/stats``).
        max_queue: queued requests past which it answers 503.
        execution: where the model runs: ``"inline"`` on the event loop, on a
            ``"thread"``, or ``"auto"`` (inline when it is faster than
            :data:`INLINE_BELOW_MS`).
        key: the replica key callers must send (every route but liveness and
            readiness answers 401 without it); None answers anyone, for a replica
            only its own process reaches (tests).
        max_body_bytes: the body cap; default the largest valid request for the
            model's signature at the runner's ``max_request_batch``.
        read_timeout_s: how long a request body may take to arrive (408 after).
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        model: str,
        version: str,
        node_id: str = "",
        replica_id: str = "",
        max_queue: int = 1024,
        execution: Literal["auto", "inline", "thread"] = "auto",
        key: str | None = None,
        max_body_bytes: int | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        """Wrap ``runner``; call :meth:`warmup` (or let :meth:`start` do it) before serving."""
        self.runner = runner
        self._keys = ReplicaKeyCheck(key) if key is not None else None
        self.max_body_bytes = (
            max_body_bytes
            if max_body_bytes is not None
            else body_limit(runner.signature, runner.max_request_batch)
        )
        self.read_timeout_s = read_timeout_s
        self._deadlines = ReadDeadlines(read_timeout_s)
        self._release = MemoryRelease()
        self.model = model
        self.version = version
        self.node_id = node_id
        self.replica_id = replica_id
        self.stats = ReplicaStats()
        first = runner.signature.inputs[0].name if runner.signature.inputs else ""
        self.drift = runner.drift = ReplicaDrift(version, first)
        self.draining = False
        self.max_queue = max_queue
        #: Other ways in (the MQTT responder): name -> its part of ``/stats``.
        self.reporters: dict[str, Callable[[], dict[str, Any]]] = {}
        self._execution = execution
        self._batcher = Batcher(runner, max_queue, inline=execution == "inline")

    @property
    def ready(self) -> bool:
        """Warm and not draining."""
        return self.runner.warm and not self.draining

    def warmup(self) -> None:
        """Warm the model up (blocking) and choose inline or threaded execution."""
        self.runner.warmup()
        if self._execution == "auto":
            single = self.runner.single_ms or 0.0
            self._batcher.inline = single < INLINE_BELOW_MS
        logger.info(
            "replica %s of %s %s runs the model %s",
            self.replica_id,
            self.model,
            self.version,
            "inline" if self._batcher.inline else "on a worker thread",
        )

    def close(self) -> None:
        """Stop the model thread."""
        self._batcher.close()

    def describe(self) -> dict[str, Any]:
        """Identity and state, as ``/stats`` reports it."""
        return {
            **{name: report() for name, report in self.reporters.items()},
            "model": self.model,
            "version": self.version,
            "node_id": self.node_id,
            "replica_id": self.replica_id,
            "pid": os.getpid(),
            "ready": self.ready,
            "provider": self.runner.provider,
            "threads": self.runner.threads,
            "batching": self.runner.batching,
            "max_batch": self.runner.max_batch,
            "inline": self._batcher.inline,
            "queue": self._batcher.depth(),
            "batches": self._batcher.batches,
            "batched_requests": self._batcher.batched_requests,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        size = 0
        try:
            if self._keys is not None and path not in OPEN_PATHS:
                self._keys.check(header(scope, _AUTHORIZATION))
            if path.startswith("/v2/models/"):
                size = await self._model_route(scope, receive, send, path, method)
            elif path in OPEN_PATHS:
                ok = path.endswith("live") or self.ready
                await respond(send, 200 if ok else 503, b"")
            elif path == "/v2":
                await respond_json(send, 200, _SERVER_METADATA)
            elif path == "/drift":  # one reader (the control plane's drift feed) takes windows
                await respond_json(send, 200, {"summary": self.drift.take()})
            elif path == "/stats":
                await respond_json(send, 200, {**self.describe(), **self.stats.window()})
            elif path == "/metrics":
                await respond(
                    send,
                    200,
                    self.stats.metrics.render().encode(),
                    content_type=CONTENT_TYPE.encode(),
                )
            else:
                raise NotFoundError(f"no route {method} {path}")
        except Exception as exc:  # the one place a request's failure becomes a response
            if error_status(exc) >= 500 and not isinstance(exc, ServingError):
                logger.exception(
                    "replica %s of %s %s failed on %s",
                    self.replica_id,
                    self.model,
                    self.version,
                    path,
                )
            closing = [(b"connection", b"close")] if isinstance(exc, _CLOSING) else []
            await respond(
                send, error_status(exc), error_body(exc), headers=[*error_headers(exc), *closing]
            )
        if size:
            self._release.after(size)

    async def _model_route(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> int:
        """Answer a ``/v2/models/...`` route; returns the bytes an inference handled."""
        parsed = parse_model_path(path)
        if parsed is None:
            raise NotFoundError(f"no route {method} {path}")
        name, version, action = parsed
        if name != self.model or (version is not None and version != self.version):
            raise ModelNotServedError(name, version, [f"{self.model} {self.version}"])
        if action == "infer" and method == "POST":
            return await self._infer(scope, receive, send)
        if action == "ready":
            await respond(send, 200 if self.ready else 503, b"")
        elif action == "" and method == "GET":
            await respond_json(
                send, 200, model_metadata(self.model, [self.version], self.runner.signature)
            )
        else:
            raise MethodNotAllowedError(f"{method} {path} is not allowed")
        return 0

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        """The body, refused (413) by ``Content-Length`` before a byte is read, or past the cap.

        Raises:
            RequestTooLargeError: over :attr:`max_body_bytes` (or the client left).
            RequestTimeoutError: the body did not arrive within :attr:`read_timeout_s`.
            InvalidRequestError: ``Content-Length`` is not a number.
        """
        limit = self.max_body_bytes
        raw = header(scope, _CONTENT_LENGTH)
        if raw is not None and (len(raw) > 19 or not raw.isdigit() or int(raw) > limit):
            if raw.isdigit():
                raise RequestTooLargeError(self._too_large(f"of {int(raw)} bytes "))
            raise InvalidRequestError(f"Content-Length must be a number, got {raw[:32]!r}")
        body = await self._deadlines.read(read_body(receive, limit, timeout_s=None))
        if body is None:
            raise RequestTooLargeError(self._too_large("") + " (or the client left)")
        return body

    def _check_batch(self, inputs: Feeds) -> None:
        """Refuse a batch over the runner's ``max_request_batch`` (its answer would be too).

        Raises:
            RequestTooLargeError: an input's batch axis is over it (HTTP 413).
        """
        most = self.runner.max_request_batch
        for spec in self.runner.signature.inputs:
            if spec.batch_dynamic and inputs[spec.name].shape[0] > most:
                raise RequestTooLargeError(
                    f"input {spec.name!r} has a batch of {inputs[spec.name].shape[0]}; "
                    f"this replica takes at most {most} a request"
                )

    def _too_large(self, size: str) -> str:
        return (
            f"request body {size}is over this replica's {self.max_body_bytes}-byte limit "
            f"(the largest request for {self.model}'s inputs at batch "
            f"{self.runner.max_request_batch}, at most {MAX_BODY_BYTES})"
        )

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> int:
        started = time.perf_counter()
        self.stats.started()
        ok = False
        try:
            body = await self._read(scope, receive)
            raw_length = header(scope, HEADER_LENGTH.encode())
            try:
                header_length = int(raw_length) if raw_length is not None else None
            except ValueError:
                raise InferenceInputError(
                    self.model, f"{HEADER_LENGTH} is not a number: {raw_length!r}"
                ) from None
            request = decode_request(self.model, body, header_length)
            check_inputs(self.model, request.inputs, self.runner.signature.inputs)
            self._check_batch(request.inputs)
            outputs = await self._batcher.submit(request.inputs, self.model)
            payload, json_length = encode_response(
                self.model,
                self.version,
                request.id,
                outputs,
                requested=request.outputs,
                binary=request.binary,
            )
            extra = (
                [] if json_length is None else [(HEADER_LENGTH.encode(), str(json_length).encode())]
            )
            await respond(
                send,
                200,
                payload,
                headers=extra,
                content_type=b"application/json"
                if json_length is None
                else b"application/octet-stream",
            )
            ok = True
            return len(body) + len(payload)
        finally:
            self.stats.finished(time.perf_counter() - started, ok)


# ---------------------------------------------------------------- serving


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mesh.serving.replica._server",
        description="Serve one ONNX model over the Open Inference Protocol (no Ray).",
    )
    parser.add_argument("--model", required=True, type=Path, help="the ONNX file")
    parser.add_argument("--name", required=True, help="the name it is served under")
    parser.add_argument("--version", default="v1", help="its version")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs (intra-op threads)")
    parser.add_argument("--batching", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--execution", choices=("auto", "inline", "thread"), default="auto")
    parser.add_argument("--mqtt", metavar="URL", help="also answer MQTT requests via this broker")
    parser.add_argument("--mqtt-prefix", default="mesh/v1", help="MQTT topic prefix")
    parser.add_argument("--mqtt-ca-file", default=None, help="CA of an mqtts:// broker")
    parser.add_argument("--replica-id", default=None, help="MQTT target id (default: the name)")
    parser.add_argument(
        "--key-stdin",
        action="store_true",
        help=f"read the replica key from stdin's first line (else ${REPLICA_KEY_ENV}); "
        "required unless --host is loopback",
    )
    parser.add_argument(
        "--read-timeout", type=float, default=READ_TIMEOUT_S, help="seconds a body may take"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    key = sys.stdin.readline().strip() if args.key_stdin else os.environ.pop(REPLICA_KEY_ENV, "")
    if not key and args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error(
            f"--host {args.host} is reachable from other hosts: give the replica a key "
            f"(${REPLICA_KEY_ENV}, or --key-stdin); make one with "
            f"python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not key:
        logger.warning("no replica key: anyone on this host can call the replica")
    tune_malloc()  # large request buffers go back to the system when freed
    runner = ModelRunner(args.model, cpus=args.cpus, batching=args.batching)
    replica_id = args.replica_id or args.name
    app = ReplicaApp(
        runner,
        model=args.name,
        version=args.version,
        node_id=socket.gethostname(),
        replica_id=replica_id,
        execution=args.execution,
        key=key or None,
        read_timeout_s=args.read_timeout,
    )
    app.warmup()
    server = serve_asgi(app, host=args.host, port=args.port, name=f"replica-{args.name}")
    responder = None
    if args.mqtt:
        from mesh.serving._contract import ReplicaMqtt
        from mesh.serving.replica._mqtt import MqttResponder

        mqtt = ReplicaMqtt(args.mqtt, prefix=args.mqtt_prefix, ca_file=args.mqtt_ca_file)
        responder = MqttResponder(app, mqtt).start()
    print(f"ready {server.url}" + (f" {responder.topic}" if responder else ""), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if responder is not None:
            responder.stop()
        server.stop()
        app.close()


if __name__ == "__main__":
    _main()
