"""Serving ASGI apps: uvicorn in a daemon thread, and the helpers of raw ASGI apps.

:func:`serve_asgi` runs any ASGI app (replica, gateway, artifacts) under uvicorn
in a daemon thread. The helpers (:func:`header`, :func:`read_body`,
:func:`respond`, :func:`respond_json`, :func:`respond_error`) are for the apps
that answer without a framework on the hot path (the replica's server, the
gateway's inference fast path); their errors are the one JSON shape of
:mod:`mesh.core._http_errors`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Literal

from mesh.core._errors import MeshError
from mesh.core._http_errors import error_body, error_headers, error_status

__all__ = [
    "MAX_BODY_BYTES",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "ServerThread",
    "header",
    "read_body",
    "respond",
    "respond_error",
    "respond_json",
    "serve_asgi",
]

logger = logging.getLogger(__name__)

#: Bodies past this are refused (413) before they are parsed.
MAX_BODY_BYTES = 64 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in an ASGI scope."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The whole request body; None when it is over ``limit`` or the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, doc: Any) -> None:
    """Send a JSON document."""
    await respond(send, status, json.dumps(doc, separators=(",", ":")).encode())


async def respond_error(send: Send, exc: BaseException) -> None:
    """Send the one JSON error body with the status (and headers) ``exc`` maps to."""
    await respond(send, error_status(exc), error_body(exc), headers=error_headers(exc))


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread (see :func:`serve_asgi`)."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int) -> None:
        """Wrap a started uvicorn server."""
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the server thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish open requests (up to ``timeout_s``), and join; idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)


def serve_asgi(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "mesh-http",
    keep_alive_s: float = 300.0,
    timeout_s: float = 15.0,
    lifespan: Literal["on", "off"] = "off",
) -> ServerThread:
    """Serve ``app`` with uvicorn in a daemon thread; returns once it accepts connections.

    httptools and uvloop are used when installed (uvicorn's ``auto``).
    Keep-alive is long because the gateway pools connections to replicas.
    ``lifespan="on"`` runs the app's startup and shutdown (the gateway closes
    its connections there).

    Raises:
        MeshError: the server did not start within ``timeout_s``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        ws="none",
        http="auto",
        loop="auto",
        log_level="warning",
        backlog=2048,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=int(keep_alive_s),
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            sock.close()
            raise MeshError(f"HTTP server {name} on {host}:{bound} did not start")
        time.sleep(0.005)
    logger.info("%s listening on http://%s:%d", name, host, bound)
    return ServerThread(server, thread, host, bound)
