"""Processes a scenario starts: edge agents behind their own emulated links, and CPU hogs.

Each agent is a real ``python -m edge_agent`` process that reaches the broker
through its own :class:`~mesh.scenario._linkem.LinkEmulator`, so a fault can slow one
agent's link without touching the others. A :class:`CpuHog` is a set of real
processes burning CPU on chosen cores (``sched_setaffinity``), the way a
runaway job on a device would.

Every process is tracked by pid and ended by pid; :meth:`AgentFleet.close`
and :meth:`CpuHog.stop` are idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh.scenario._linkem import LinkEmulator, LinkShape

__all__ = ["AgentFleet", "AgentHandle", "CpuHog", "DeviceCgroup", "pin_process"]

logger = logging.getLogger(__name__)

# A runaway job at high priority where allowed (root): inside a device's CPU budget it
# takes most of the device from the agent; outside one it takes a whole core.
_BURN = (
    "import contextlib, os\n"
    "with contextlib.suppress(OSError):\n"
    "    os.nice(-10)\n"
    "while True:\n"
    "    pass\n"
)
_CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller (CFS quota)
_PERIOD_US = 100_000


class DeviceCgroup:
    """A CPU budget for one emulated device: a cgroup v1 ``cpu`` group with a CFS quota.

    Everything in the group (the agent, and a hog started "on the device")
    shares ``cpus`` cores' worth of time, as on a small device; processes
    outside are untouched. Where cgroups cannot be written (not root, no v1
    cpu controller) :meth:`create` returns None and callers fall back to
    pinning cores.
    """

    def __init__(self, path: Path) -> None:
        """Wrap a created group."""
        self.path = path

    @classmethod
    def create(cls, name: str, cpus: float) -> DeviceCgroup | None:
        """A new group ``fogmesh-<pid>-<name>`` limited to ``cpus`` cores, or None."""
        path = _CPU_CGROUP / f"fogmesh-{os.getpid()}-{name}"
        try:
            path.mkdir(exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * _PERIOD_US))))
        except OSError as exc:
            logger.info("no cgroup CPU budget for %s (%s); pinning cores instead", name, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    def add(self, pid: int) -> bool:
        """Move a process (all its threads) into the group."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            logger.warning("cannot move pid %d into %s: %s", pid, self.path.name, exc)
            return False
        return True

    def remove(self) -> None:
        """Move what is left back to the root group and delete the group."""
        with contextlib.suppress(OSError):
            for line in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (_CPU_CGROUP / "cgroup.procs").write_text(line)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def pin_process(pid: int, cores: Sequence[int]) -> bool:
    """Pin ``pid`` (and its threads) to ``cores``; False where the platform cannot."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    ok = False
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, set(cores))
            ok = True
    return ok


class CpuHog:
    """``workers`` processes spinning on ``cores`` until :meth:`stop`.

    Args:
        cores: the CPUs to burn (None: any).
        workers: processes to start; several per core starve a process pinned
            there of most of its time slices.
    """

    def __init__(
        self,
        cores: Sequence[int] | None = None,
        *,
        workers: int = 2,
        cgroup: DeviceCgroup | None = None,
    ) -> None:
        """Nothing starts before :meth:`start`; ``cgroup`` puts the burners on a device."""
        self.cores = tuple(cores) if cores is not None else None
        self.workers = workers
        self.cgroup = cgroup
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        """Pids of the burning processes."""
        return [p.pid for p in self._procs]

    def start(self) -> CpuHog:
        """Start the burners (pinned when ``cores`` was given)."""
        for _ in range(self.workers):
            proc = subprocess.Popen(
                [sys.executable, "-c", _BURN],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self.cgroup is not None:
                self.cgroup.add(proc.pid)
            elif self.cores:
                pin_process(proc.pid, self.cores)
            self._procs.append(proc)
        logger.info(
            "cpu hog: %d burner(s) on cores %s: pids %s", self.workers, self.cores, self.pids
        )
        return self

    def stop(self) -> None:
        """Kill the burners (by pid) and reap them."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if self._procs:
            logger.info("cpu hog: stopped pids %s", self.pids)
        self._procs.clear()

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(slots=True)
class AgentHandle:
    """One agent process, its link and its log."""

    agent_id: str
    site: str
    args: list[str]
    log_path: Path
    link: LinkEmulator
    cores: tuple[int, ...] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    cgroup: DeviceCgroup | None = None

    @property
    def pid(self) -> int | None:
        """The running process's pid (None when stopped)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.pid is not None


class AgentFleet:
    """Edge agent processes, each through its own emulated link to the broker.

    Args:
        broker: the broker's ``(host, port)``.
        work_dir: logs and per-agent caches go under it.
        prefix: MQTT topic prefix.
        public_key: the control plane's artifact-signing public key (base64).
        options: more agent flags for every agent (``{"heartbeat_period_s": 2}``).
    """

    def __init__(
        self,
        broker: tuple[str, int],
        work_dir: Path,
        *,
        prefix: str,
        public_key: str | None,
        options: Mapping[str, object] | None = None,
    ) -> None:
        """Nothing starts before :meth:`add`."""
        self._broker = broker
        self._dir = work_dir
        self._prefix = prefix
        self._public_key = public_key
        self._options = dict(options or {})
        self.agents: dict[str, AgentHandle] = {}

    def add(
        self,
        agent_id: str,
        site: str,
        *,
        link: LinkShape | None = None,
        cores: Sequence[int] | None = None,
        env: Mapping[str, str] | None = None,
        cpus: float | None = None,
    ) -> AgentHandle:
        """Start an agent behind a new link emulator (``link`` shapes both directions).

        ``env`` adds environment variables (``EDGE_AGENT_PIPELINES``...);
        ``cpus`` gives the agent a device's CPU budget (:class:`DeviceCgroup`),
        else it is pinned to ``cores``.
        """
        shape = link or LinkShape()
        emulator = LinkEmulator(self._broker, up=shape, down=shape).start()
        host, port = emulator.address
        agent_dir = self._dir / "agents" / agent_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "--id",
            agent_id,
            "--site",
            site,
            "--broker",
            f"mqtt://{host}:{port}",
            "--prefix",
            self._prefix,
            "--cache-dir",
            str(agent_dir / "cache"),
        ]
        if self._public_key:
            args += ["--public-key", self._public_key]
        for name, value in self._options.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        handle = AgentHandle(
            agent_id,
            site,
            args,
            agent_dir / "agent.log",
            emulator,
            tuple(cores) if cores is not None else None,
            env=dict(env or {}),
            cgroup=DeviceCgroup.create(agent_id, cpus) if cpus is not None else None,
        )
        self.agents[agent_id] = handle
        self.start(agent_id)
        return handle

    def start(self, agent_id: str) -> int:
        """(Re)start the agent's process; returns its pid."""
        h = self.agents[agent_id]
        if h.alive:
            assert h.pid is not None
            return h.pid
        log = h.log_path.open("ab")
        try:
            h.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", *h.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **h.env},
            )
        finally:
            log.close()
        if h.cgroup is not None:
            h.cgroup.add(h.proc.pid)
        elif h.cores:
            # Threads start after exec; pin the main one now (children inherit it).
            pin_process(h.proc.pid, h.cores)
        logger.info("agent %s (site %s): pid %d", agent_id, h.site, h.proc.pid)
        return h.proc.pid

    def kill(self, agent_id: str) -> None:
        """SIGKILL the agent (a crash); :meth:`start` brings it back."""
        h = self.agents[agent_id]
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(5)
            h.restarts += 1
            logger.info("agent %s: killed (pid %d)", agent_id, h.proc.pid)

    def stop(self, agent_id: str, timeout_s: float = 10.0) -> None:
        """SIGTERM the agent and wait (it publishes ``offline`` on the way out)."""
        h = self.agents[agent_id]
        if h.proc is None or h.proc.poll() is not None:
            return
        h.proc.send_signal(signal.SIGTERM)
        try:
            h.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait(5)

    def set_link(
        self,
        agent_id: str,
        *,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        rate_kbps: float | None = None,
    ) -> None:
        """Change the agent's link live (both directions), e.g. ``delay_ms=40``."""
        self.agents[agent_id].link.set(delay_ms=delay_ms, jitter_ms=jitter_ms, rate_kbps=rate_kbps)

    def log_tail(self, agent_id: str, lines: int = 20) -> str:
        """The last lines of the agent's log."""
        path = self.agents[agent_id].log_path
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_alive(self, timeout_s: float) -> list[str]:
        """Agents whose process died within ``timeout_s`` of being started (empty: all up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [a for a, h in self.agents.items() if h.proc is not None and not h.alive]
            if dead:
                return dead
            time.sleep(0.1)
        return []

    def close(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL) and its link emulator."""
        for agent_id in list(self.agents):
            with contextlib.suppress(Exception):
                self.stop(agent_id, timeout_s=5.0)
        for h in self.agents.values():
            with contextlib.suppress(Exception):
                h.link.stop()
            if h.cgroup is not None:
                h.cgroup.remove()
        self.agents.clear()

    def __enter__(self) -> AgentFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
