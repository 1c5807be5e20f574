"""The delay router: one process holding every host's TUN device, delaying what crosses groups.

Why a TUN per host (and not a proxy per port, or netem): the kernel here has no
netem, and a TCP proxy (:mod:`mesh.scenario._linkem`) needs to know every port
in advance and changes the peer address a server sees. Here each host routes
the addresses of hosts in other groups to its own TUN device ``dly0``; this
process reads each packet there, holds it for the path's delay (plus jitter,
paced by its rate: the same :class:`~mesh.scenario._linkem._Pacer` model as the
single-host link emulator), and writes it back into the same TUN, from where the
host's kernel forwards it out of ``eth0`` to the bridge (policy rule ``iif dly0``
→ table 77, which has only the subnet on ``eth0``)::

    app ─► route 10.77.0.10/32 dev dly0 ─► [this process: hold delay_ms] ─► dly0 ─► eth0 ─► bridge

Every host delays only what it sends, so a round trip between two groups pays
the one-way delay twice, as with a real link. Per path (host to peer) packets
keep their order; a path holding more than ``queue_packets`` drops the next one
(a router's full queue: TCP retransmits). IPv4 only.

It runs in the test bed's hub namespace (so sweeping the test bed ends it) and
enters each host's namespace only to open that host's TUN. Run by the harness::

    ip netns exec fmtb-<pid>-<hex>  python -m tests.support.testbed._delay CONFIG.json

``CONFIG.json``: ``{"taps": [{"netns": NAME, "device": "dly0", "paths":
{"10.77.0.10": {"delay_ms": 40, "jitter_ms": 5, "rate_kbps": null}}}],
"seed": 0, "queue_packets": 1000}``. SIGHUP re-reads the paths (live link
changes; it prints ``reloaded`` when done); SIGTERM ends it and prints its counts
as one JSON line.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import itertools
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.scenario._linkem import LinkShape, _Pacer

__all__ = ["main"]

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/var/run/netns"
_READS_PER_WAKEUP = 64  # per TUN: one busy host cannot starve the others
_IDLE_S = 0.5


@dataclass(slots=True)
class _Tap:
    """One host's TUN: its fd, the shapes of its delayed paths, a pacer and a count per path."""

    netns: str
    fd: int
    paths: dict[str, LinkShape]
    pacers: dict[str, _Pacer] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Counts:
    forwarded: int = 0
    dropped_queue: int = 0
    unrouted: int = 0
    write_errors: int = 0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _open_tun(netns: str, device: str, home: int) -> int:
    """Attach to TUN ``device`` inside namespace ``netns``; the calling thread ends up at ``home``."""
    target = os.open(f"{_NETNS_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifreq = struct.pack("16sH22x", device.encode(), _IFF_TUN | _IFF_NO_PI)
            fcntl.ioctl(fd, _TUNSETIFF, ifreq)
        except OSError:
            os.close(fd)
            raise
        return fd
    finally:
        _setns(home)
        os.close(target)


def _paths(raw: dict[str, Any]) -> dict[str, LinkShape]:
    return {dst: LinkShape(**shape) for dst, shape in raw.items()}


def _destination(packet: bytes) -> str | None:
    """The IPv4 destination of a packet, or None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return socket.inet_ntoa(packet[16:20])


class _Router:
    """The event loop: read packets, hold each until its arrival time, write it back."""

    def __init__(self, config: Path) -> None:
        self._config = config
        conf = json.loads(config.read_text())
        self._rng = random.Random(conf.get("seed"))
        self._cap = int(conf.get("queue_packets", 1000))
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._taps = [
                _Tap(t["netns"], _open_tun(t["netns"], t["device"], home), _paths(t["paths"]))
                for t in conf["taps"]
            ]
        finally:
            os.close(home)
        self._heap: list[tuple[float, int, _Tap, str, bytes]] = []
        self._seq = itertools.count()
        self.counts = _Counts()
        self._stop = False
        self._reload = False

    def reload(self) -> None:
        """Take the paths from the config file again (SIGHUP)."""
        conf = json.loads(self._config.read_text())
        by_ns = {t["netns"]: t for t in conf["taps"]}
        for tap in self._taps:
            if tap.netns in by_ns:
                tap.paths = _paths(by_ns[tap.netns]["paths"])

    def run(self) -> None:
        wake_r, wake_w = socket.socketpair()
        for end in (wake_r, wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ, None)
        for tap in self._taps:
            sel.register(tap.fd, selectors.EVENT_READ, tap)
        print("ready", flush=True)
        while not self._stop:  # until SIGTERM: the router's lifetime is the test bed's
            if self._reload:
                self._reload = False
                self.reload()
                print("reloaded", flush=True)
            self._deliver_due()
            timeout = max(self._heap[0][0] - time.monotonic(), 0.0) if self._heap else _IDLE_S
            for key, _ in sel.select(timeout):
                if key.data is None:  # a signal arrived: its flag is set; drain the wakeup bytes
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                else:
                    self._read(key.data)

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self._stop = True

    def _on_reload(self, _signum: int, _frame: object) -> None:
        self._reload = True

    def _read(self, tap: _Tap) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                packet = os.read(tap.fd, 65536)
            except BlockingIOError:
                return
            dst = _destination(packet)
            shape = tap.paths.get(dst) if dst is not None else None
            if dst is None or shape is None:
                self.counts.unrouted += 1
                continue
            if tap.queued.get(dst, 0) >= self._cap:
                self.counts.dropped_queue += 1
                continue
            pacer = tap.pacers.get(dst)
            if pacer is None:
                pacer = tap.pacers[dst] = _Pacer(self._rng)
            at = pacer.arrival(time.monotonic(), len(packet), shape)
            tap.queued[dst] = tap.queued.get(dst, 0) + 1
            heapq.heappush(self._heap, (at, next(self._seq), tap, dst, packet))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:  # bounded: the heap only shrinks here
            _at, _seq, tap, dst, packet = heapq.heappop(self._heap)
            tap.queued[dst] -= 1
            try:
                os.write(tap.fd, packet)
                self.counts.forwarded += 1
            except OSError:
                self.counts.write_errors += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the delay router on CONFIG.json until SIGTERM."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.support.testbed._delay CONFIG.json", file=sys.stderr)
        return 2
    router = _Router(Path(args[0]))
    router.run()
    print(json.dumps(_counts(router.counts)), flush=True)
    return 0


def _counts(counts: _Counts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in counts.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
