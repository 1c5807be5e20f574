"""The embedded local Ray cluster: a cloud head node and fog nodes on one host.

Each node is a real raylet started through :class:`ray.cluster_utils.Cluster`
on ``settings.ray_node_ip`` (loopback by default, so no Ray port is reachable
from another host) with token authentication on (``settings.ray_auth_mode``),
and labelled with its tier (``mesh.tier=cloud|fog``) and, for fog nodes, its
site (``mesh.site=fog-<i>``), so functions are pinned by ``label_selector``
exactly as on a real multi-host cluster.

``mesh up`` runs this module detached (``python -m mesh.ray._cluster``): it
starts the cluster, records it in ``settings.cluster_file`` and holds it until
SIGTERM or SIGINT.

Example:
    >>> cluster = start_local_cluster(MeshSettings(fog_nodes=1))  # doctest: +SKIP
    >>> cluster.address                                            # doctest: +SKIP
    '127.0.0.1:41235'
    >>> cluster.shutdown()                                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from edge_agent._files import atomic_write
from mesh.compute._backend import SITE_LABEL, TIER_LABEL
from mesh.core._errors import BackendError
from mesh.core._settings import MeshSettings
from mesh.ray._auth import use_embedded_token, use_external_token

__all__ = [
    "ClusterNode",
    "LocalCluster",
    "prepare_ray_environment",
    "run_cluster_daemon",
    "start_local_cluster",
]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: How often the cluster reaps its nodes' processes that exited (a raylet killed outright).
REAP_PERIOD_S = 1.0


def prepare_ray_environment(settings: MeshSettings) -> None:
    """Set the environment Ray reads, before Ray starts a node or connects.

    Authentication (:mod:`mesh.ray._auth`): ``RAY_AUTH_MODE`` comes from the
    settings (``token`` by default). Without ``settings.ray_address`` (the
    embedded cluster) the token is ours, ``<data_dir>/keys/ray-token``, named
    by ``RAY_AUTH_TOKEN_PATH``; with one, the operator's token is used. Raylets,
    workers and drivers started from this process inherit both.
    The Tune and Ray Data defaults keep a control plane's output quiet and keep
    trials in the caller's working directory; set them beforehand to override.
    """
    if settings.ray_address is None:
        use_embedded_token(settings)
    else:
        use_external_token(settings)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Stopped trials whose code never returns are killed after this, not 600 s.
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of the embedded cluster."""

    node_id: str
    tier: str
    site: str | None
    cpus: float

    def as_dict(self) -> dict[str, Any]:
        """The node as JSON-ready data (for the cluster file)."""
        return {"node_id": self.node_id, "tier": self.tier, "site": self.site, "cpus": self.cpus}


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Undo the SIGTERM handler each Ray node installs in the process that starts it.

    Ray's handler drains the node and calls ``sys.exit(1)``; the process that
    embeds the cluster (``mesh up``'s daemon, the control plane) keeps its own.
    Raylets still go when this process exits (atexit) or dies (Ray's reaper).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)


def _count(value: float) -> float | int:
    # Ray's node options want whole counts where they can be whole.
    return int(value) if float(value).is_integer() else float(value)


class LocalCluster:
    """A running embedded cluster; it owns the raylets it started and nothing else.

    Use :func:`start_local_cluster` to create one.
    """

    def __init__(self, settings: MeshSettings) -> None:
        """Start the cloud head node; fog nodes are added with :meth:`add_fog_node`."""
        prepare_ray_environment(settings)
        from ray.cluster_utils import Cluster

        self._settings = settings
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[Any, ClusterNode]] = {}
        self._next_fog = 0
        self._closed = False
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="mesh-ray-reaper", daemon=True)
        started = time.monotonic()
        head_args: dict[str, Any] = {
            "num_cpus": _count(settings.cloud_cpus),
            "num_gpus": _count(settings.cloud_gpus),
            "labels": {TIER_LABEL: "cloud"},
            "node_ip_address": settings.ray_node_ip,
            "object_store_memory": settings.object_store_mb * _MIB,
            "include_dashboard": settings.include_dashboard,
        }
        try:
            with _keep_sigterm_handler():
                self._cluster = Cluster(initialize_head=True, head_node_args=head_args)
        except Exception as exc:
            raise BackendError(f"could not start the embedded Ray head node: {exc}") from exc
        head = self._cluster.head_node
        assert head is not None
        self._address: str = str(self._cluster.address)
        info = ClusterNode(head.node_id, "cloud", None, float(settings.cloud_cpus))
        self._nodes[info.node_id] = (head, info)
        logger.info(
            "embedded Ray head %s (cloud, %g CPU) at %s in %.1f s",
            info.node_id[:8],
            settings.cloud_cpus,
            self._address,
            time.monotonic() - started,
        )
        self._reaper.start()

    @property
    def address(self) -> str:
        """The GCS address drivers connect to (``HOST:PORT``)."""
        return self._address

    @property
    def nodes(self) -> list[ClusterNode]:
        """The nodes this cluster started and has not removed, head first."""
        with self._lock:
            return [info for _, info in self._nodes.values()]

    def add_fog_node(self, *, site: str | None = None, cpus: float | None = None) -> ClusterNode:
        """Start a fog raylet labelled ``mesh.tier=fog``, ``mesh.site=<site>``.

        Args:
            site: the node's site label (default ``fog-<i>``, counting from 0).
            cpus: CPUs it advertises (default ``settings.fog_cpus``).

        Returns:
            The new node, once it has registered with the head.
        """
        with self._lock:
            if self._closed:
                raise BackendError("the embedded cluster was shut down")
            if site is None:
                site = f"fog-{self._next_fog}"
            self._next_fog += 1
        cpus = self._settings.fog_cpus if cpus is None else cpus
        started = time.monotonic()
        try:
            with _keep_sigterm_handler():
                node = self._cluster.add_node(
                    num_cpus=_count(cpus),
                    labels={TIER_LABEL: "fog", SITE_LABEL: site},
                    node_ip_address=self._settings.ray_node_ip,
                    object_store_memory=self._settings.object_store_mb * _MIB,
                )
        except Exception as exc:
            raise BackendError(f"could not start fog node {site!r}: {exc}") from exc
        info = ClusterNode(node.node_id, "fog", site, float(cpus))
        with self._lock:
            self._nodes[info.node_id] = (node, info)
        logger.info(
            "embedded fog node %s (site %s, %g CPU) up in %.1f s",
            info.node_id[:8],
            site,
            cpus,
            time.monotonic() - started,
        )
        return info

    def remove_node(self, node_id: str, *, graceful: bool = True) -> None:
        """Stop a fog node's raylet and its workers (work there fails or retries).

        Raises:
            BackendError: ``node_id`` is the head node or not a node of this cluster.
        """
        with self._lock:
            entry = self._nodes.get(node_id)
            if entry is None:
                raise BackendError(f"node {node_id[:8]} is not a node of this cluster")
            if entry[1].tier == "cloud":
                raise BackendError("the head (cloud) node is removed only by shutdown()")
            del self._nodes[node_id]
        workers = [] if graceful else _workers_of(entry[0])
        self._cluster.remove_node(entry[0], allow_graceful=graceful)
        # A machine that goes away takes its workers along; the raylet's would
        # otherwise linger, still answering over MQTT, until they noticed.
        for proc in workers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        logger.info(
            "embedded node %s (%s) removed%s",
            node_id[:8],
            entry[1].site,
            f" with {len(workers)} worker(s)" if workers else "",
        )

    def shutdown(self) -> None:
        """Stop every raylet this cluster started; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._nodes.clear()
        self._reaper_stop.set()
        self._reaper.join(5 * REAP_PERIOD_S)
        try:
            self._cluster.shutdown()  # type: ignore[no-untyped-call]
        finally:
            _forget_address(self._address)
        logger.info("embedded Ray cluster at %s shut down", self._address)

    def _reap_loop(self) -> None:
        """Reap the nodes' processes that exited (each is this process's child), until shutdown.

        A raylet killed outright (``kill -9``, the OOM killer) stays a zombie until
        its parent waits for it, and its workers, which check the raylet's pid,
        take a zombie for alive: a replica on that node would keep running, its
        port and MQTT responder with it, until the control plane exits. Reaped,
        the workers see it gone and exit (Ray checks every second).
        """
        reported: set[int] = set()
        while not self._reaper_stop.wait(REAP_PERIOD_S):
            with self._lock:
                nodes = list(self._nodes.values())
            for node, info in nodes:
                try:
                    dead = node.dead_processes()  # polls each process: reaps the exited
                except Exception:  # Ray changed its process table meanwhile: next time
                    logger.debug("node %s: processes not polled", info.node_id[:8], exc_info=True)
                    continue
                for kind, proc in dead:
                    if proc.pid not in reported:
                        reported.add(proc.pid)
                        logger.warning(
                            "embedded node %s (%s): its %s (pid %d) exited with %s",
                            info.node_id[:8],
                            info.site or info.tier,
                            kind,
                            proc.pid,
                            proc.returncode,
                        )

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _workers_of(node: Any) -> list[psutil.Process]:
    """The processes a node's raylet started (its workers), for an abrupt removal."""
    try:
        [raylet] = node.all_processes["raylet"]
        return list(psutil.Process(raylet.process.pid).children(recursive=True))
    except (AttributeError, KeyError, ValueError, psutil.Error):
        return []


