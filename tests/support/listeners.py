"""Which TCP sockets a set of processes listens on, read from ``/proc`` (Linux only).

The "nothing of ours listens beyond loopback" check: take the pids a part
started, their children come along, and assert every listener is loopback::

    from tests.support.listeners import non_loopback, tcp_listeners

    assert non_loopback(tcp_listeners([os.getpid()])) == []

A socket is matched to a process through the ``socket:[inode]`` links in
``/proc/<pid>/fd``; the listening sockets come from ``/proc/net/tcp`` and
``/proc/net/tcp6`` (state ``0A``, LISTEN). No ``ss`` or root is needed for
processes of the same user.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

__all__ = ["Listener", "family_pids", "non_loopback", "tcp_listeners"]

_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening TCP socket: its bound address and port, and a pid holding it."""

    address: str
    port: int
    pid: int

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8 and ::1 (and ::ffff:127.x); False for 0.0.0.0, :: and the rest."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        try:
            name = psutil.Process(self.pid).name()
        except psutil.Error:
            name = "?"
        return f"{host}:{self.port} (pid {self.pid} {name})"


def family_pids(pids: Iterable[int]) -> set[int]:
    """``pids`` and all their living descendants."""
    found: set[int] = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return found


def _hex_address(text: str) -> str:
    """An address from /proc/net/tcp[6] (host byte order, 32-bit words) as text."""
    raw = bytes.fromhex(text)
    # Each 32-bit word is stored in the host's byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    return socket.inet_ntop(socket.AF_INET6, words)


def _listening_inodes() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket in this network namespace."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            host, port = fields[1].split(":")
            found[int(fields[9])] = (_hex_address(host), int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:  # gone, or not ours to read
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_listeners(pids: Iterable[int], *, children: bool = True) -> list[Listener]:
    """The listening TCP sockets held by ``pids`` (and, by default, their descendants).

    Args:
        pids: the processes to look at; ones that are gone are skipped.
        children: also look at every living descendant of ``pids``.

    Returns:
        One :class:`Listener` per (socket, pid), sorted by port then pid.
    """
    wanted = family_pids(pids) if children else set(pids)
    listening = _listening_inodes()
    found = {
        Listener(*listening[inode], pid)
        for pid in wanted
        for inode in _socket_inodes(pid)
        if inode in listening
    }
    return sorted(found, key=lambda item: (item.port, item.pid, item.address))


def non_loopback(listeners: Iterable[Listener]) -> list[Listener]:
    """The listeners reachable from beyond this host (bound to a non-loopback address)."""
    return [item for item in listeners if not item.is_loopback]
