"""Schemathesis against the gateway's OpenAPI document: no request, valid or not, is a 5xx.

Every operation of the gateway's ``/openapi.json`` (OIP ``/v2``, ``/v1/routes``,
``/v1/models``, ``/v1/modules``, ``/metrics``) gets schema-conforming and
schema-violating requests from schemathesis, sent over HTTP to a real gateway
(:func:`tests.security._gateway.serve_gateway`), with an admin token and with
none. Inference goes to a module routed to an edge agent that does not exist,
so the gateway decodes every body itself; a valid one then gets the 504 of an
agent that does not answer, the one 5xx allowed. Bounded: :data:`EXAMPLES`
examples per operation and mode, no shrinking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.edge.broker._broker import MosquittoBroker
from tests.security._gateway import EDGE, Served, serve_gateway
from tests.support.brokers import mosquitto  # noqa: F401  (fixture)

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.timeout(600)]

#: Examples per operation and generation mode (positive, negative).
EXAMPLES = 25


@pytest.fixture
def served(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Served]:  # noqa: F811
    with serve_gateway(tmp_path, mosquitto.url, edge_timeout_s=0.2) as gateway:
        yield gateway


def _is_bug(path: str, status: int, body: str) -> bool:
    """A 5xx, except the 502-504 of inference on module EDGE, whose agent does not exist."""
    if status < 500:
        return False
    return status == 500 or "InternalError" in body or not path.startswith(f"/v2/models/{EDGE}/")


def server_errors(served: Served, headers: dict[str, str]) -> list[str]:
    """Run every operation; the requests answered with a 5xx, one line each."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation.modes import GenerationMode

    url = served.server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    found: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10, "the OpenAPI document lost its operations"
    for operation in operations:
        # Inference is fuzzed on the module the gateway decodes itself (a random name is a 404).
        fixed: dict[str, str] | None = None
        if operation.path.endswith("/infer"):
            fixed = (
                {"name": EDGE, "version": "v1"} if "{version}" in operation.path else {"name": EDGE}
            )
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed),
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: object) -> None:
            response = case.call(base_url=url, headers=headers, timeout=60)  # type: ignore[attr-defined]
            path = case.formatted_path  # type: ignore[attr-defined]
            if _is_bug(path, response.status_code, response.text):
                found.append(
                    f"{case.method} {path} -> "  # type: ignore[attr-defined]
                    f"{response.status_code} {response.text[:200]}"
                )

        run()
    return found


def test_no_server_error_with_an_admin_token(served: Served) -> None:
    errors = server_errors(served, {"Authorization": f"Bearer {served.admin}"})
    assert not errors, "\n".join(errors[:20])


def test_no_server_error_without_a_token(served: Served) -> None:
    errors = server_errors(served, {})
    assert not errors, "\n".join(errors[:20])
