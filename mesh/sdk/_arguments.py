"""Checking call arguments against a function's signature, before anything runs."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mesh.core._errors import InvalidArgumentsError

__all__ = ["bind_arguments", "signature_of"]


@dataclass(frozen=True, slots=True)
class _Validators:
    signature: inspect.Signature
    adapters: Mapping[str, tuple[Any, TypeAdapter[Any] | None]]


def bind_arguments(
    name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any], *, skip: Collection[str] = ()
) -> dict[str, Any]:
    """Validate ``kwargs`` against ``fn``'s signature; see :meth:`RegisteredFunction.bind`.

    Parameters named in ``skip`` are supplied by the mesh, not the caller.
    """
    checks = _validators(fn)
    signature = checks.signature
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
        hint, adapter = checks.adapters.get(param.name, (None, None))
        if adapter is not None:
            try:
                value = adapter.validate_python(value)
            except ValidationError as exc:
                expected = getattr(hint, "__name__", str(hint))
                detail = exc.errors()[0]["msg"]
                problems.append(f"{param.name}={value!r} is not a valid {expected} ({detail})")
                continue
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


@functools.lru_cache(maxsize=1024)
def _validators(fn: Callable[..., Any]) -> _Validators:
    # Built once per function: a TypeAdapter costs ~150 µs, a call must not pay it.
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: check presence only
        hints = {}
    adapters: dict[str, tuple[Any, TypeAdapter[Any] | None]] = {}
    for key, hint in hints.items():
        if key == "return":
            continue
        try:
            adapters[key] = (hint, TypeAdapter(hint))
        except Exception:  # an annotation pydantic cannot build a validator for
            adapters[key] = (hint, None)
    return _Validators(signature_of(fn), adapters)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with string annotations resolved where possible."""
    try:
        # Readable under `from __future__ import annotations`.
        return inspect.signature(fn, eval_str=True)
    except Exception:
        return inspect.signature(fn)
