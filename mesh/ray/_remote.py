"""What a registered function becomes on Ray: a picklable body, its tier's selector, its resources.

Workers must unpickle the function: :func:`ensure_picklable` ships its module
by value when a worker could not import it by name. :func:`label_selector`
pins the work to the spec's tier (and site); :func:`task_resources` reserves
its CPUs, GPUs, memory and custom resources (:func:`read_resources` for a Ray
Data read, :func:`trial_bundle` for a Tune trial's placement group).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray

from mesh.compute._backend import SITE_LABEL, TIER_LABEL
from mesh.sdk._specs import FunctionSpec

__all__ = [
    "MIB",
    "ensure_picklable",
    "label_selector",
    "matches_selector",
    "read_resources",
    "safe_name",
    "task_body",
    "task_resources",
    "trial_bundle",
]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024

_worker_path_cache: frozenset[str] | None = None
_by_value_decided: dict[str, bool] = {}
_pickle_lock = threading.Lock()


def _worker_sys_path() -> frozenset[str]:
    """``sys.path`` of a fresh interpreter like a worker's, plus what Ray adds."""
    global _worker_path_cache
    if _worker_path_cache is None:
        entries: list[str] = []
        try:
            out = subprocess.run(
                [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            entries = [e for e in json.loads(out.stdout) if e]
        except (OSError, subprocess.SubprocessError, ValueError):
            logger.warning(
                "could not read a worker's sys.path; by-value pickling for all "
                "modules outside site-packages",
                exc_info=True,
            )
        # Ray puts the driver's working directory and script directory on workers' paths.
        entries.append(os.getcwd())
        if sys.argv and sys.argv[0]:
            entries.append(os.path.dirname(os.path.abspath(sys.argv[0])))
        _worker_path_cache = frozenset(os.path.realpath(e) for e in entries)
    return _worker_path_cache


def _import_root(module: types.ModuleType) -> Path | None:
    """The sys.path entry that ``import <module.__name__>`` resolves from, if consistent."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(os.path.realpath(file))
    parts = module.__name__.split(".")
    if path.name.split(".")[0] == "__init__":
        directory = path.parent
        names = parts
    else:
        if path.name.split(".")[0] != parts[-1]:
            return None
        directory = path.parent
        names = parts[:-1]
    for name in reversed(names):
        if directory.name != name:
            return None
        directory = directory.parent
    return directory


def _needs_by_value(module: types.ModuleType) -> bool:
    if module.__name__ == "__main__" or not getattr(module, "__file__", None):
        return False  # cloudpickle ships __main__ by value already; builtins import anywhere
    root = _import_root(module)
    return root is None or str(root) not in _worker_sys_path()


def ensure_picklable(fn: Callable[..., Any]) -> None:
    """Ship ``fn``'s module by value when workers could not import it by name.

    A function loaded from a file by path (``spec_from_file_location``), or from
    a directory only this process has on ``sys.path`` (pytest's rootdir
    insertion), would fail to unpickle on a worker; cloudpickle then sends the
    module's code along instead.
    """
    name = getattr(fn, "__module__", None)
    if not name:
        return
    with _pickle_lock:
        if name in _by_value_decided:
            return
        module = sys.modules.get(name)
        decided = module is not None and _needs_by_value(module)
        if decided and module is not None:
            ray.cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
            logger.info("functions of module %s are shipped to workers by value", name)
        _by_value_decided[name] = decided


def task_body(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], tuple[Any, str]]:
    """The remote function's body: ``fn(**kwargs)`` and the node that ran it."""

    def mesh_function(kwargs: dict[str, Any]) -> tuple[Any, str]:
        return fn(**kwargs), ray.get_runtime_context().get_node_id()

    return mesh_function


def label_selector(spec: FunctionSpec) -> dict[str, str]:
    """The Ray label selector that pins ``spec`` to its tier (and site)."""
    selector = {TIER_LABEL: spec.tier}
    if spec.site:
        selector[SITE_LABEL] = spec.site
    return selector


def task_resources(spec: FunctionSpec) -> dict[str, Any]:
    """Ray resource options (``num_cpus`` etc.) for one invocation of ``spec``."""
    res = spec.resources
    options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.memory_mb:
        options["memory"] = res.memory_mb * MIB
    if res.custom:
        options["resources"] = dict(res.custom)
    return options


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether node ``labels`` satisfy a label ``selector``."""
    return all(labels.get(k) == v for k, v in selector.items())


def safe_name(text: str) -> str:
    """``text`` as a Ray run or directory name (letters, digits, ``_.-``; 120 at most).

    Never ``.``, ``..`` or empty: a name of dots alone would name a directory above.

    Example:
        >>> safe_name("../etc/passwd"), safe_name(".."), safe_name("")
        ('.._etc_passwd', '__', '_')
    """
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:120]
    return (name.replace(".", "_") or "_") if name.strip(".") == "" else name


def read_resources(spec: FunctionSpec) -> dict[str, Any]:
    """Ray Data read options (``num_cpus`` etc.) for ``spec``'s read tasks."""
    res = spec.resources
    options: dict[str, Any] = {"num_cpus": res.cpus}
    if res.memory_mb:
        options["memory"] = float(res.memory_mb * MIB)
    if res.custom:
        options["resources"] = dict(res.custom)
    return options


def trial_bundle(spec: FunctionSpec) -> dict[str, float]:
    """One Tune trial's placement-group bundle for ``spec``."""
    res = spec.resources
    bundle = {"CPU": res.cpus, "GPU": res.gpus, **res.custom}
    if res.memory_mb:
        bundle["memory"] = float(res.memory_mb * MIB)
    return bundle
