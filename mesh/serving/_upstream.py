"""A small pooled HTTP/1.1 client on asyncio, for the gateway's hop to replicas.

The gateway forwards each inference to a replica's own socket. A general
client (httpx) costs a few hundred microseconds per request in Python; this one
writes the request in one call and parses the response with a handful of byte
operations, over keep-alive connections kept per endpoint (``TCP_NODELAY`` is
set on each). It speaks just what replicas answer: responses with
``Content-Length`` or chunked bodies.

A request that fails on a reused connection before any byte of the answer came
back (the server closed an idle connection) is retried once on a new one.

Example:
    >>> pool = UpstreamPool()                                              # doctest: +SKIP
    >>> resp = await pool.request("127.0.0.1", 8000, "GET", "/v2/health/ready")  # doctest: +SKIP
    >>> resp.status                                                        # doctest: +SKIP
    200
    >>> await pool.close()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from mesh.core._errors import MeshError

__all__ = ["UpstreamConnectionError", "UpstreamPool", "UpstreamResponse"]

_MAX_HEAD = 64 * 1024


class UpstreamConnectionError(MeshError, ConnectionError):
    """The connection to an upstream server failed or broke before the answer was complete.

    Attributes:
        partial: whether part of an answer had arrived (inference is idempotent, so
            the gateway retries either way; the pool retries only when nothing came back).
    """

    http_status = 502

    def __init__(self, message: str, *, partial: bool = False) -> None:
        self.partial = partial
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A complete response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._head: tuple[int, dict[bytes, bytes], int, bool] | None = None
        self.closed = False
        self.reusable = True
        self.used = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                UpstreamConnectionError(
                    f"connection closed before the response was complete ({exc or 'EOF'})",
                    partial=bool(self._buffer) or self._head is not None,
                )
            )
        self._waiter = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None:
            self._parse()

    def _fail(self, message: str) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamConnectionError(message, partial=True))
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail("response head too large")
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            try:
                status = int(parts[1])
            except (IndexError, ValueError):
                self._fail(f"malformed status line {lines[0][:80]!r}")
                return
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            del buffer[: end + 4]
            chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            try:
                length = -1 if chunked else int(headers.get(b"content-length", b"0"))
            except ValueError:
                self._fail("malformed Content-Length")
                return
            if headers.get(b"connection", b"").lower() == b"close":
                self.reusable = False
            self._head = (status, headers, length, chunked)
        status, headers, length, chunked = self._head
        if chunked:
            body = self._dechunk()
            if body is None:
                return
        else:
            if len(buffer) < length:
                return
            body = bytes(buffer[:length])
            del buffer[:length]
        self._head = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(status, headers, body))

    def _dechunk(self) -> bytes | None:
        buffer = self._buffer
        out = bytearray()
        pos = 0
        while True:
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                return None
            try:
                size = int(bytes(buffer[pos:end]).split(b";")[0], 16)
            except ValueError:
                self._fail("malformed chunk size")
                return None
            if size == 0:
                trailer = buffer.find(b"\r\n\r\n", end)  # optional trailers, then CRLF
                if trailer < 0:
                    return None
                del buffer[: trailer + 4]
                return bytes(out)
            if len(buffer) < end + 2 + size + 2:
                return None
            out += buffer[end + 2 : end + 2 + size]
            pos = end + 2 + size + 2

    def send(self, data: Sequence[bytes]) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future gets its response.

        Raises:
            UpstreamConnectionError: the transport is closing or already closed (the
                server went away while the connection sat idle and its
                ``connection_lost`` has not run yet); nothing was sent.
        """
        transport = self.transport
        assert transport is not None
        if self.closed or transport.is_closing():
            self.closed = True
            raise UpstreamConnectionError("the connection was closed before the request")
        waiter: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.used += 1
        try:
            transport.writelines(data)
        except (RuntimeError, OSError) as exc:
            # uvloop: "unable to perform operation on <TCPTransport closed=True>; the
            # handler is closed" when the peer's close races the write.
            self._waiter, self.closed = None, True
            raise UpstreamConnectionError(
                f"the connection closed under the request: {exc}"
            ) from exc
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per ``(host, port)``; safe for one event loop.

    Args:
        max_idle: idle connections kept per endpoint.
        connect_timeout_s: how long a new connection may take.
    """

    def __init__(self, *, max_idle: int = 64, connect_timeout_s: float = 2.0) -> None:
        """An empty pool."""
        self._idle: dict[tuple[str, int], collections.deque[_Connection]] = {}
        self._max_idle = max_idle
        self._connect_timeout_s = connect_timeout_s
        self._closed = False

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, host, port), self._connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.closed or not conn.reusable or self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(key, collections.deque())
        if len(idle) >= self._max_idle:
            conn.close()
        else:
            idle.append(conn)

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        authorization: bytes = b"",
        timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and await the whole response.

        ``authorization``: the ``Authorization`` value to send, if any (a replica's
        key, :attr:`~mesh.serving._routes.ReplicaEndpoint.authorization`).

        Raises:
            UpstreamConnectionError: could not connect, or the connection broke.
            TimeoutError: no complete answer within ``timeout_s`` (the connection is dropped).
        """
        if self._closed:
            raise UpstreamConnectionError("the upstream pool is closed")
        key = (host, port)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()]
        for name, value in headers:
            head.append(name + b": " + value + b"\r\n")
        if authorization:
            head.append(b"Authorization: " + authorization + b"\r\n")
        head.append(b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        data = [b"".join(head), body] if body else [b"".join(head)]
        for attempt in (0, 1):
            idle = self._idle.get(key)
            conn: _Connection | None = None
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port)
            try:
                waiter = conn.send(data)
                response = await (
                    waiter if timeout_s is None else asyncio.wait_for(waiter, timeout_s)
                )
            except UpstreamConnectionError as exc:
                conn.close()
                if reused and attempt == 0 and not exc.partial:
                    continue  # an idle connection the server had closed: try a fresh one
                raise
            except BaseException:
                conn.close()  # timed out or cancelled mid-response: never reuse it
                raise
            self._release(key, conn)
            return response
        raise AssertionError("unreachable")

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to one endpoint (it is gone)."""
        for conn in self._idle.pop((host, port), ()):
            conn.close()

    async def close(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
