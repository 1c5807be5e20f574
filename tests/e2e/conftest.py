"""Fixtures of the end-to-end tests."""

from tests.support.cli import env  # noqa: F401  (the CLI environment fixture)
