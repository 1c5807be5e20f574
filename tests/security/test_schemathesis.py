"""Schemathesis against the gateway's OpenAPI document: no request, valid or not, is a 5xx.

Every operation of the gateway's ``/openapi.json`` (OIP ``/v2``, ``/v1/routes``,
``/v1/models``, ``/v1/modules``, ``/metrics``) gets schema-conforming and
schema-violating requests from schemathesis, sent over HTTP to a real gateway
(:func:`tests.security._gateway.serve_gateway`), with an admin token and with
none. Bounded: :data:`EXAMPLES` examples per operation and mode, no shrinking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._gateway import Served, serve_gateway

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.timeout(600)]

#: Examples per operation and generation mode (positive, negative).
EXAMPLES = 12


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_gateway(tmp_path) as gateway:
        yield gateway


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
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
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
            if response.status_code >= 500:
                found.append(
                    f"{case.method} {case.formatted_path} -> "  # type: ignore[attr-defined]
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
