"""The gateway's failover: a replica that refuses, resets, closes early or answers 502.

Fake upstreams are small asyncio servers on loopback sockets, each failing one
way (or answering 200); the gateway's real pool and dispatch run against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mesh.serving._gateway import Gateway
from mesh.serving._oip import UpstreamError, UpstreamTimeoutError
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.metrics import sample

OK_BODY = b'{"model_name":"m","outputs":[]}'
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


def answering(response: bytes) -> Behaviour:
    """A server that answers every request on a keep-alive connection with ``response``."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(response)
            await writer.drain()

    return behaviour


answer_ok = answering(
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
)
answer_502 = answering(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
answer_503 = answering(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfull")


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then RST the connection (a killed process's socket)."""
    await _read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then close: EOF before the answer."""
    await _read_request(reader)
    writer.close()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(3600)


class Upstreams:
    """Servers by name; each counts the connections it accepted."""

    def __init__(self) -> None:
        self.servers: dict[str, asyncio.Server] = {}
        self.hits: dict[str, int] = {}

    async def start(self, name: str, behaviour: Behaviour) -> ReplicaEndpoint:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits[name] = self.hits.get(name, 0) + 1
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await behaviour(reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers[name] = server
        port = server.sockets[0].getsockname()[1]
        return ReplicaEndpoint(name, f"node-{name}", "127.0.0.1", port, "v1")

    def closed_port(self, name: str) -> ReplicaEndpoint:
        """An endpoint nobody listens on: connections are refused."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return ReplicaEndpoint(name, f"node-{name}", "127.0.0.1", port, "v1")

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


def run(test: Callable[[Upstreams], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        upstreams = Upstreams()
        try:
            return await test(upstreams)
        finally:
            upstreams.close()

    return asyncio.run(main())


async def infer(gateway: Gateway) -> tuple[int, bytes, str]:
    (status, _headers, body), node, _version = await gateway._dispatch(
        gateway.route("m"), b"{}", [(b"content-type", b"application/json")]
    )
    return status, body, node


def counter(gateway: Gateway, name: str) -> float:
    return sample(gateway.metrics.render(), name, module="m") or 0.0


FAILURES: dict[str, Behaviour | None] = {
    "refused": None,
    "reset": reset,
    "eof": close_early,
    "502": answer_502,
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_primary_fails_over_to_the_standby_and_is_marked_down(failure: str) -> None:
    async def test(up: Upstreams) -> None:
        behaviour = FAILURES[failure]
        primary = up.closed_port("p") if behaviour is None else await up.start("p", behaviour)
        standby = await up.start("s", answer_ok)
        routes = RouteTable()
        told: list[tuple[str, ReplicaEndpoint]] = []
        routes.on_down(lambda module, e: told.append((module, e)))  # type: ignore[arg-type]
        routes.set("m", "v1", [primary], standby=[standby])
        gateway = Gateway(routes)
        status, body, node = await infer(gateway)
        assert (status, body, node) == (200, OK_BODY, "node-s")
        assert routes.is_down(primary) and told == [("m", primary)]
        assert counter(gateway, "mesh_inference_failovers_total") == 1
        assert counter(gateway, "mesh_inference_retries_total") == 1
        for _ in range(3):  # later requests go straight to the standby: no more retries
            assert (await infer(gateway))[0] == 200
        assert counter(gateway, "mesh_inference_retries_total") == 1
        assert up.hits.get("p", 0) == (0 if behaviour is None else 1)
        await gateway.close()

    run(test)


def test_a_failing_endpoint_fails_over_to_another_endpoint_first() -> None:
    async def test(up: Upstreams) -> None:
        dead = up.closed_port("dead")
        alive = await up.start("alive", answer_ok)
        standby = await up.start("s", answer_ok)
        routes = RouteTable()
        routes.set("m", "v1", [dead, alive], standby=[standby])
        gateway = Gateway(routes)
        nodes = [(await infer(gateway))[2] for _ in range(4)]
        assert set(nodes) == {"node-alive"} and routes.is_down(dead)
        assert "s" not in up.hits  # the standby only when no endpoint is left
        await gateway.close()

    run(test)


def test_a_503_is_retried_elsewhere_but_not_marked_down() -> None:
    async def test(up: Upstreams) -> None:
        full = await up.start("full", answer_503)
        standby = await up.start("s", answer_ok)
        routes = RouteTable()
        routes.set("m", "v1", [full], standby=[standby])
        gateway = Gateway(routes)
        assert (await infer(gateway))[:2] == (200, OK_BODY)
        assert not routes.is_down(full)
        assert counter(gateway, "mesh_inference_failovers_total") == 0
        routes.set("m", "v1", [full])  # nowhere else: the client gets the 503
        assert (await infer(gateway))[:2] == (503, b"full")
        await gateway.close()

    run(test)


def test_with_every_replica_gone_the_client_gets_a_502() -> None:
    async def test(up: Upstreams) -> None:
        routes = RouteTable()
        primary, standby = up.closed_port("p"), await up.start("s", reset)
        routes.set("m", "v1", [primary], standby=[standby])
        gateway = Gateway(routes)
        with pytest.raises(UpstreamError, match="could be reached"):
            await infer(gateway)
        assert routes.down() == {primary, standby}
        assert counter(gateway, "mesh_inference_failovers_total") == 2
        await gateway.close()

    run(test)


def test_failover_never_outlives_the_request_s_deadline() -> None:
    deadline_s = 0.5

    async def slow_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(deadline_s * 0.6)
        await reset(reader, writer)

    async def test(up: Upstreams) -> float:
        primary = await up.start("p", slow_reset)
        standby = await up.start("s", hang)
        routes = RouteTable()
        routes.set("m", "v1", [primary], standby=[standby])
        gateway = Gateway(routes, upstream_timeout_s=deadline_s)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            await infer(gateway)
        elapsed = time.monotonic() - started
        assert up.hits == {"p": 1, "s": 1}  # it did fail over, with what time was left
        await gateway.close()
        return elapsed

    elapsed = run(test)
    # The standby got only what was left of the deadline, not a deadline of its own
    # (that would be 0.5 + 0.5 s at least); the margin is for a loaded host.
    assert elapsed < 2 * deadline_s


def test_a_route_switch_forgets_the_marks_of_endpoints_it_drops() -> None:
    routes = RouteTable()
    a, b, c = (
        ReplicaEndpoint(n, f"node-{n}", "h", p, "v1") for n, p in (("a", 1), ("b", 2), ("c", 3))
    )
    route = routes.set("m", "v1", [a, b], standby=[c])
    assert routes.mark_down("m", a)
    assert {routes.pick(route) for _ in range(4)} == {b}
    assert routes.mark_down("m", b)
    assert routes.pick(route) == c  # no endpoint left: the standby
    assert routes.mark_down("m", c)
    assert routes.pick(route) in (a, b)  # all down: an endpoint may answer again
    assert routes.pick(route, exclude=[a, b]) is None
    route = routes.set("m", "v1", [b, c])
    assert routes.down() == {b, c}  # a left the route: its mark with it
    routes.clear_down(b)
    assert routes.pick(route) == b
    assert not routes.mark_down("m", a)  # not in the route any more: not marked
    assert not routes.mark_down("other", b)
    routes.remove("m")
    assert routes.down() == frozenset()
