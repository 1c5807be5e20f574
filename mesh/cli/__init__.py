"""The `mesh` command line: ``mesh.cli:main`` is the console script.

Each sub-app lives in its own module (`_agents`, `_models`, `_modules`,
`_placements`, `_scenario`); `_main` holds the top-level commands and mounts
them; `_demo` is `mesh demo`.
"""

from mesh.cli._main import app, main, parse_cli_args

__all__ = ["app", "main", "parse_cli_args"]
