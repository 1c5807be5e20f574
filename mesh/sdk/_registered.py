"""What an app holds: a registered function or module class with its spec.

:class:`mesh.sdk._app.Mesh` creates these records when a decorator registers
something; runners and backends read them to invoke the function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.sdk._arguments import bind_arguments, signature_of
from mesh.sdk._specs import FunctionSpec, ModuleSpec

__all__ = ["RegisteredFunction", "RegisteredModule"]


@dataclass(frozen=True, slots=True)
class RegisteredFunction:
    """A function with its spec, as the app holds it."""

    spec: FunctionSpec
    fn: Callable[..., Any]
    app: str

    @property
    def name(self) -> str:
        """The registered name."""
        return self.spec.name

    @property
    def signature(self) -> inspect.Signature:
        """The function's Python signature."""
        return signature_of(self.fn)

    def bind(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert keyword arguments against the signature.

        Values are validated (and, where lax conversion applies, converted: the
        CLI passes ``"3"`` for an ``int``) against each parameter's annotation.

        Raises:
            InvalidArgumentsError: naming every wrong argument and the signature.
        """
        return bind_arguments(self.name, self.fn, kwargs)


@dataclass(frozen=True, slots=True)
class RegisteredModule:
    """An inference module class with its spec."""

    spec: ModuleSpec
    cls: type
    app: str
