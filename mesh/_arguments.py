"""Checking call arguments against a function's signature, before anything runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ._errors import InvalidArgumentsError

__all__ = ["bind_arguments", "signature_of"]


def bind_arguments(
    name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any], *, skip: Collection[str] = ()
) -> dict[str, Any]:
    """Validate ``kwargs`` against ``fn``'s signature; see :meth:`RegisteredFunction.bind`.

    Parameters named in ``skip`` are supplied by the mesh, not the caller.
    """
    signature = signature_of(fn)
    try:
        hints = _type_hints(fn)
    except Exception:  # unresolvable forward references: validate presence only
        hints = {}
    problems: list[str] = []
    bound: dict[str, Any] = {}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in skip:
            continue
        if param.kind is param.POSITIONAL_ONLY:
            problems.append(f"{param.name} is positional-only; the mesh passes keywords")
            continue
        if param.name not in kwargs:
            if param.default is param.empty:
                problems.append(f"missing required argument {param.name!r}")
            continue
        value = kwargs[param.name]
        hint = hints.get(param.name)
        if hint is not None:
            try:
                value = TypeAdapter(hint).validate_python(value)
            except ValidationError as exc:
                expected = getattr(hint, "__name__", str(hint))
                detail = exc.errors()[0]["msg"]
                problems.append(f"{param.name}={value!r} is not a valid {expected} ({detail})")
                continue
            except Exception:  # an annotation pydantic cannot build a validator for
                pass
        bound[param.name] = value
    unknown = [key for key in kwargs if key not in signature.parameters or key in skip]
    if unknown and not accepts_any:
        known = ", ".join(signature.parameters) or "none"
        problems.append(
            f"unexpected argument(s) {', '.join(map(repr, unknown))} (accepted: {known})"
        )
    elif unknown:
        bound.update({key: kwargs[key] for key in unknown})
    if problems:
        raise InvalidArgumentsError(name, problems, str(signature))
    return bound


def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with string annotations resolved where possible."""
    try:
        return inspect.signature(
            fn, eval_str=True
        )  # readable under `from __future__ import annotations`
    except Exception:
        return inspect.signature(fn)


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(fn)
    hints.pop("return", None)
    return hints
