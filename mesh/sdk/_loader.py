"""Finding the apps in a user's file or module (`mesh deploy FILE`)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from mesh.core._errors import ConfigError
from mesh.sdk._app import Mesh

__all__ = ["load_apps", "load_module"]


def load_module(source: str) -> ModuleType:
    """Import ``source``: a ``.py`` file path or a dotted module name.

    A file inside an importable package (for example ``functions/demo.py`` run
    from the project root) is imported under its dotted name, so Ray workers
    import it by reference; any other file is loaded under a private name.

    Raises:
        ConfigError: the file is missing or raised while importing.
    """
    path = Path(source)
    if source.endswith(".py") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{source}: no such file (expected a Python file of mesh functions)")
        dotted = _dotted_name(path.resolve())
        if dotted is not None:
            return _import(dotted, source)
        return _import_file(path.resolve())
    return _import(source, source)


def load_apps(source: str) -> list[Mesh]:
    """The :class:`Mesh` apps defined at the top level of ``source``.

    Raises:
        ConfigError: nothing to load, or no app in it.
    """
    module = load_module(source)
    apps = [value for value in vars(module).values() if isinstance(value, Mesh)]
    if not apps:
        raise ConfigError(
            f"{source}: defines no mesh app; expected a top-level `app = Mesh('name')` "
            "with functions registered on it"
        )
    return apps


def _dotted_name(path: Path) -> str | None:
    for entry in sys.path:
        root = Path(entry or ".").resolve()
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        packages = relative.parent.parts
        if not all(
            (root.joinpath(*packages[: i + 1]) / "__init__.py").is_file()
            for i in range(len(packages))
        ):
            continue
        return ".".join((*packages, path.stem))
    return None


def _import(name: str, source: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"{source}: no such module or file") from exc
        raise ConfigError(f"{source}: import failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"{source}: import failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"_mesh_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{path}: import failed: {type(exc).__name__}: {exc}") from exc
    return module
