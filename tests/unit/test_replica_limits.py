"""A replica's limits and keys, without a server: body caps, read deadlines, key checks."""

from __future__ import annotations

import asyncio
import doctest
import importlib

import pytest

from mesh.core._errors import RequestTimeoutError
from mesh.core._http_server import MAX_BODY_BYTES
from mesh.core._read_deadlines import ReadDeadlines
from mesh.models._export import ModelSignature, TensorSpec
from mesh.security._auth import AuthError
from mesh.serving._replica_keys import ReplicaKeyCheck, authorization, new_replica_key
from mesh.serving._routes import ReplicaEndpoint
from mesh.serving.replica._limits import (
    HEAD_ALLOWANCE,
    JSON_BYTES_PER_ELEMENT,
    body_limit,
)


def signature(*inputs: TensorSpec) -> ModelSignature:
    return ModelSignature(inputs, (), opset=17)


@pytest.mark.parametrize("name", ["mesh.serving.replica._limits", "mesh.serving._replica_keys"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_body_cap_is_the_largest_request_at_the_largest_batch() -> None:
    sig = signature(
        TensorSpec("image", "float32", ("N", 3, 8, 8)), TensorSpec("flag", "int64", ("N", 1))
    )
    elements = 16 * 3 * 8 * 8 + 16 * 1
    assert body_limit(sig, 16) == elements * JSON_BYTES_PER_ELEMENT + HEAD_ALLOWANCE
    fixed = signature(TensorSpec("x", "float32", (2, 4)))
    assert body_limit(fixed, 32) == body_limit(fixed, 1)  # no batch axis to scale


@pytest.mark.parametrize(
    "spec",
    [
        TensorSpec("x", "float32", ("N", "H")),  # a symbolic size past the batch axis
        TensorSpec("x", "float32", ("N", None)),
        TensorSpec("x", "str", ("N",)),  # strings have no size
        TensorSpec("x", "float32", ("N", 1 << 24)),  # over the cap of every server
    ],
)
def test_what_the_signature_leaves_open_gets_the_global_cap(spec: TensorSpec) -> None:
    assert body_limit(signature(spec), 32) == MAX_BODY_BYTES


def test_a_read_past_its_deadline_is_a_408_and_the_task_goes_on() -> None:
    deadlines = ReadDeadlines(0.05)

    async def hangs() -> bytes | None:
        await asyncio.sleep(30)
        return b""

    async def fast() -> bytes | None:
        return b"body"

    async def main() -> tuple[bytes | None, bytes | None]:
        with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
            await deadlines.read(hangs())
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # not left cancelled
        await asyncio.sleep(0.2)  # later sweeps leave finished reads alone
        return await deadlines.read(fast()), await deadlines.read(fast())

    assert asyncio.run(main()) == (b"body", b"body")


def test_a_real_cancellation_is_not_mistaken_for_a_timeout() -> None:
    deadlines = ReadDeadlines(30)

    async def main() -> None:
        reading = asyncio.ensure_future(deadlines.read(asyncio.sleep(30, b"")))
        await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(main())


def test_keys_are_long_random_and_checked_whole() -> None:
    keys = {new_replica_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 43 for k in keys)
    key = keys.pop()
    check = ReplicaKeyCheck(key)
    check.check(authorization(key))
    for wrong in (None, b"", authorization(key)[:-1], authorization(key) + b"x", key.encode()):
        with pytest.raises(AuthError, match="replica key"):
            check.check(wrong)
    with pytest.raises(ValueError, match="at least 32"):
        ReplicaKeyCheck("short")


def test_an_endpoint_carries_its_key_unseen() -> None:
    key = new_replica_key()
    endpoint = ReplicaEndpoint("r1", "n1", "127.0.0.1", 9, "v1", key=key)
    assert endpoint.authorization == b"Bearer " + key.encode()
    assert key not in repr(endpoint) and key not in str(endpoint.describe())
    assert endpoint != ReplicaEndpoint("r1", "n1", "127.0.0.1", 9, "v1", key=new_replica_key())
    assert ReplicaEndpoint("r1", "n1", "127.0.0.1", 9, "v1").authorization == b""
