"""Registration checks: what a decorator accepts, and its errors worded for the user.

Each check raises :class:`~mesh.core._errors.SpecError` naming the decorator
and what it expected (a module-level function, one required argument, keyword
options), so a mistake shows at import time of the user's module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from mesh.core._errors import SpecError
from mesh.sdk._specs import Domain

__all__ = [
    "build_spec",
    "check_callable",
    "first_doc_line",
    "make_domain",
    "no_parentheses",
    "require_one_argument",
]


def first_doc_line(obj: object) -> str:
    """The first line of ``obj``'s docstring, or ``""``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def no_parentheses(decorator: str) -> SpecError:
    """The error for ``@app.<decorator>`` used without its parentheses."""
    return SpecError(
        f"@app.{decorator} takes keyword options only. Did you forget parentheses? "
        f"Suggestion: `@app.{decorator}()`."
    )


def make_domain(kind: str, **values: Any) -> Domain:
    """A search-space :class:`~mesh.sdk._specs.Domain`, its errors as :class:`SpecError`."""
    try:
        return Domain(kind=kind, **values)
    except ValidationError as exc:
        raise SpecError(_format_validation(f"search space {kind}()", exc)) from None


def build_spec(spec_type: type[Any], subject: str, /, **values: Any) -> Any:
    """``spec_type(**values)``, its validation errors as one :class:`SpecError` on ``subject``."""
    try:
        return spec_type(**values)
    except ValidationError as exc:
        raise SpecError(_format_validation(subject, exc)) from None


def _format_validation(subject: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "value"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return f"invalid options for {subject}: " + "; ".join(lines)


def check_callable(fn: Any, decorator: str) -> None:
    """Raise unless ``fn`` is a named, module-level function ``@app.<decorator>`` can register."""
    if inspect.isclass(fn):
        raise SpecError(
            f"@app.{decorator} decorates a function, got the class {fn.__name__!r}; "
            "for an inference module class use @app.module(model=..., qos=...)"
        )
    if not callable(fn) or not hasattr(fn, "__name__"):
        raise SpecError(f"@app.{decorator} decorates a function, got {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise SpecError(
            f"@app.{decorator} cannot register a lambda: it has no name to invoke it by. "
            f"Define it with def, or pass name=: app.add_{decorator}(fn, name='...')"
        )
    if inspect.ismethod(fn):
        raise SpecError(
            f"@app.{decorator} cannot register the bound method {fn.__qualname__!r}; "
            "register a module-level function"
        )
    params = list(inspect.signature(fn).parameters)
    qualname = getattr(fn, "__qualname__", "")
    if params and params[0] in ("self", "cls") and "." in qualname.replace("<locals>.", ""):
        raise SpecError(
            f"@app.{decorator} cannot register the method {qualname!r}: the mesh calls "
            "functions without an instance. Move it to module level, or use @app.module "
            "for a class"
        )


def require_one_argument(fn: Callable[..., Any], decorator: str, shape: str) -> None:
    """Like :func:`check_callable`, and ``fn`` must take exactly one required argument."""
    check_callable(fn, decorator)
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [p for p in params if p.default is p.empty]
    if len(required) != 1:
        raise SpecError(
            f"@app.{decorator} function {fn.__name__!r} must take exactly one required "
            f"argument: def {fn.__name__}{shape}; it takes {len(required)}"
        )
