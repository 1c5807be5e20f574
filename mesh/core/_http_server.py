"""Serving ASGI apps: uvicorn in a daemon thread, and the helpers of raw ASGI apps.

:func:`serve_asgi` runs any ASGI app (replica, gateway, artifacts) under uvicorn
in a daemon thread, with the limits every server of the mesh keeps against slow or
hostile clients: a request's head must arrive within ``read_timeout_s`` and within
:data:`MAX_HEAD_BYTES` (else the connection is closed), idle keep-alive
connections close after ``keep_alive_s``, and at most ``max_connections`` are
served at once (more get 503). :func:`read_body` reads a body under the same
timeout (408) and cap (413; :func:`check_content_length` refuses by the header
before a byte is read). The helpers (:func:`header`, :func:`read_body`,
:func:`respond`, :func:`respond_json`, :func:`respond_error`) are for the apps
that answer without a framework on the hot path (the replica's server, the
gateway's inference fast path); their errors are the one JSON shape of
:mod:`mesh.core._http_errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Literal

from mesh.core._errors import (
    InvalidRequestError,
    MeshError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from mesh.core._http_errors import error_body, error_headers, error_status

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "READ_TIMEOUT_S",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "ServerThread",
    "check_content_length",
    "header",
    "read_body",
    "reserve_port",
    "respond",
    "respond_error",
    "respond_json",
    "serve_asgi",
]

logger = logging.getLogger(__name__)

#: Bodies past this are refused (413) before they are parsed.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: A request line and headers past this close the connection.
MAX_HEAD_BYTES = 64 * 1024
#: A request (head, then body) must arrive within this many seconds.
READ_TIMEOUT_S = 30.0
#: Connections served at once by default; more get 503.
MAX_CONNECTIONS = 1024

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


def check_content_length(scope: Scope, limit: int) -> int | None:
    """The request's ``Content-Length``, refused before the body is read when over ``limit``.

    Returns:
        The length, or None when the header is absent (a chunked body).

    Raises:
        RequestTooLargeError: the declared length is over ``limit`` (413).
        InvalidRequestError: the header is not a number (422).
    """
    raw = header(scope, b"content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidRequestError(f"Content-Length must be a number of bytes, got {raw[:32]!r}")
    length = int(raw)
    if length > limit:
        raise RequestTooLargeError(f"request body of {length} bytes is over the {limit}-byte limit")
    return length


async def read_body(
    receive: Receive,
    limit: int = MAX_BODY_BYTES,
    *,
    timeout_s: float | None = READ_TIMEOUT_S,
    scope: Scope | None = None,
) -> bytes | None:
    """The whole request body; None when it is over ``limit`` or the client left.

    Chunks past ``limit`` are not kept. With ``scope``, a ``Content-Length``
    over ``limit`` is refused before a byte is read.

    Raises:
        RequestTimeoutError: the body did not arrive within ``timeout_s`` (408).
        RequestTooLargeError: ``scope`` declares a length over ``limit`` (413).
    """
    if scope is not None:
        check_content_length(scope, limit)
    if timeout_s is None:
        return await _read_body(receive, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(receive, limit)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout_s:g} s"
        ) from None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
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
        """Stop accepting, finish open requests (up to ``timeout_s``), and join; idempotent.

        A Starlette app's ``state.stopping`` turns True first, so that long-lived
        responses (the dashboard's event stream) end instead of holding the stop.
        """
        state = getattr(self._server.config.app, "state", None)
        if state is not None:
            state.stopping = True
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)


def reserve_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not yet listening.

    Nothing else is given the port while it is held, unlike a port found free
    and bound later (another process may take it in between).

    Example:
        >>> sock = reserve_port()
        >>> sock.getsockname()[1] > 0
        True
        >>> sock.close()
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve_asgi(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "mesh-http",
    keep_alive_s: float = 300.0,
    timeout_s: float = 15.0,
    lifespan: Literal["on", "off"] = "off",
    read_timeout_s: float = READ_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    sock: socket.socket | None = None,
) -> ServerThread:
    """Serve ``app`` with uvicorn in a daemon thread; returns once it accepts connections.

    httptools and uvloop are used when installed (uvicorn's ``auto``).
    Keep-alive is long because the gateway pools connections to replicas.
    ``lifespan="on"`` runs the app's startup and shutdown (the gateway closes
    its connections there). ``sock``: a socket bound ahead (:func:`reserve_port`;
    ``host`` and ``port`` are then unused), so that the port, known to others
    early, is not taken meanwhile. A request's head must arrive within
    ``read_timeout_s`` (the connection is closed otherwise; bodies are timed by
    :func:`read_body`); past ``max_connections`` open connections, requests get 503.

    Raises:
        MeshError: the server did not start within ``timeout_s``.
    """
    import uvicorn

    if sock is None:
        sock = reserve_port(host, port)
    host, bound = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        ws="none",
        http=_guarded_protocol(read_timeout_s, MAX_HEAD_BYTES),
        loop="auto",
        log_level="warning",
        backlog=2048,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=int(keep_alive_s),
        limit_concurrency=max_connections,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
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


def _guarded_protocol(read_timeout_s: float, max_head_bytes: int) -> type[asyncio.Protocol]:
    """The HTTP protocol of uvicorn (httptools or h11) with a deadline and a size cap on heads.

    uvicorn times idle keep-alive connections but not a request being sent: a
    client that sends half a request line holds its connection forever. Here a
    timer starts when a connection opens or a new request's first bytes arrive,
    and closes the connection unless the request's head is complete by then;
    head bytes past ``max_head_bytes`` close it at once. The rest of a body the
    app refused unread (401, 413) is discarded as it comes, for at most the
    same time.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class GuardedProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def _waiting_for_head(self) -> bool:
            """No request is being answered (a refused one's body may still be arriving)."""
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _reading_head(self) -> bool:
            """The bytes arriving now are a new request's head (not a refused body's rest)."""
            cycle = self.cycle
            return cycle is None or (bool(cycle.response_complete) and not cycle.more_body)

        def _arm(self) -> None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(read_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                logger.info("closing a connection whose request head did not arrive in time")
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self._waiting_for_head():
                self._arm()
            super().data_received(data)
            if self._reading_head():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes and not self.transport.is_closing():
                    logger.info("closing a connection whose request head is over the limit")
                    self.transport.close()

        def on_response_complete(self) -> None:
            self._disarm()  # uvicorn's keep-alive timer takes over
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedProtocol
