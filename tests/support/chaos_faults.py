"""The chaos faults past a ``kill -9`` and restart: a fog raylet, a full disk, a corrupt outbox, a cut migration.

:class:`ChaosFaults` is what :meth:`tests.support.chaos.ChaosMesh.inject` hands
the kinds of :data:`MORE_FAULTS` to (issue 15, item 6):

* ``raylet``: ``kill -9`` the raylet of the fog node that holds the fog
  module's serving replica, as when a machine loses power. Nothing starts it again: the embedded cluster
  (:mod:`mesh.ray._cluster`) never re-adds a node, so the state to reach is
  "the fog module serves on the remaining fog node" (its standby there is
  promoted), and the killed node's workers exit (the control plane reaps the
  raylet: ``mesh/ray/_cluster.py``). A real fog host's ``ray start`` under
  systemd would join as a new node; that is not simulated. With one fog
  raylet left it refuses (:class:`FaultUnavailableError`).
* ``disk_full``: the agent's cache directory (its ``state.json``, modules and
  ``outbox.db``) is a small tmpfs this harness mounts (once, with the agent
  stopped and started again around the mount); the fault fills it to the last
  byte, holds it full for a few seconds, then frees it. The agent must keep
  serving. Unmounted at :meth:`ChaosFaults.close`. Without the right to mount,
  :class:`FaultUnavailableError` (tests skip with its reason).
* ``outbox_corrupt``: ``kill -9`` the agent, garble ``outbox.db``'s header and
  its write-ahead log's (page 1 lives in the log until a checkpoint: the main
  file's alone is masked), so SQLite says "file is not a database"; start it
  again: it must start, serve, move the file aside (``outbox.db.corrupt-<time>``)
  and report it in its heartbeat's ``faults.quarantined`` (read over the broker:
  :meth:`ChaosFaults.agent_heartbeat`; ``mesh agents list`` shows it as a summary).
* ``mid_migration``: pin the fog module to the other fog node (a migration,
  ``POST /v1/placements/{module}/pin``), poll its phase and ``kill -9`` the
  control plane at the first phase before ``done`` seen, then start it again
  (the ``control_plane`` fault). The embedded Ray cluster dies with the control
  plane, so the target node is gone after the restart: recovery rolls the
  migration back (``mesh/control/_migration_recovery.py``), the module is
  restored on the fog tier. The pin names a node id that no longer exists; it
  is removed afterwards so later rounds plan freely.

Every process a fault kills or orphans is remembered by the mesh
(:meth:`ChaosMesh.track`) and ended, by pid, at its close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from edge_agent.protocol import Heartbeat
from mesh.cli._modules import ControlPlaneClient

if TYPE_CHECKING:
    from tests.support.chaos import ChaosMesh, Load

__all__ = ["MORE_FAULTS", "ChaosFaults", "FaultUnavailableError", "fault_under_load"]

#: The fault kinds this module injects (``ChaosMesh.inject`` dispatches them here).
MORE_FAULTS = ("raylet", "disk_full", "outbox_corrupt", "mid_migration")
#: The size of the agent's cache tmpfs: the tiny model, its state and outbox fit many times.
DISK_MB = 16
#: How long ``disk_full`` keeps the disk full.
FULL_S = 3.0
#: Phases of a migration that has not ended (``mesh/control/_store.py`` PHASES).
UNFINISHED = ("planned", "starting", "ready", "switched", "draining")
#: How long a pinned module's migration may take to appear and run before the fault gives up.
MIGRATION_LIMIT_S = 60.0
#: How long a killed process may take to be gone; how long to wait for a heartbeat.
GONE_LIMIT_S = 10.0
HEARTBEAT_LIMIT_S = 45.0


class FaultUnavailableError(Exception):
    """This host cannot inject the fault (e.g. no right to mount a tmpfs); the message says why."""


class ChaosFaults:
    """The faults of :data:`MORE_FAULTS` on one :class:`~tests.support.chaos.ChaosMesh`.

    Args:
        mesh: the started mesh.

    Attributes:
        killed_nodes: Ray node ids whose raylet a ``raylet`` fault killed.
        migration: the last ``mid_migration``'s record as it was when the control
            plane was killed (``id``, ``status``, ``to_node``...).
        quarantined: the ``outbox.db.corrupt-*`` files the last ``outbox_corrupt`` left.
    """

    def __init__(self, mesh: ChaosMesh) -> None:
        self.mesh = mesh
        self.killed_nodes: set[str] = set()
        self.migration: dict[str, Any] = {}
        self.quarantined: list[Path] = []
        #: The processes a killed raylet had started (its workers), by pid.
        self.raylet_orphans: dict[int, psutil.Process] = {}
        self._before_corrupt: set[Path] = set()
        self._admin = ""
        self._mounted: Path | None = None

    @property
    def agent_cache(self) -> Path:
        """The agent's ``--cache-dir`` (as :meth:`ChaosMesh.start` sets it)."""
        return self.mesh.workdir / "agent-cache"

    def inject(self, kind: str, load: Load, rng: random.Random) -> str:
        """Inject one fault of :data:`MORE_FAULTS`; what was done, in words.

        Raises:
            ValueError: ``kind`` is not one of :data:`MORE_FAULTS`.
            FaultUnavailableError: this host cannot inject it.
        """
        if kind == "raylet":
            return self.kill_raylet(rng)
        if kind == "disk_full":
            return self.fill_disk()
        if kind == "outbox_corrupt":
            return self.corrupt_outbox(rng)
        if kind == "mid_migration":
            return self.cut_migration(load, rng)
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {MORE_FAULTS}")

    # -- the control plane's REST API, as an admin

    def client(self) -> ControlPlaneClient:
        """A REST client of the running control plane, with an admin token (minted once)."""
        if not self._admin:
            token = self.mesh.cli("tokens", "create", "chaos-admin", "-s", "admin", "-s", "read")
            self._admin = token.strip()
        return ControlPlaneClient(self.mesh.gateway, self._admin, timeout_s=30.0)

    def replicas(self, module: str) -> list[dict[str, Any]]:
        """The module's replicas as ``/v1/modules`` lists them (``state``, ``node``, ``url``)."""
        modules = self.client().request("GET", "/v1/modules") or []
        return [r for m in modules if m["module"] == module for r in m.get("replicas", [])]

    def history(self, module: str) -> list[dict[str, Any]]:
        """The module's migrations, newest first."""
        query = urllib.parse.urlencode({"module": module, "limit": "20"})
        return list(self.client().request("GET", f"/v1/placements/history?{query}") or [])

    # -- raylet

    def fog_raylets(self) -> dict[str, psutil.Process]:
        """Fog node id -> its running raylet, found among the control plane's descendants."""
        fog = {n["node_id"] for n in self.mesh.cluster["nodes"] if n["tier"] == "fog"}
        found: dict[str, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(int(self.mesh.cluster["pid"])).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if proc.name() != "raylet":
                        continue
                    for arg in proc.cmdline():
                        node = arg.removeprefix("--node_id=")
                        if node != arg and node in fog:
                            found[node] = proc
        return found

    def kill_raylet(self, rng: random.Random) -> str:
        """``kill -9`` the raylet of the fog node serving the fog module (of another if none).

        Raises:
            FaultUnavailableError: fewer than two fog raylets run (the module
                would have nowhere to go).
        """
        raylets = self.fog_raylets()
        if len(raylets) < 2:
            raise FaultUnavailableError(
                f"raylet: {len(raylets)} fog raylet(s) running; killing one must leave one"
            )
        serving = {r["node"] for r in self.replicas(self.mesh.FOG) if r["state"] == "serving"}
        chosen = sorted(serving & raylets.keys()) or sorted(raylets)
        node = rng.choice(chosen)
        raylet = raylets[node]
        self.mesh.track(raylet.pid)  # its workers outlive it a moment, orphaned
        workers = self._children(raylet)
        raylet.send_signal(signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            raylet.wait(GONE_LIMIT_S)
        self.killed_nodes.add(node)
        self.raylet_orphans = {p.pid: p for p in workers}
        return f"raylet {raylet.pid} of fog node {node[:8]}"

    def live_orphans(self) -> dict[int, str]:
        """The killed raylet's workers still running (zombies are not): pid -> command line."""
        alive = {}
        for pid, proc in self.raylet_orphans.items():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive[pid] = " ".join(proc.cmdline())[:160]
        return alive

    @staticmethod
    def _children(proc: psutil.Process) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return list(proc.children(recursive=True))
        return []

    # -- the agent's disk

    def _kill_agent(self) -> int:
        pid = self.mesh.agent_pid
        assert pid is not None, "the agent is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + GONE_LIMIT_S
        while self.mesh.agent_pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # agent_pid polls (and so reaps) the process
        assert self.mesh.agent_pid is None, f"agent {pid} outlived SIGKILL"
        return pid

    def restart_agent(self) -> int:
        """``kill -9`` the agent and start it again; the killed pid."""
        pid = self._kill_agent()
        self.mesh.start_agent()
        return pid

    def mount_disk(self) -> None:
        """Move the agent's cache onto a :data:`DISK_MB` MiB tmpfs (stops and starts the agent).

        Idempotent; :meth:`close` unmounts it.

        Raises:
            FaultUnavailableError: not root, or ``mount`` refused (the agent keeps its old disk).
        """
        if self._mounted is not None:
            return
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise FaultUnavailableError("disk_full: mounting a tmpfs needs root and mount(8)")
        cache = self.agent_cache
        stash = cache.with_name(cache.name + ".stash")
        self._kill_agent()
        try:
            shutil.copytree(cache, stash, dirs_exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(cache)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                raise FaultUnavailableError(f"disk_full: mount failed: {done.stderr.strip()}")
            self._mounted = cache
            shutil.copytree(stash, cache, dirs_exist_ok=True)
            shutil.rmtree(stash)
        finally:
            self.mesh.start_agent()

    def fill_disk(
        self, full_s: float = FULL_S, *, while_full: Callable[[], object] | None = None
    ) -> str:
        """Fill the agent's cache tmpfs to the last byte for ``full_s`` seconds, then free it.

        ``while_full`` runs once the disk is full, before the ``full_s`` wait
        (e.g. :meth:`restart_agent`: a device rebooting with its disk full).
        """
        self.mount_disk()
        filler = self.agent_cache / "chaos-filler"
        written = 0
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            block = b"\0" * 4096
            for _ in range(DISK_MB * 256 + 16):  # bounded: the tmpfs holds DISK_MB * 256 blocks
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            else:
                raise AssertionError(f"{filler}: {written} bytes written and not full")
            if while_full is not None:
                while_full()
            time.sleep(full_s)
        finally:
            os.close(fd)
            filler.unlink(missing_ok=True)
        return f"agent {self.mesh.AGENT}'s disk full ({written >> 20} MiB filled) for {full_s:g} s"

    def disk_free_bytes(self) -> int:
        """Free bytes on the agent's cache filesystem."""
        return shutil.disk_usage(self.agent_cache).free

    def corrupt_outbox(self, rng: random.Random) -> str:
        """``kill -9`` the agent, garble ``outbox.db``'s header (and its log's), start it again."""
        outbox = self.agent_cache / "outbox.db"
        self._before_corrupt = set(self.agent_cache.glob("outbox.db.corrupt-*"))
        pid = self._kill_agent()
        try:
            assert outbox.is_file(), f"{outbox}: no outbox to corrupt"
            with outbox.open("r+b") as f:
                f.write(rng.randbytes(100))  # the 100-byte SQLite header
            # Page 1 is in the write-ahead log until a checkpoint, and SQLite reads it
            # from there: the log's header too, or the damage stays masked.
            wal = outbox.with_name(outbox.name + "-wal")
            if wal.is_file() and wal.stat().st_size >= 32:
                with wal.open("r+b") as f:
                    f.write(rng.randbytes(32))
        finally:
            self.mesh.start_agent()
        return f"agent {pid} killed, {outbox.name} garbled, agent started again"

    def quarantined_files(self) -> list[Path]:
        """``outbox.db.corrupt-*`` files the last :meth:`corrupt_outbox` caused (waits up to 30 s)."""
        deadline = time.monotonic() + 30.0
        while True:
            found = set(self.agent_cache.glob("outbox.db.corrupt-*")) - self._before_corrupt
            main = sorted(p for p in found if not p.name.endswith(("-wal", "-shm", "-journal")))
            if main or time.monotonic() > deadline:
                self.quarantined = main
                return main
            time.sleep(0.2)

    def agent_heartbeat(
        self, accept: Callable[[Heartbeat], bool], timeout_s: float = HEARTBEAT_LIMIT_S
    ) -> Heartbeat:
        """The agent's next heartbeat that ``accept`` takes, read over the broker.

        Connects as the control plane does (its ``mesh-control`` login), as
        ``mesh agents list`` does for health (which shows the heartbeat's ``faults``
        and ``outbox`` as a summary; the REST API does not).

        Raises:
            AssertionError: none accepted within ``timeout_s`` (the last one seen in the message).
        """
        from mesh.edge._bus import EdgeBus
        from mesh.edge._enrolment import EdgeSettings, control_plane_credentials

        broker = str(self.mesh.cluster["broker_url"])
        creds = control_plane_credentials(EdgeSettings(data_dir=self.mesh.data, broker_url=broker))
        bus = EdgeBus(broker, username=creds.username, password=creds.password, session_expiry_s=0)
        bus.start(timeout_s=10.0)
        try:

            def last() -> Heartbeat | None:
                view = bus.agent(self.mesh.AGENT)
                return view.last_heartbeat if view is not None else None

            def ok() -> bool:
                beat = last()
                return beat is not None and accept(beat)

            if not bus.wait_until(ok, timeout_s):
                raise AssertionError(f"no accepted heartbeat in {timeout_s:g} s; last: {last()}")
            beat = last()
            assert beat is not None
            return beat
        finally:
            bus.stop()

    # -- mid-migration

    def cut_migration(self, load: Load, rng: random.Random) -> str:
        """Pin the fog module to another fog node; ``kill -9`` the control plane mid-migration.

        Raises:
            FaultUnavailableError: no other fog node to move to.
            AssertionError: the migration never showed an unfinished phase.
        """
        mesh, module = self.mesh, self.mesh.FOG
        serving = {r["node"] for r in self.replicas(module) if r["state"] == "serving"}
        targets = sorted(set(self.fog_raylets()) - serving)
        if not targets:
            raise FaultUnavailableError("mid_migration: no other fog node to move the module to")
        target = rng.choice(targets)
        known = {r["id"] for r in self.history(module)}
        path = f"/v1/placements/{urllib.parse.quote(module, safe='')}/pin"
        self.client().request("POST", path, {"node": target})
        record = self._unfinished_migration(module, known)
        self.migration = record
        what = mesh.inject("control_plane", load, rng)
        with contextlib.suppress(Exception):  # the restarted cluster has new node ids
            self.client().request("DELETE", path)
        return f"{what}, migration {record['id']} of {module} {record['status']}"

    def migration_ended(self, limit_s: float = MIGRATION_LIMIT_S) -> dict[str, Any]:
        """The last cut migration's record once it has ended (resolved after the restart).

        Raises:
            AssertionError: it has not ended within ``limit_s``.
        """
        deadline = time.monotonic() + limit_s
        while True:
            records = {r["id"]: r for r in self.history(self.mesh.FOG)}
            record = records.get(self.migration["id"])
            if record is not None and record["status"] not in UNFINISHED:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"migration unresolved after {limit_s:g} s: {record}")
            time.sleep(0.5)

    def _unfinished_migration(self, module: str, known: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + MIGRATION_LIMIT_S
        while time.monotonic() < deadline:
            for record in self.history(module):
                if record["id"] in known:
                    continue
                if record["status"] in UNFINISHED:
                    return record
                raise AssertionError(f"the migration ended before the kill: {record}")
            time.sleep(0.05)
        raise AssertionError(f"no migration of {module} within {MIGRATION_LIMIT_S:g} s")

    def replica_processes(self) -> dict[int, set[int]]:
        """Replica actor processes under the control plane: pid -> the ports it listens on."""
        out: dict[int, set[int]] = {}
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(int(self.mesh.cluster["pid"])).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    title = " ".join(proc.cmdline())
                    if not title.startswith("ray::ReplicaActor"):
                        continue
                    out[proc.pid] = {
                        int(c.laddr[1])
                        for c in proc.net_connections(kind="tcp")
                        if c.status == psutil.CONN_LISTEN and len(c.laddr) == 2
                    }
        return out

    def replicas_settled(self, limit_s: float = 90.0) -> dict[int, set[int]]:
        """Wait until every replica process is one ``/v1/modules`` lists, on its port.

        No replica is orphaned: the replica actor processes under the control
        plane are as many as the replicas listed with a URL, each URL's port is
        one of theirs, and none is on a node a ``raylet`` fault killed.

        Raises:
            AssertionError: not so within ``limit_s`` (the last mismatch in the message).
        """
        deadline = time.monotonic() + limit_s
        while True:
            listed = self.replicas(self.mesh.FOG)
            processes = self.replica_processes()
            wrong = self._unsettled(listed, processes)
            if not wrong:
                return processes
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas not settled after {limit_s:g} s: {wrong}; {listed}")
            time.sleep(0.5)

    def _unsettled(self, listed: list[dict[str, Any]], processes: dict[int, set[int]]) -> list[str]:
        ports = {port for found in processes.values() for port in found}
        urls = [r["url"] for r in listed if r.get("url")]
        wrong = [f"{url}: no replica process listens" for url in urls
                 if urllib.parse.urlsplit(url).port not in ports]  # fmt: skip
        if len(processes) != len(urls):
            wrong.append(f"{len(processes)} replica process(es) for {len(urls)} listed")
        lost = [r["replica_id"] for r in listed if r.get("node") in self.killed_nodes]
        if lost:
            wrong.append(f"listed on a killed node: {lost}")
        return wrong

    # -- tear-down

    def close(self) -> None:
        """Unmount the agent's tmpfs (the agent must be stopped), lazily if it is busy."""
        mounted, self._mounted = self._mounted, None
        if mounted is None:
            return
        for lazily in ([], ["-l"]):  # -l: detach now, free once the last file closes
            done = subprocess.run(
                ["umount", *lazily, str(mounted)], capture_output=True, timeout=30, check=False
            )
            if done.returncode == 0:
                return


def fault_under_load(
    mesh: ChaosMesh, kind: str, *, calm_s: float = 2.0, deadline_s: float = 2.0
) -> tuple[dict[str, Any], str]:
    """Steady load on both modules, one fault of ``kind``, serving again; the tallies, what."""
    from tests.support.chaos import Load

    load = Load(mesh.gateway, mesh.token, [mesh.FOG, mesh.EDGE], deadline_s=deadline_s).start()
    try:
        time.sleep(calm_s)
        what = mesh.inject(kind, load, random.Random(kind))
        mesh.wait_serving(load)
        time.sleep(calm_s)
    finally:
        load.stop()
    return load.snapshot(), what
