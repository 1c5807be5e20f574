"""The Ray backend: runs registered functions as Ray tasks on their tier's nodes.

This module and its siblings (``_ray_jobs`` for Tune and Ray Data,
``_ray_cluster`` for the embedded cluster) are the only parts of the mesh that
import ``ray``; nothing imports them when ``mesh`` is imported.

A function invocation is one Ray task pinned with ``label_selector``
(``mesh.tier``, and ``mesh.site`` when the spec names one). The remote function
and its options are built once per registered function, so a call costs one task
round trip. Tune searches and batch jobs are driven from a thread of this
process; their trials and data tasks are pinned to the tier (see ``_ray_jobs``).

Example:
    >>> backend = RayBackend.connect(MeshSettings())          # doctest: +SKIP
    >>> call = backend.submit(app.get("add"), {"a": 1, "b": 2}, run_id="r1")  # doctest: +SKIP
    >>> call.result(timeout_s=30).value                       # doctest: +SKIP
    3
    >>> backend.close()                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import exceptions as ray_exceptions

from mesh.compute._backend import (
    SITE_LABEL,
    TIER_LABEL,
    Call,
    CallResult,
    NodeInfo,
    check_satisfiable,
)
from mesh.core._errors import (
    BackendError,
    CancelledError,
    ClusterNotRunningError,
    FunctionTimeoutError,
    MeshError,
    RemoteFunctionError,
    UnsatisfiableError,
)
from mesh.core._settings import MeshSettings
from mesh.ray._cluster import LocalCluster, prepare_ray_environment, start_local_cluster
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import FunctionKind, FunctionSpec

if TYPE_CHECKING:
    from mesh.ray._jobs import JobRunner

__all__ = ["NODE_ID_METRIC", "RayBackend", "report_trial"]

logger = logging.getLogger(__name__)

#: Metric key under which :func:`report_trial` records the trial's node (stripped from results).
NODE_ID_METRIC = "mesh_node_id"

_NODES_TTL_S = 2.0
_MIB = 1024 * 1024


def report_trial(metrics: Mapping[str, Any]) -> None:
    """Report one round of a Tune trial's metrics (``mesh.report(**metrics)``).

    Inside a trial of an ``@app.tune`` function this calls ``ray.tune.report``
    (``ray.train.report`` raises under Tune in Ray 2.60). Outside a trial, e.g.
    when the trainable is called locally, it does nothing, so trainables stay
    callable as plain functions.

    Example:
        >>> report_trial({"val_mae": 0.42})   # outside a trial: a no-op
    """
    if not _in_tune_session():
        logger.debug("report outside a Tune trial ignored: %s", sorted(metrics))
        return
    from ray import tune

    payload = dict(metrics)
    payload[NODE_ID_METRIC] = ray.get_runtime_context().get_node_id()
    tune.report(payload)


def _in_tune_session() -> bool:
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # Ray moved its session helper: let tune.report decide
        return True
    return get_session() is not None


# -- pickling functions whose module workers cannot import --------------------

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


# -- errors -------------------------------------------------------------------


def qualified_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` otherwise."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$")


def remote_error(
    exc: ray_exceptions.RayTaskError, *, function: str, run_id: str
) -> RemoteFunctionError:
    """A :class:`RemoteFunctionError` carrying what a Ray task raised and its traceback."""
    # ray.get raises a dual "RayTaskError(UserError)" instance that forwards attribute
    # lookups to the cause and has no traceback_str; its str() is the remote traceback.
    traceback_text = _ANSI.sub("", str(vars(exc).get("traceback_str") or exc))
    cause = vars(exc).get("cause")
    cause = cause if isinstance(cause, BaseException) else None
    if cause is not None and not isinstance(cause, ray_exceptions.RayError):
        remote_type, remote_message = qualified_name(cause), str(cause)
    else:
        remote_type, remote_message = qualified_name(cause or exc), str(cause or exc)
        if isinstance(cause, ray_exceptions.UserCodeException):
            # Ray Data wraps a UDF's exception; only the traceback text names the original.
            for line in traceback_text.splitlines():
                match = _EXCEPTION_LINE.match(line)
                if match and not match.group(1).startswith("ray."):
                    remote_type, remote_message = match.group(1), match.group(2)
                    break
    return RemoteFunctionError(
        function=function,
        run_id=run_id,
        remote_type=remote_type,
        remote_message=remote_message,
        remote_traceback=traceback_text,
    )


def system_error(exc: BaseException, *, function: str, run_id: str, retries: int) -> BackendError:
    """A :class:`BackendError` for a Ray failure that is not the function's own exception."""
    if isinstance(
        exc,
        ray_exceptions.WorkerCrashedError
        | ray_exceptions.NodeDiedError
        | ray_exceptions.LocalRayletDiedError,
    ):
        what = "the worker or node running it died"
    elif isinstance(exc, ray_exceptions.OutOfMemoryError):
        what = "its worker was killed for using too much memory"
    elif isinstance(exc, ray_exceptions.ObjectLostError):
        what = "its result was lost with the node that held it"
    elif isinstance(exc, ray_exceptions.RuntimeEnvSetupError):
        what = "its runtime environment could not be set up"
    else:
        what = f"Ray failed ({type(exc).__name__})"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendError(
        f"{function} (run {run_id}) did not finish: {what} after {retries} "
        f"retr{'y' if retries == 1 else 'ies'}: {detail}"
    )


