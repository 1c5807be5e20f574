"""The multi-host suite (issue 16): hosts as network namespaces on one machine.

Every test here is marked ``multihost`` and needs root and ``ip`` (iproute2);
without them it skips with the reason, or fails under ``MESH_REQUIRE_SERVICES=1``
(as in CI, which runs as root).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.testbed import TestBed, links_of, require_namespaces
from tests.support.testbed._bed import ROOT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``multihost`` (``pytest -m multihost`` runs the suite alone)."""
    for item in items:
        if "tests/multihost/" in str(item.fspath):
            item.add_marker(pytest.mark.multihost)


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    require_namespaces()


@pytest.fixture(scope="module")
def traffic_bed() -> Iterator[TestBed]:
    """The seven hosts with ``scenarios/traffic.yaml``'s links (edge-cloud 40 ms, ...)."""
    require_namespaces()
    with TestBed(links=links_of(ROOT / "scenarios" / "traffic.yaml")) as bed:
        yield bed
