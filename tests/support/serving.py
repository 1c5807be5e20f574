"""Helpers for serving tests: a gateway on a socket and a continuous load of OIP requests.

Import explicitly::

    from tests.support.serving import LoadRunner, running_gateway
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.core._metrics import MetricsRegistry
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from mesh.serving._gateway import EdgeInference, Gateway
from mesh.serving._gateway_app import create_gateway_app
from mesh.serving._oip import encode_request
from mesh.serving._routes import RouteTable
from mesh.serving._upstream import UpstreamPool
from mesh.serving.replica._server import ServerThread, serve_asgi


@contextlib.contextmanager
def running_gateway(
    routes: RouteTable,
    *,
    signer: TokenSigner | None = None,
    edge: EdgeInference | None = None,
    registry: Any = None,
    metrics: MetricsRegistry | None = None,
) -> Iterator[tuple[Gateway, ServerThread]]:
    """The gateway app served on a free port; stopped (and its connections closed) after."""
    gateway = Gateway(routes, auth=TokenAuth(signer), edge=edge, metrics=metrics)
    server = serve_asgi(
        create_gateway_app(gateway, registry=registry), port=0, name="gateway", lifespan="on"
    )
    try:
        yield gateway, server
    finally:
        server.stop()


@dataclass
class Outcome:
    """One request of a load run."""

    status: int
    version: str | None
    error: str | None
    at: float


@dataclass
class LoadRunner:
    """Posts OIP requests to ``host:port`` from ``workers`` coroutines on a thread, until stopped.

    ``check(inputs, outputs, version)`` may raise to mark a wrong answer as a failure.
    """

    host: str
    port: int
    module: str
    inputs: Callable[[int], dict[str, np.ndarray[Any, Any]]]
    token: str | None = None
    workers: int = 4
    binary: bool = True
    check: Callable[[dict[str, Any], dict[str, Any], str | None], None] | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LoadRunner:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), daemon=True, name="load"
        )
        self._thread.start()
        return self

    async def _run(self) -> None:
        pool = UpstreamPool()
        headers = [(b"content-type", b"application/json")]
        if self.token:
            headers.append((b"authorization", f"Bearer {self.token}".encode()))

        async def worker(w: int) -> None:
            i = w
            while not self._stop.is_set():
                inputs = self.inputs(i)
                i += self.workers
                body, header_length = encode_request(inputs, binary=self.binary)
                extra = (
                    []
                    if header_length is None
                    else [(b"inference-header-content-length", str(header_length).encode())]
                )
                try:
                    response = await pool.request(
                        self.host,
                        self.port,
                        "POST",
                        f"/v2/models/{self.module}/infer",
                        body=body,
                        headers=headers + extra,
                        timeout_s=30,
                    )
                except Exception as exc:
                    self.outcomes.append(Outcome(0, None, repr(exc), time.time()))
                    continue
                if response.status != 200:
                    self.outcomes.append(
                        Outcome(
                            response.status,
                            None,
                            response.body.decode(errors="replace"),
                            time.time(),
                        )
                    )
                    continue
                doc = json.loads(response.body)
                version = doc.get("model_version")
                error = None
                if self.check is not None:
                    outputs = {o["name"]: o["data"] for o in doc["outputs"]}
                    try:
                        self.check(inputs, outputs, version)
                    except AssertionError as exc:
                        error = f"wrong answer: {exc}"
                self.outcomes.append(
                    Outcome(200 if error is None else -1, version, error, time.time())
                )

        await asyncio.gather(*[worker(w) for w in range(self.workers)])
        await pool.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def failures(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.status != 200]

    def count(self, version: str | None = None) -> int:
        return sum(
            1
            for o in list(self.outcomes)
            if o.status == 200 and (version is None or o.version == version)
        )

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}; "
                    f"{len(self.outcomes)} requests, "
                    f"failures: {self.failures()[:3]}"
                )
            time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)
