"""Where the CLI's commands write: one console for results, one for errors, one error exit.

Every ``mesh`` command module uses these, so results go to stdout, problems to
stderr, and a :class:`~mesh.core._errors.MeshError` becomes one red line and
exit code 1 (no traceback: the message names what was wrong).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from mesh.core._errors import MeshError

__all__ = ["console", "err", "errors"]

console = Console()
err = Console(stderr=True)


@contextmanager
def errors() -> Iterator[None]:
    """Turn a :class:`MeshError` raised inside into one error line and exit code 1."""
    try:
        yield
    except MeshError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None
