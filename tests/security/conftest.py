"""The security suite: each test is an attack on a running part, and must be refused.

Every test here failed on the code before the secure-by-default work (issue 14):
the part answered, crashed, leaked or grew. Shared fixtures come from
:mod:`tests.support`; a test that needs a system service skips with its reason,
or fails under ``MESH_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``security`` (``pytest -m security`` runs the suite alone)."""
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)