def _forget_address(address: str) -> None:
    # Cluster writes /tmp/ray/ray_current_cluster so that a bare ray.init()
    # joins it; leave no pointer to a cluster that is gone.
    try:
        from ray._common.utils import reset_ray_address
        from ray._private.utils import read_ray_address

        if read_ray_address() == address:
            reset_ray_address()
    except Exception:  # a private Ray helper moved: nothing to clean up then
        logger.debug("could not reset Ray's current-cluster file", exc_info=True)


def start_local_cluster(settings: MeshSettings) -> LocalCluster:
    """Start the embedded cluster: a cloud head and ``settings.fog_nodes`` fog nodes.

    The nodes are real raylets on this host. The caller owns the cluster and
    must call :meth:`LocalCluster.shutdown` (their processes are also reaped if
    this process dies).

    Example:
        >>> with start_local_cluster(MeshSettings(fog_nodes=2)) as cluster:  # doctest: +SKIP
        ...     [n.site for n in cluster.nodes]
        [None, 'fog-0', 'fog-1']
    """
    cluster = LocalCluster(settings)
    try:
        for _ in range(settings.fog_nodes):
            cluster.add_fog_node()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def run_cluster_daemon(settings: MeshSettings) -> None:
    """Run the embedded cluster until SIGTERM or SIGINT (what ``mesh up`` spawns).

    Writes ``settings.cluster_file`` (address, pid, started_at, nodes) once the
    cluster is up and removes it after shutting down.
    """
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("cluster daemon got signal %d; shutting down", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    cluster_file = settings.cluster_file
    try:
        cluster = start_local_cluster(settings)
        try:
            _write_json_atomically(
                cluster_file,
                {
                    "address": cluster.address,
                    "pid": os.getpid(),
                    "started_at": time.time(),
                    "auth_mode": settings.ray_auth_mode,
                    "nodes": [node.as_dict() for node in cluster.nodes],
                },
            )
            logger.info(
                "cluster daemon %d serving %s (file %s)", os.getpid(), cluster.address, cluster_file
            )
            while not stop.wait(1.0):
                pass
        finally:
            try:
                cluster.shutdown()
            finally:
                cluster_file.unlink(missing_ok=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_cluster_daemon(MeshSettings())


if __name__ == "__main__":
    _main()
