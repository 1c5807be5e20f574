"""Lazy re-exports for a layer's ``__init__`` (PEP 562 module ``__getattr__``).

Each subpackage's ``__init__`` lists its API in ``__all__`` and imports each
name from its private module under ``if TYPE_CHECKING:`` (what readers, type
checkers and IDEs see); :func:`lazy_exports` resolves a name on first access.

Why not plain imports: Python runs a package's ``__init__`` for every module
imported from it. A Ray worker that imports ``mesh.ray._backend``, or a replica
that imports ``mesh.serving._oip``, would then import every sibling (FastAPI,
the control plane, …) and pay for it at each cold start; and an ``__init__``
that imports its whole layer can close an import cycle between two layers
that their modules alone do not have. Internal code imports from the private
modules; users import from the layer (``from mesh.serving import Gateway``).

Example:
    >>> __getattr__, __dir__ = lazy_exports(
    ...     "mesh.core", {"mesh.core._errors": ("MeshError",)}
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` that import ``homes``' names on first use.

    Args:
        package: the package's ``__name__``.
        homes: private module -> the names the package re-exports from it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's namespace.

    Raises:
        ValueError: a name is given two homes, or the names differ from the
            package's ``__all__`` (assigned before this call).
    """
    where: dict[str, str] = {}
    for module, names in homes.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported from {where[name]} and {module}")
            where[name] = module
    listed = set(getattr(importlib.import_module(package), "__all__", ()))
    if listed != set(where):
        raise ValueError(
            f"{package}: __all__ and the lazy exports differ: "
            f"only in __all__ {sorted(listed - set(where))}, "
            f"only in the exports {sorted(set(where) - listed)}"
        )

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        # Cache it in the package: later lookups never reach __getattr__ again.
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(where))

    return __getattr__, __dir__
