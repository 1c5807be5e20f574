"""What the benchmarks need beyond the demo's set-up, checked before they start."""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["need_test_tools"]


def need_test_tools(bench: str) -> None:
    """Exit with how to get them when the test tools (the ``dev`` extra) are missing.

    The benchmarks that run a mesh reuse the tests' harness (``tests/support/``),
    which needs pytest; ``./scripts/demo`` installs no test tools, ``./scripts/test`` does.
    """
    if importlib.util.find_spec("pytest") is None:
        sys.exit(
            f"{bench} reuses the tests' harness, which needs the test tools: run "
            "`./scripts/test` once (it installs them into .venv), or "
            "`.venv/bin/pip install -e '.[dev]'`"
        )
