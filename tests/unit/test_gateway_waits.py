"""Requests wait, within their time, for somewhere to go: a module being restored, a replacement.

Before, the gateway answered 404 "not served" for the seconds between a
restarted control plane's first request and the module's restoration (53 of
them a module in the chaos suite), as if the module had been undeployed.
"""

from __future__ import annotations

import asyncio

from mesh.serving._gateway import Gateway
from mesh.serving._oip import ModelNotReadyError, ModelNotServedError
from mesh.serving._routes import RouteTable
from tests.unit.test_gateway_failover import OK_BODY, Upstreams, answer_ok, run

BODY = b'{"inputs": []}'
HEADERS = [(b"content-type", b"application/json")]


def test_a_request_waits_for_its_module_to_be_restored() -> None:
    async def test(up: Upstreams) -> None:
        routes = RouteTable()
        restoring = {"m"}
        gateway = Gateway(routes, restoring=lambda m: m in restoring, upstream_timeout_s=10.0)
        replica = await up.start("r", answer_ok)

        async def restore() -> None:
            await asyncio.sleep(0.2)
            routes.set("m", "v1", [replica])
            restoring.discard("m")

        task = asyncio.create_task(restore())
        status, _headers, body = await gateway.infer("m", None, BODY, HEADERS)
        await task
        assert (status, body) == (200, OK_BODY)
        await gateway.close()

    run(test)


def test_a_module_still_restoring_at_the_deadline_is_503_and_an_unknown_one_404() -> None:
    async def test(_up: Upstreams) -> None:
        gateway = Gateway(RouteTable(), restoring=lambda m: m == "m", upstream_timeout_s=0.2)
        try:
            await gateway.infer("m", None, BODY, HEADERS)
        except ModelNotReadyError as exc:
            assert "being restored" in str(exc) and exc.http_status == 503
        else:
            raise AssertionError("a module still restoring was answered")
        try:
            await gateway.infer("other", None, BODY, HEADERS)
        except ModelNotServedError as exc:
            assert exc.http_status == 404
        else:
            raise AssertionError("an unknown module was answered")
        await gateway.close()

    run(test)


def test_a_request_waits_for_a_replacement_when_every_replica_was_lost() -> None:
    """All replicas of a module lost at once (its standby too): the replacement starting
    answers the requests that arrive meanwhile, instead of a 503 each (the chaos suite
    counted 296 in 31 s)."""

    async def test(up: Upstreams) -> None:
        routes = RouteTable()
        routes.set("m", "v1", [])  # every endpoint gone; a replacement is starting
        gateway = Gateway(routes, upstream_timeout_s=10.0)
        replica = await up.start("r", answer_ok)

        async def replace() -> None:
            await asyncio.sleep(0.2)
            routes.set("m", "v1", [replica])

        task = asyncio.create_task(replace())
        status, _headers, body = await gateway.infer("m", None, BODY, HEADERS)
        await task
        assert (status, body) == (200, OK_BODY)
        await gateway.close()

    run(test)


def test_a_request_refused_by_its_only_replica_waits_for_the_next_one() -> None:
    """The only replica refuses (killed, no standby yet): the request waits for the
    replacement within its deadline, instead of a 502 "could not be reached"."""

    async def test(up: Upstreams) -> None:
        routes = RouteTable()
        routes.set("m", "v1", [up.closed_port("dead")])
        gateway = Gateway(routes, upstream_timeout_s=10.0)
        replica = await up.start("r", answer_ok)

        async def replace() -> None:
            await asyncio.sleep(0.2)
            routes.set("m", "v1", [replica])

        task = asyncio.create_task(replace())
        status, _headers, body = await gateway.infer("m", None, BODY, HEADERS)
        await task
        assert (status, body) == (200, OK_BODY)
        await gateway.close()

    run(test)