def deadline_for(spec: FunctionSpec, submitted: float) -> float | None:
    """When the spec's ``timeout_s`` runs out, on the monotonic clock."""
    return None if spec.timeout_s is None else submitted + spec.timeout_s


def wait_budget(
    timeout_s: float | None, deadline: float | None, spec_timeout_s: float | None
) -> tuple[float | None, float | None]:
    """How long ``result()`` may wait, and the timeout to name if that runs out."""
    if deadline is None:
        return timeout_s, timeout_s
    left = max(0.0, deadline - time.monotonic())
    if timeout_s is None or left <= timeout_s:
        return left, spec_timeout_s
    return timeout_s, timeout_s


# -- function calls -----------------------------------------------------------


class _TaskCall:
    """A submitted FUNCTION/STREAM invocation: one Ray task."""

    __slots__ = (
        "_cancelled",
        "_deadline",
        "_error",
        "_function",
        "_outcome",
        "_ref",
        "_retries",
        "_run_id",
        "_spec_timeout_s",
    )

    def __init__(
        self, ref: ray.ObjectRef[tuple[Any, str]], spec: FunctionSpec, run_id: str, submitted: float
    ) -> None:
        self._ref = ref
        self._function = spec.name
        self._run_id = run_id
        self._retries = spec.retries
        self._spec_timeout_s = spec.timeout_s
        self._deadline = deadline_for(spec, submitted)
        self._outcome: CallResult | None = None
        self._error: MeshError | None = None
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<RayCall {self._function} run={self._run_id} done={self.done()}>"

    def result(self, timeout_s: float | None = None) -> CallResult:
        """Wait for the task; see :class:`mesh.Call`.

        The spec's ``timeout_s`` counts from submission; ``timeout_s`` here
        limits this wait. Either running out cancels the task.
        """
        if self._outcome is not None:
            return self._outcome
        if self._error is not None:
            raise self._error
        if self._cancelled:
            raise self._cancelled_error()
        wait, named = wait_budget(timeout_s, self._deadline, self._spec_timeout_s)
        try:
            value, node_id = ray.get(self._ref, timeout=wait)
        except ray_exceptions.GetTimeoutError as exc:
            ray.cancel(self._ref, force=True)
            self._error = FunctionTimeoutError(
                function=self._function,
                run_id=self._run_id,
                timeout_s=named if named is not None else 0.0,
            )
            raise self._error from exc
        except ray_exceptions.TaskCancelledError as exc:
            self._error = self._cancelled_error()
            raise self._error from exc
        except ray_exceptions.RayTaskError as exc:
            self._error = remote_error(exc, function=self._function, run_id=self._run_id)
            raise self._error from exc
        except ray_exceptions.RayError as exc:
            self._error = system_error(
                exc, function=self._function, run_id=self._run_id, retries=self._retries
            )
            raise self._error from exc
        self._outcome = CallResult(value, node_id)
        return self._outcome

    def cancel(self) -> None:
        """Stop the task (its worker is killed if it is running); result() then raises."""
        if self._outcome is not None or self._error is not None or self._cancelled:
            return
        self._cancelled = True
        ray.cancel(self._ref, force=True)
        logger.info("cancelled %s (run %s)", self._function, self._run_id)

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        if self._outcome is not None or self._error is not None or self._cancelled:
            return True
        ready, _ = ray.wait([self._ref], timeout=0, fetch_local=False)
        return bool(ready)

    def _cancelled_error(self) -> CancelledError:
        return CancelledError(
            f"{self._function} was cancelled (run {self._run_id})",
            function=self._function,
            run_id=self._run_id,
        )


