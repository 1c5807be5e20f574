"""The Ray backend: runs registered functions as Ray tasks on their tier's nodes.

This module and its siblings in :mod:`mesh.ray` (``_remote`` for a function's
Ray options, ``_calls`` for waiting on the work, ``_jobs`` for Tune and Ray
Data, ``_cluster`` for the embedded cluster) are the only parts of the mesh
that import ``ray``; nothing imports them when ``mesh`` is imported.

A function invocation is one Ray task pinned with ``label_selector``
(``mesh.tier``, and ``mesh.site`` when the spec names one). The remote function
and its options are built once per registered function, so a call costs one task
round trip. Tune searches and batch jobs are driven from a thread of this
process; their trials and data tasks are pinned to the tier (see ``_jobs``).

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
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from mesh.compute._backend import Call, NodeInfo, check_satisfiable
from mesh.core._addresses import is_loopback
from mesh.core._errors import (
    BackendError,
    ClusterNotRunningError,
    UnsatisfiableError,
)
from mesh.core._settings import MeshSettings
from mesh.ray._auth import (
    check_cluster_auth,
    use_embedded_token,
    use_loopback_driver,
)
from mesh.ray._calls import TaskCall
from mesh.ray._cluster import LocalCluster, prepare_ray_environment, start_local_cluster
from mesh.ray._jobs import JobRunner
from mesh.ray._reach import tcp_unreachable
from mesh.ray._remote import ensure_picklable, label_selector, task_body, task_resources
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import FunctionKind, FunctionSpec

__all__ = ["RayBackend"]

logger = logging.getLogger(__name__)

_NODES_TTL_S = 2.0


@dataclass(slots=True)
class _TaskEntry:
    fn: Callable[..., Any]  # held so that id(fn) stays unique while cached
    remote: Any
    checked: tuple[NodeInfo, ...] | None = None


# Registered functions remembered by identity for the one-lookup fast path; a caller
# that builds a fresh RegisteredFunction per call falls back to the spec-keyed cache.
_FAST_PATH_ENTRIES = 1024


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
                if auth_mode in ("token", "disabled") and auth_mode != settings.ray_auth_mode:
                    # The running cluster decides; a driver with another mode cannot join.
                    logger.warning(
                        "cluster %s runs with RAY_AUTH_MODE=%s; using that", address, auth_mode
                    )
                    use_embedded_token(settings.model_copy(update={"ray_auth_mode": auth_mode}))
        cluster: LocalCluster | None = None
        if address is None:
            cluster = start_local_cluster(settings)
            address, origin = cluster.address, "embedded cluster"
        else:
            _check_reachable(address, origin)
        if is_loopback(address.rpartition(":")[0]):
            use_loopback_driver()
        started = time.monotonic()
        try:
            if cluster is None:
                check_cluster_auth(settings, address, origin)
            ray.init(
                address=address,
                namespace="mesh",
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            if cluster is not None:
                cluster.shutdown()
            if isinstance(exc, BackendError):
                raise
            raise ClusterNotRunningError(
                f"cannot connect to the Ray cluster at {address} (from {origin}): {exc}"
                f"{_auth_hint(exc)}"
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
        return TaskCall(ref, fn.spec, run_id, submitted)

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
            # The driver's data dir: a worker of an external cluster does not inherit it, and
            # a training function's register=True would fill a registry in the worker's cwd.
            runtime_env={"env_vars": {"MESH_DATA_DIR": str(self._settings.data_dir.resolve())}},
        )
        remote = ray.remote(task_body(fn.fn)).options(**options)
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


def _auth_hint(exc: Exception) -> str:
    """What to set when ``ray.init`` failed on authentication (empty otherwise)."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, AuthenticationError):
        seen = seen.__cause__
    if seen is None:
        return ""
    return (
        "; the cluster refused this process's Ray token: set MESH_RAY_AUTH_MODE to the "
        "cluster's RAY_AUTH_MODE and MESH_RAY_TOKEN_FILE (or RAY_AUTH_TOKEN_PATH) to its token"
    )


def _check_reachable(address: str, origin: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing listens on: ``ray.init`` would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, or a form Ray resolves itself
    reason = tcp_unreachable(host, int(port), timeout_s)
    if reason is not None:
        raise ClusterNotRunningError(
            f"no Ray cluster answers at {address} (from {origin}): {reason}; start one with "
            "`mesh up`, or unset MESH_RAY_ADDRESS to use an embedded cluster"
        )


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
