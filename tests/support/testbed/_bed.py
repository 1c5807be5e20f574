"""The test bed: hosts as network namespaces on one bridge, delays between groups, clean exit.

Layout (all names start with the run's tag ``fmtb-<pid>-<hex4>``, so two runs
or a leftover never clash; nothing is made in the machine's own namespace)::

    namespace <tag> (the hub): bridge br0 ── p0 ... pN   (veth ends)   delay router process
                                              │      │
    namespace <tag>-cloud:   eth0 10.77.0.10/24 ... namespace <tag>-client: eth0 10.77.0.40/24
                             dly0 (TUN) for the delayed peers (see _delay.py)

Hosts have no default route: nothing they send leaves the test subnet.
Everything is removed by :meth:`TestBed.close`: on leaving the ``with`` block,
at interpreter exit (atexit), on SIGTERM or SIGHUP (handled, then passed on),
and, after a ``kill -9`` of the owner, by the next test bed's :func:`sweep`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from mesh.scenario._nodes import Link
from tests.support.testbed import _netns
from tests.support.testbed._plan import DEFAULT_HOSTS, DEFAULT_SUBNET, HostSpec, Plan, make_plan

__all__ = ["TestBed"]

ROOT = Path(__file__).resolve().parents[3]
_ROUTER_START_S = 30.0
_STOP_S = 5.0
_TABLE = 77  # the routing table of packets the delay router hands back
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class TestBed:
    """Hosts on one machine: a network namespace each, joined by a bridge, with link delays.

    Args:
        hosts: the hosts (default: cloud, fog-0, fog-1, edge-1..3, client).
        links: a scenario's ``links:`` (groups or host names as ends).
        subnet: the private test subnet.
        seed: seed of the jitter draws.
        queue_packets: packets a delayed path may hold before it drops.

    Example:
        >>> with TestBed(links=scenario.links) as bed:            # doctest: +SKIP
        ...     server = bed.spawn("cloud", ["python", "-m", "http.server", "8000"])
        ...     bed.run("edge-1", ["curl", f"http://{bed.address('cloud')}:8000/"])
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        hosts: Sequence[HostSpec] = DEFAULT_HOSTS,
        links: Sequence[Link] = (),
        *,
        subnet: str = DEFAULT_SUBNET,
        seed: int = 0,
        queue_packets: int = 1000,
    ) -> None:
        if queue_packets < 1:
            raise ValueError(f"queue_packets must be >= 1, got {queue_packets}")
        self.plan: Plan = make_plan(hosts, links, subnet=subnet)
        self.tag = f"{_netns.PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self.workdir: Path | None = None
        self.router_counts: dict[str, int] | None = None
        self._seed = seed
        self._queue_packets = queue_packets
        self._procs: list[subprocess.Popen[Any]] = []
        #: Every command run or started in a host, as given (``env`` prefixes included):
        #: what README's multi-host commands are checked against.
        self.ran: list[list[str]] = []
        self._router: subprocess.Popen[str] | None = None
        self._made: list[str] = []  # namespaces, in the order made
        self._previous: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._closing = False
        self._pending: int | None = None  # a signal that arrived while closing
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ names

    @property
    def hub(self) -> str:
        """The hub namespace (the bridge, the delay router)."""
        return self.tag

    def namespace(self, host: str) -> str:
        """The namespace of ``host`` (for ``ip netns exec``)."""
        return f"{self.tag}-{self.plan.host(host).name}"

    def address(self, host: str) -> str:
        """The address of ``host`` on the test subnet."""
        return self.plan.addresses[self.plan.host(host).name]

    def namespaces(self) -> list[str]:
        """Every namespace of this test bed that exists now."""
        return _netns.list_namespaces(self.tag)

    def pids(self) -> list[int]:
        """Every process running in this test bed's namespaces (the delay router too)."""
        return sorted({p for ns in self.namespaces() for p in _netns.pids(ns) if _netns.alive(p)})

    # ------------------------------------------------------------------ life

    def start(self) -> TestBed:
        """Make the namespaces, bridge, veths, routes and the delay router; sweep leftovers first.

        Raises:
            NetnsError: an ``ip`` command failed (what was made is removed again).
        """
        if self._started:
            raise RuntimeError(f"test bed {self.tag} is already started")
        self._started = True
        _netns.sweep()
        self._guard()
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
            self._make_hub()
            for i, spec in enumerate(self.plan.hosts):
                self._make_host(i, spec)
            if any(self.plan.paths.values()):
                self._start_router()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """End every process, delete every namespace and the work directory; idempotent.

        Raises:
            NetnsError: something could not be removed (everything else still is).
        """
        with self._lock:  # reentrant: a signal may arrive while this thread closes
            if self._closed or self._closing:
                return
            self._closing = True
            problems: list[str] = []
            try:
                for proc in reversed(self._procs):
                    _stop(proc)
                self._stop_router()
                for name in reversed(self._made):
                    try:
                        _netns.delete(name)
                    except _netns.NetnsError as exc:
                        problems.append(str(exc))
                if self.workdir is not None:
                    shutil.rmtree(self.workdir, ignore_errors=True)
            finally:
                self._closed = True
                self._closing = False
                pending, previous = self._pending, dict(self._previous)
                self._unguard()
            if pending is not None:  # a signal came during teardown: pass it on now
                _pass_on(pending, previous.get(pending, signal.SIG_DFL))
            if problems:
                raise _netns.NetnsError("; ".join(problems))

    def __enter__(self) -> TestBed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ processes

    def spawn(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``; it is ended (by pid) when the test bed closes.

        ``PYTHONPATH`` gets the repository root in front, so ``python -m tests...``
        works inside hosts; other keyword arguments go to :class:`subprocess.Popen`.
        """
        self._need_running()
        self.ran.append([str(a) for a in argv])
        popen["env"] = _env(popen.get("env"))
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(host), *argv], **popen
        )
        self._procs.append(proc)
        return proc

    def run(
        self, host: str, argv: Sequence[str], *, timeout_s: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to its end and return its output (text)."""
        self._need_running()
        self.ran.append([str(a) for a in argv])
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
            env=_env(None),
        )

    def set_link(self, a: str, b: str, **shape: float | None) -> None:
        """Change the delayed path between hosts ``a`` and ``b`` (both ways), live.

        Only paths delayed from the start can change (they go through the delay
        router); ``shape`` has ``delay_ms``, ``jitter_ms``, ``rate_kbps``.
        """
        self._need_running()
        unknown = set(shape) - {"delay_ms", "jitter_ms", "rate_kbps"}
        if unknown:
            raise ValueError(
                f"set_link takes delay_ms, jitter_ms, rate_kbps; got {sorted(unknown)}"
            )
        paths = {name: dict(p) for name, p in self.plan.paths.items()}
        for x, y in ((a, b), (b, a)):
            dst = self.address(y)
            if dst not in paths[self.plan.host(x).name]:
                raise ValueError(f"the path {x} -> {y} has no delay declared, so it cannot change")
            paths[x][dst] = dataclasses.replace(paths[x][dst], **shape)  # type: ignore[arg-type]
        self.plan = Plan(self.plan.subnet, self.plan.hosts, self.plan.addresses, paths)
        self._write_router_config()
        assert self._router is not None
        self._router.send_signal(signal.SIGHUP)
        if not _read_line(self._router, "reloaded", _ROUTER_START_S):
            raise _netns.NetnsError(f"the delay router did not take the new links: {self.workdir}")

    def leftovers(self, pids: Sequence[int] = ()) -> list[str]:
        """What of this test bed still exists: namespaces, work directory, running ``pids``."""
        found = [f"namespace {n}" for n in _netns.list_namespaces(self.tag)]
        if self.workdir is not None and self.workdir.exists():
            found.append(f"directory {self.workdir}")
        found += [f"pid {p}" for p in pids if _netns.alive(p)]
        found += [
            f"link {line}" for line in _netns.ip("-o", "link").splitlines() if self.tag in line
        ]
        return found

    # ------------------------------------------------------------------ building

    def _make_hub(self) -> None:
        _netns.add(self.hub)
        self._made.append(self.hub)
        _netns.ip_batch(self.hub, ["link add br0 type bridge", "link set br0 up"])

    def _make_host(self, index: int, spec: HostSpec) -> None:
        ns = self.namespace(spec.name)
        _netns.add(ns)
        self._made.append(ns)
        _netns.ip_batch(
            self.hub,
            [
                f"link add p{index} type veth peer name eth0 netns {ns}",
                f"link set p{index} master br0",
                f"link set p{index} up",
            ],
        )
        addr, prefix = self.plan.addresses[spec.name], self.plan.subnet.prefixlen
        commands = [f"addr add {addr}/{prefix} dev eth0", "link set eth0 up"]
        sysctls = {"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/eth0/rp_filter": "0"}
        paths = self.plan.paths[spec.name]
        if paths:
            commands += ["tuntap add dev dly0 mode tun", "link set dly0 up"]
            commands += [f"route add {dst}/32 dev dly0 src {addr}" for dst in paths]
            commands += [
                f"route add {self.plan.subnet} dev eth0 src {addr} table {_TABLE}",
                f"rule add iif dly0 lookup {_TABLE} pref 100",
            ]
            # Packets coming back from the router carry this host's own source
            # address: accept them on dly0 (accept_local) and forward them.
            sysctls |= {
                "net/ipv4/ip_forward": "1",
                "net/ipv4/conf/dly0/forwarding": "1",
                "net/ipv4/conf/dly0/rp_filter": "0",
                "net/ipv4/conf/dly0/accept_local": "1",
            }
        _netns.ip_batch(ns, commands)
        _netns.write_sysctls(ns, sysctls)

    def _write_router_config(self) -> Path:
        assert self.workdir is not None
        config = {
            "seed": self._seed,
            "queue_packets": self._queue_packets,
            "taps": [
                {
                    "netns": self.namespace(name),
                    "device": "dly0",
                    "paths": {
                        dst: {
                            "delay_ms": s.delay_ms,
                            "jitter_ms": s.jitter_ms,
                            "rate_kbps": s.rate_kbps,
                        }
                        for dst, s in paths.items()
                    },
                }
                for name, paths in self.plan.paths.items()
                if paths
            ],
        }
        path = self.workdir / "delay.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(path)  # the router re-reads it on SIGHUP: never half-written
        return path

    def _start_router(self) -> None:
        assert self.workdir is not None
        config = self._write_router_config()
        log = (self.workdir / "delay.log").open("w")
        with log:
            self._router = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.hub,
                    sys.executable,
                    "-m",
                    "tests.support.testbed._delay",
                    str(config),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=_env(None),
            )
        if not _read_line(self._router, "ready", _ROUTER_START_S):
            _stop(self._router)
            detail = (self.workdir / "delay.log").read_text()[-2000:]
            raise _netns.NetnsError(
                f"the delay router did not start within {_ROUTER_START_S:.0f} s: {detail}"
            )

    def _stop_router(self) -> None:
        router, self._router = self._router, None
        if router is None:
            return
        router.terminate()
        try:
            out, _ = router.communicate(timeout=_STOP_S)
        except subprocess.TimeoutExpired:
            router.kill()
            out, _ = router.communicate(timeout=_STOP_S)
        with contextlib.suppress(json.JSONDecodeError, IndexError):
            self.router_counts = json.loads(out.strip().splitlines()[-1])

    def _need_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError(f"test bed {self.tag} is not running (start it, or use `with`)")

    # ------------------------------------------------------------------ exit paths

    def _guard(self) -> None:
        """Close on interpreter exit and on SIGTERM/SIGHUP (then pass the signal on)."""
        atexit.register(self.close)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still holds
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _unguard(self) -> None:
        atexit.unregister(self.close)
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._closing:  # close() runs below this frame: it passes the signal on when done
            self._pending = signum
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            self.close()  # restores the previous handler
        _pass_on(signum, previous, frame)


def _pass_on(signum: int, previous: Any, frame: FrameType | None = None) -> None:
    """Give a signal to the handler that was there before the test bed's."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _read_line(proc: subprocess.Popen[str], expected: str, timeout_s: float) -> bool:
    """Whether ``proc`` prints the line ``expected`` next, within ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return bool(sel.select(timeout_s)) and proc.stdout.readline() == expected + "\n"


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End one process by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(_STOP_S)


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    paths = [str(ROOT), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
    base["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return base
