"""A host joins a Ray cluster as a mesh node: ``ray start`` with its tier, site and budget.

``mesh node join HEAD:PORT --tier fog --site S --cpus N`` (:mod:`mesh.cli._node`)
checks everything it can before Ray runs, so a mistake fails in seconds with
what was wrong, not after Ray's own retries:

1. the tier is one a node can have (``cloud`` or ``fog``: edge devices run
   agents, not Ray) and the site a valid label value (Kubernetes label syntax,
   as Ray checks it);
2. the head's GCS answers a TCP connection within ``connect_timeout_s``;
3. it asks the GCS, without credentials, whether it wants a token
   (:func:`mesh.ray._auth.probe_cluster_auth`); if so, a token file must be at
   hand (``--token-file``, ``MESH_RAY_TOKEN_FILE``, ``RAY_AUTH_TOKEN_PATH``).

Then ``ray start --address HEAD:PORT --labels mesh.tier=T,mesh.site=S
--num-cpus N`` runs with ``RAY_AUTH_MODE`` and the token path in its
environment. Ray's processes for the node are recorded in
``<data_dir>/node.json`` (pid and start time each: those on this host that
name the head's GCS port and were not there before), so
``mesh node leave`` ends exactly them and their workers, by pid, and not
every Ray process on the host as ``ray stop`` would (a ``mesh up`` cluster or
another node's).

Example:
    >>> ray_start_command(NodeJoin("10.0.0.1:6379", "fog", site="plant-3", cpus=2),
    ...                   ray=["ray"])  # doctest: +NORMALIZE_WHITESPACE
    ['ray', 'start', '--address=10.0.0.1:6379', '--labels=mesh.tier=fog,mesh.site=plant-3',
     '--num-cpus=2', '--disable-usage-stats']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

from edge_agent._files import atomic_write
from mesh.compute._backend import SITE_LABEL, TIER_LABEL
from mesh.core._errors import BackendError, InvalidRequestError
from mesh.core._settings import MeshSettings
from mesh.ray._auth import probe_cluster_auth
from mesh.ray._reach import tcp_unreachable

__all__ = [
    "NODE_TIERS",
    "JoinedNode",
    "NodeJoin",
    "join_node",
    "leave_node",
    "parse_head",
    "ray_start_command",
]

logger = logging.getLogger(__name__)

#: The tiers a Ray node can have (edge devices run agents, not Ray).
NODE_TIERS = ("cloud", "fog")
#: A label value, as Ray (and Kubernetes) take it: 1-63 characters, alphanumeric at
#: both ends, ``-``, ``_`` and ``.`` inside.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_STATE_FILE = "node.json"
#: How long ``ray start`` may take to join before the attempt is given up.
_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class NodeJoin:
    """What ``mesh node join`` asks for.

    Attributes:
        head: the head's GCS address, ``HOST:PORT`` (``ray start --head`` prints it).
        tier: ``cloud`` or ``fog``.
        site: the node's site label (fog nodes: where it stands).
        cpus: CPUs the node offers (None: Ray counts them).
        gpus: GPUs the node offers (None: Ray counts them).
        node_ip: the address this node advertises (None: Ray picks the outward one).
        token_file: the cluster's token (None: ``RAY_AUTH_TOKEN_PATH``, then
            ``MESH_RAY_TOKEN_FILE``).
    """

    head: str
    tier: str
    site: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    node_ip: str | None = None
    token_file: Path | None = None

    def labels(self) -> dict[str, str]:
        """The node's labels, checked.

        Raises:
            InvalidRequestError: an unknown tier, or a site that is not a label value.
        """
        if self.tier not in NODE_TIERS:
            raise InvalidRequestError(
                f"--tier {self.tier!r}: a Ray node is one of {', '.join(NODE_TIERS)} "
                "(edge devices run the agent: mesh agents enroll)"
            )
        labels = {TIER_LABEL: self.tier}
        if self.site is not None:
            if not _LABEL_VALUE.match(self.site):
                raise InvalidRequestError(
                    f"--site {self.site!r}: expected 1-63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit"
                )
            labels[SITE_LABEL] = self.site
        return labels


@dataclass(frozen=True)
class JoinedNode:
    """A node ``join_node`` started: the head, its labels, and Ray's processes for it."""

    head: str
    labels: dict[str, str]
    pids: dict[int, float]


