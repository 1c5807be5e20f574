"""tests/support/listeners.py: a process's TCP listeners, read from /proc."""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.listeners import Listener, non_loopback, tcp_listeners


def _listen(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_this_processs_listeners_are_found_with_their_addresses() -> None:
    with _listen(socket.AF_INET, "127.0.0.1") as local, _listen(socket.AF_INET, "0.0.0.0") as wide:
        local_port, wide_port = local.getsockname()[1], wide.getsockname()[1]

        found = {item.port: item for item in tcp_listeners([os.getpid()])}

    assert found[local_port] == Listener("127.0.0.1", local_port, os.getpid())
    assert found[wide_port] == Listener("0.0.0.0", wide_port, os.getpid())
    mine = [item.port for item in non_loopback(found.values())]
    assert wide_port in mine and local_port not in mine


def test_ipv6_any_is_not_loopback_and_ipv6_loopback_is() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        wide = _listen(socket.AF_INET6, "::")
        local = _listen(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"IPv6 sockets unavailable: {exc}")
    with wide, local:
        found = {item.port: item for item in tcp_listeners([os.getpid()])}
        assert found[wide.getsockname()[1]].address == "::"
        assert not found[wide.getsockname()[1]].is_loopback
        assert found[local.getsockname()[1]].is_loopback


def test_children_are_included_and_a_gone_pid_is_skipped() -> None:
    import subprocess
    import sys

    code = "import socket,sys,time;s=socket.socket();s.bind(('0.0.0.0',0));s.listen();"
    code += "print(s.getsockname()[1],flush=True);time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())

        with_children = tcp_listeners([os.getpid(), 2**22 + 1])
        without = tcp_listeners([os.getpid()], children=False)
    finally:
        child.kill()
        child.wait()

    assert Listener("0.0.0.0", port, child.pid) in with_children
    assert all(item.pid != child.pid for item in without)
    assert "0.0.0.0:" in str(Listener("0.0.0.0", port, child.pid))


def test_mapped_ipv4_loopback_counts_as_loopback() -> None:
    assert Listener("::ffff:127.0.0.1", 1, 1).is_loopback
    assert not Listener("::ffff:192.0.2.2", 1, 1).is_loopback