def _task_body(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], tuple[Any, str]]:
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
        options["memory"] = res.memory_mb * _MIB
    if res.custom:
        options["resources"] = dict(res.custom)
    return options


@dataclass(slots=True)
class _TaskEntry:
    fn: Callable[..., Any]  # held so that id(fn) stays unique while cached
    remote: Any
    checked: tuple[NodeInfo, ...] | None = None


# Registered functions remembered by identity for the one-lookup fast path; a caller
# that builds a fresh RegisteredFunction per call falls back to the spec-keyed cache.
_FAST_PATH_ENTRIES = 1024


# -- the backend --------------------------------------------------------------


class RayBackend:
    """A :class:`mesh.ComputeBackend` on a Ray cluster with tier-labelled nodes.

    Build one with :meth:`connect`; it is thread-safe.
    """

    def __init__(
        self,
        settings: MeshSettings,
        *,
        address: str,
        cluster: LocalCluster | None,
        owns_connection: bool,
    ) -> None:
        """Wrap an established Ray connection (use :meth:`connect`)."""
        self._settings = settings
        self._address = address
        self._cluster = cluster
        self._owns_connection = owns_connection
        self._lock = threading.Lock()
        self._nodes: tuple[NodeInfo, ...] = ()
        self._nodes_at = float("-inf")
        self._fast: dict[int, tuple[RegisteredFunction, _TaskEntry]] = {}
        self._tasks: dict[tuple[int, str], _TaskEntry] = {}
        self._jobs: JobRunner | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, cluster, owns_connection)

    @classmethod
    def connect(cls, settings: MeshSettings) -> RayBackend:
        """Connect to the cluster the settings name, or start an embedded one.

        In order: ``settings.ray_address``; the cluster recorded by ``mesh up``
        in ``settings.cluster_file`` if its process is alive; otherwise a new
        embedded cluster (:func:`start_local_cluster`) that :meth:`close` stops.

        Raises:
            ClusterNotRunningError: the named cluster cannot be reached.
            BackendError: the embedded cluster could not start.
        """
        prepare_ray_environment(settings)
        if ray.is_initialized():
            # One Ray connection per process: share it, and leave it open on close().
            current = str(ray.get_runtime_context().gcs_address)
            logger.info("Ray is already connected in this process (%s); using it", current)
            return cls(settings, address=current, cluster=None, owns_connection=False)
        address = settings.ray_address
        origin = "settings"
        if address is None:
            recorded = _cluster_from_file(settings.cluster_file)
            if recorded is not None:
                address, auth_mode = recorded
                origin = str(settings.cluster_file)
                if auth_mode and auth_mode != os.environ.get("RAY_AUTH_MODE"):
                    # The running cluster decides; a driver with another mode cannot join.
                    logger.warning(
                        "cluster %s runs with RAY_AUTH_MODE=%s; using that", address, auth_mode
                    )
                    os.environ["RAY_AUTH_MODE"] = auth_mode
        cluster: LocalCluster | None = None
        if address is None:
            cluster = start_local_cluster(settings)
            address, origin = cluster.address, "embedded cluster"
        else:
            _check_reachable(address, origin)
        started = time.monotonic()
        try:
            ray.init(
                address=address,
                namespace="mesh",
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            if cluster is not None:
                cluster.shutdown()
            raise ClusterNotRunningError(
                f"cannot connect to the Ray cluster at {address} (from {origin}): {exc}"
            ) from exc
        logger.info(
            "connected to Ray at %s (%s) in %.1f s", address, origin, time.monotonic() - started
        )
        return cls(settings, address=address, cluster=cluster, owns_connection=True)

    @property
    def address(self) -> str:
        """The cluster's GCS address."""
        return self._address

    @property
    def settings(self) -> MeshSettings:
        """The settings the backend was connected with."""
        return self._settings

    @property
    def cluster(self) -> LocalCluster | None:
        """The embedded cluster this backend started and owns, if any."""
        return self._cluster

    def node_usage(self) -> dict[str, dict[str, float]]:
        """Logical resources still available on each live node, by node id.

        Ray has no public per-node call for this in 2.60; the private one is
        wrapped here so a change in it costs `mesh status` a column, not a crash.
        """
        try:
            from ray._private.state import available_resources_per_node

            per_node = available_resources_per_node()  # type: ignore[no-untyped-call]
        except Exception:  # private API: degrade to "unknown" rather than fail
            logger.debug("per-node resource usage unavailable", exc_info=True)
            return {}
        return {str(node): {k: float(v) for k, v in res.items()} for node, res in per_node.items()}

    def nodes(self, *, refresh: bool = False) -> list[NodeInfo]:
        """Live and dead nodes from ``ray.nodes()``, cached for 2 s unless ``refresh``."""
        return list(self._node_snapshot(refresh=refresh))

    def _node_snapshot(self, *, refresh: bool = False) -> tuple[NodeInfo, ...]:
        now = time.monotonic()
        if not refresh and now - self._nodes_at < _NODES_TTL_S:
            return self._nodes
        try:
            raw = ray.nodes()  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise BackendError(f"cannot list the Ray cluster's nodes: {exc}") from exc
        snapshot = tuple(_node_info(entry) for entry in raw)
        with self._lock:
            self._nodes, self._nodes_at = snapshot, now
        return snapshot

    def check(self, spec: FunctionSpec) -> NodeInfo:
        """A live node that could run ``spec``; refreshes the node list once before refusing.

        Raises:
            UnsatisfiableError: no live node has the tier, site or resources.
        """
        try:
            return check_satisfiable(spec, list(self._node_snapshot()))
        except UnsatisfiableError:
            return check_satisfiable(spec, list(self._node_snapshot(refresh=True)))

    def submit(self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str) -> Call:
        """Start ``fn(**kwargs)`` on a node of its tier; never blocks on the work.

        Raises:
            UnsatisfiableError: no live node could run it (Ray would queue it forever).
            InvalidArgumentsError: a batch function got no usable ``input``.
            BackendError: the backend is closed or Ray refused the work.
        """
        if self._closed:
            raise BackendError("the Ray backend is closed")
        kind = fn.spec.kind
        if kind is FunctionKind.FUNCTION or kind is FunctionKind.STREAM:
            return self._submit_task(fn, kwargs, run_id)
        self.check(fn.spec)
        jobs = self._job_runner()
        if kind is FunctionKind.TUNE:
            return jobs.submit_tune(fn, kwargs, run_id=run_id)
        if kind is FunctionKind.BATCH:
            return jobs.submit_batch(fn, kwargs, run_id=run_id)
        raise BackendError(f"{fn.name}: the Ray backend cannot run functions of kind {kind}")

    def _submit_task(self, fn: RegisteredFunction, kwargs: Mapping[str, Any], run_id: str) -> Call:
        hit = self._fast.get(id(fn))
        entry = hit[1] if hit is not None and hit[0] is fn else self._task_entry(fn)
        snapshot = self._node_snapshot()
        if entry.checked is not snapshot:
            self.check(fn.spec)
            entry.checked = snapshot
        submitted = time.monotonic()
        try:
            ref = entry.remote.remote(dict(kwargs))
        except Exception as exc:
            raise BackendError(f"Ray refused {fn.name} (run {run_id}): {exc}") from exc
        return _TaskCall(ref, fn.spec, run_id, submitted)

    def _task_entry(self, fn: RegisteredFunction) -> _TaskEntry:
        spec = fn.spec
        key = (id(fn.fn), spec.model_dump_json())
        with self._lock:
            entry = self._tasks.get(key)
            if entry is not None and entry.fn is fn.fn:
                self._remember(fn, entry)
                return entry
        ensure_picklable(fn.fn)
        options = task_resources(spec)
        options.update(
            label_selector=label_selector(spec),
            max_retries=spec.retries,
            retry_exceptions=spec.retries > 0,
            name=spec.name,
        )
        remote = ray.remote(_task_body(fn.fn)).options(**options)
        entry = _TaskEntry(fn.fn, remote)
        with self._lock:
            self._tasks[key] = entry
            self._remember(fn, entry)
        logger.debug("remote function for %s built: %s", spec.name, options)
        return entry

    def _remember(self, fn: RegisteredFunction, entry: _TaskEntry) -> None:
        if len(self._fast) >= _FAST_PATH_ENTRIES:
            self._fast.clear()
        self._fast[id(fn)] = (fn, entry)

    def _job_runner(self) -> JobRunner:
        with self._lock:
            if self._jobs is None:
                from mesh.ray._jobs import JobRunner

                self._jobs = JobRunner(self)
            return self._jobs

    def close(self) -> None:
        """Stop running Tune/batch jobs, disconnect, and stop an embedded cluster it owns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            jobs, self._jobs = self._jobs, None
            self._tasks.clear()
            self._fast.clear()
        if jobs is not None:
            jobs.close()
        self._finalizer()
        logger.info("Ray backend for %s closed", self._address)

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(cluster: LocalCluster | None, owns_connection: bool) -> None:
    try:
        if owns_connection and ray.is_initialized():
            ray.shutdown()
    finally:
        if cluster is not None:
            cluster.shutdown()


def _node_info(entry: Mapping[str, Any]) -> NodeInfo:
    resources = {str(k): float(v) for k, v in (entry.get("Resources") or {}).items()}
    return NodeInfo(
        node_id=str(entry.get("NodeID", "")),
        alive=bool(entry.get("Alive", False)),
        labels={str(k): str(v) for k, v in (entry.get("Labels") or {}).items()},
        resources_total=resources,
        address=f"{entry.get('NodeManagerAddress', '')}:{entry.get('NodeManagerPort', '')}",
        is_head="node:__internal_head__" in resources,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_reachable(address: str, origin: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing listens on: ``ray.init`` would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, or a form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterNotRunningError(
            f"no Ray cluster answers at {address} (from {origin}): {exc}; start one with "
            "`mesh up`, or unset MESH_RAY_ADDRESS to use an embedded cluster"
        ) from exc


def _cluster_from_file(path: Path) -> tuple[str, str | None] | None:
    """The address (and auth mode) recorded by ``mesh up``, if its daemon lives."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable cluster file %s: %s", path, exc)
        return None
    address, pid = data.get("address"), data.get("pid")
    if not isinstance(address, str) or not isinstance(pid, int):
        logger.warning("ignoring cluster file %s without address and pid", path)
        return None
    if not _pid_alive(pid):
        logger.warning("ignoring stale cluster file %s: process %d is gone", path, pid)
        return None
    auth_mode = data.get("auth_mode")
    return address, auth_mode if isinstance(auth_mode, str) else None