def parse_head(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a host and a port.

    Raises:
        InvalidRequestError: no port, or a port outside 1-65535.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(
            f"head address {text!r}: expected HOST:PORT, the GCS address "
            "`ray start --head` prints (e.g. 10.0.0.1:6379)"
        )
    return host, int(port)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def ray_start_command(join: NodeJoin, *, ray: Sequence[str] | None = None) -> list[str]:
    """The ``ray start`` command line that joins this host as ``join`` says."""
    labels = ",".join(f"{k}={v}" for k, v in join.labels().items())
    command = [*(ray or _ray_cli()), "start", f"--address={join.head}", f"--labels={labels}"]
    if join.cpus is not None:
        command.append(f"--num-cpus={_number(join.cpus)}")
    if join.gpus is not None:
        command.append(f"--num-gpus={_number(join.gpus)}")
    if join.node_ip is not None:
        command.append(f"--node-ip-address={join.node_ip}")
    command.append("--disable-usage-stats")
    return command


def _ray_cli() -> list[str]:
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    return [found] if found else [sys.executable, "-m", "ray.scripts.scripts"]


def _check_reachable(host: str, port: int, timeout_s: float) -> None:
    reason = tcp_unreachable(host, port, timeout_s)
    if reason is not None:
        raise BackendError(
            f"cannot reach the Ray head at {host}:{port} ({reason}): "
            "is `ray start --head` running there, and is the port open from this host?"
        )


def _token_path(join: NodeJoin, settings: MeshSettings) -> Path | None:
    if join.token_file is not None:
        return join.token_file
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        return Path(named)
    return settings.ray_token_file


def _ray_env(join: NodeJoin, settings: MeshSettings, address: str) -> dict[str, str]:
    """The environment ``ray start`` runs in: auth as the head asks for it.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which a loopback driver sets for
    itself and its children (:func:`mesh.ray._auth.use_loopback_driver`), is
    dropped: with it, ``ray start --address`` refuses to join any cluster.
    """
    dropped = ("RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    auth = probe_cluster_auth(address)
    if auth == "open":
        logger.warning(
            "the Ray head at %s takes nodes without a token: anyone who reaches it can "
            "run code there; start it with RAY_AUTH_MODE=token",
            address,
        )
        env["RAY_AUTH_MODE"] = "disabled"
        return env
    token = _token_path(join, settings)
    if token is None or not token.is_file() or not token.read_text().strip():
        where = f" ({token} is missing or empty)" if token is not None else ""
        raise BackendError(
            f"the Ray head at {address} requires a token{where}: copy its token file "
            "(<data_dir>/keys/ray-token on the head, mode 0600) here and pass "
            "--token-file PATH (or set MESH_RAY_TOKEN_FILE)"
        )
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


def _node_processes(port: int) -> dict[int, float]:
    """Ray processes on this host of the cluster whose GCS listens on ``port``, with start times.

    They name the GCS in a ``--gcs-address``/``--gcs_address`` argument, by the
    host's outward address even when the head was given as loopback (Ray
    rewrites it), so the port is what they share.
    """
    suffix = f":{port}"
    found: dict[int, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        for part in proc.info.get("cmdline") or []:
            name, _, value = part.partition("=")
            if name in ("--gcs-address", "--gcs_address") and value.endswith(suffix):
                found[proc.info["pid"]] = proc.info["create_time"]
                break
    return found


def join_node(
    join: NodeJoin,
    settings: MeshSettings,
    *,
    connect_timeout_s: float = 3.0,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> JoinedNode:
    """Check, then ``ray start`` this host into the cluster; what was started.

    Raises:
        InvalidRequestError: a bad head address, tier or site.
        BackendError: the head is unreachable, wants a token that is not at
            hand, this data dir already holds a joined node, or ``ray start`` failed.
    """
    host, port = parse_head(join.head)
    command = ray_start_command(join)
    state = settings.data_dir / _STATE_FILE
    if state.exists() and _alive(json.loads(state.read_text()).get("pids", {})):
        raise BackendError(
            f"{state} records a node this host already joined: `mesh node leave` first "
            "(or use another MESH_DATA_DIR for a second node)"
        )
    _check_reachable(host, port, connect_timeout_s)
    address = f"{host}:{port}"
    env = _ray_env(join, settings, address)
    before = _node_processes(port)
    logger.info("joining %s: %s", address, " ".join(command))
    try:
        done = run(command, env=env, capture_output=True, text=True, timeout=_START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _end(_alive({str(p): t for p, t in _node_processes(port).items() if p not in before}))
        raise BackendError(
            f"ray start did not join {address} within {_START_TIMEOUT_S:g} s (its processes "
            "ended): the head answered, but this node could not register; check that the "
            "head reaches this host at --node-ip and that both run the same Ray version"
        ) from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-8:])
        raise BackendError(f"ray start failed (exit {done.returncode}):\n{tail}")
    started = {pid: t for pid, t in _node_processes(port).items() if pid not in before}
    record = {
        "head": address,
        "labels": join.labels(),
        "command": command,
        "pids": {str(pid): t for pid, t in started.items()},
        "joined_at": time.time(),
    }
    atomic_write(state, json.dumps(record, indent=2).encode(), mode=0o600)
    return JoinedNode(address, join.labels(), started)


def _alive(pids: dict[str, float]) -> list[psutil.Process]:
    """The recorded processes still running as the same process (a pid can be reused)."""
    alive = []
    for pid, created in pids.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(created)) < 0.01:
                alive.append(proc)
    return alive


def leave_node(settings: MeshSettings, *, grace_s: float = 10.0) -> int:
    """End the processes ``join_node`` recorded (and their workers); how many were running.

    SIGTERM first (the raylet tells the cluster it leaves), SIGKILL after ``grace_s``.

    Raises:
        BackendError: no node was joined from this data dir.
    """
    state = settings.data_dir / _STATE_FILE
    if not state.exists():
        raise BackendError(f"no joined node is recorded in {state} (nothing to leave)")
    record = json.loads(state.read_text())
    procs = _alive(record.get("pids", {}))
    _end(procs, grace_s=grace_s)
    # Ray may start processes for the node outside the recorded tree (agents, workers):
    # those of the same cluster, started since the join, in this host's network namespace.
    port = int(str(record.get("head", ":0")).rpartition(":")[2] or 0)
    since = min((float(t) for t in record.get("pids", {}).values()), default=None)
    for _ in range(3):
        late = _late_processes(port, since) if port and since is not None else []
        if not late:
            break
        _end(late, grace_s=min(grace_s, 5.0))
    state.unlink()
    return len(procs)


def _netns() -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/net")
    return None


def _late_processes(port: int, since: float) -> list[psutil.Process]:
    """Processes of the cluster on ``port`` started since ``since`` in this network namespace."""
    here = _netns()
    cluster = _node_processes(port)
    late = []
    for pid, created in cluster.items():
        if created + 0.01 < since:
            continue
        with contextlib.suppress(OSError, psutil.Error):
            proc = psutil.Process(pid)
            if proc.ppid() in cluster:
                continue  # a live node's own child (another node's worker, say)
            if here is None or os.readlink(f"/proc/{pid}/ns/net") == here:
                late.append(proc)
    return late


def _end(procs: list[psutil.Process], *, grace_s: float = 10.0) -> None:
    """SIGTERM ``procs`` and their children; SIGKILL what is left after ``grace_s``."""
    family = {p.pid: p for p in procs}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            family.update({c.pid: c for c in proc.children(recursive=True)})
    for proc in family.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, still = psutil.wait_procs(list(family.values()), timeout=grace_s)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(still, timeout=5)
