"""Smoke test of the test bed: hosts reach each other on their addresses, with the links' delays.

A TCP echo server runs in ``cloud`` (and ``fog-0``, ``edge-3``); probes in other
hosts time round trips over TCP (a ping over TCP). Each round trip pays the
path's one-way delay twice, so it is at least ``2 * (delay - jitter)``; paths
without a declared link are not delayed. Nothing leaves the test subnet.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.testbed import TestBed

ECHO = [sys.executable, "-m", "tests.support.testbed._echo"]
SERVERS = ("cloud", "fog-0", "edge-3")


@pytest.fixture(scope="module")
def echo_ports(traffic_bed: TestBed) -> Iterator[dict[str, int]]:
    """An echo server in each of :data:`SERVERS`, on its host's address: host -> port."""
    procs = {
        host: traffic_bed.spawn(
            host,
            [*ECHO, "serve", "--host", traffic_bed.address(host)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for host in SERVERS
    }
    ports = {}
    for host, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the port, or "" if it died (pytest's timeout bounds this)
        assert line.strip().isdigit(), f"echo server in {host} did not start: {line!r}"
        ports[host] = int(line)
    yield ports
    for proc in procs.values():
        proc.terminate()
        proc.wait(10)


def probe(bed: TestBed, src: str, dst: str, port: int, count: int = 20) -> dict[str, Any]:
    done = bed.run(
        src,
        [*ECHO, "probe", "--host", bed.address(dst), "--port", str(port), "--count", str(count)],
        check=False,
    )
    assert done.stdout, f"probe from {src} printed nothing: {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_links_are_the_scenarios_numbers(traffic_bed: TestBed) -> None:
    """scenarios/traffic.yaml: edge-fog 5 ms, edge-cloud 40 ms, fog-cloud 15 ms; none for client."""
    shape = traffic_bed.plan.shape
    assert (shape("edge-1", "cloud").delay_ms, shape("edge-1", "cloud").jitter_ms) == (40, 5)
    assert (shape("cloud", "edge-2").delay_ms, shape("cloud", "edge-2").jitter_ms) == (40, 5)
    assert shape("edge-3", "fog-1").delay_ms == 5
    assert shape("fog-0", "cloud").delay_ms == 15
    assert shape("client", "cloud").delay_ms == 0
    assert shape("edge-1", "edge-2").delay_ms == 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("edge-1", "cloud"),
        ("client", "cloud"),
        ("fog-1", "cloud"),
        ("edge-2", "fog-0"),
        ("edge-1", "edge-3"),
        ("fog-1", "fog-0"),
    ],
)
def test_tcp_round_trips_pay_the_group_delay(
    traffic_bed: TestBed, echo_ports: dict[str, int], src: str, dst: str
) -> None:
    """Each round trip takes at least twice the one-way delay; an undelayed one, far less."""
    result = probe(traffic_bed, src, dst, echo_ports[dst])
    assert "error" not in result, f"{src} -> {dst}: {result}"
    rtts = result["rtt_ms"]
    assert isinstance(rtts, list) and len(rtts) == 20
    shape = traffic_bed.plan.shape(src, dst)
    floor_ms = 2 * (shape.delay_ms - shape.jitter_ms)
    if shape.delay_ms:
        # Both the SYN and the SYN-ACK cross the link too.
        assert result["connect_ms"] >= floor_ms - 1.0
        assert min(rtts) >= floor_ms - 1.0, f"{src} -> {dst}: {rtts}"
        # Generous: a busy CI host adds scheduling delay, never less than the link.
        assert statistics.median(rtts) <= 2 * (shape.delay_ms + shape.jitter_ms) + 100.0
    else:
        # Undelayed: well under the smallest delayed round trip of this scenario (8 ms, edge-fog).
        assert statistics.median(rtts) < 8.0, f"{src} -> {dst}: {rtts}"


def test_the_server_sees_its_clients_own_address(traffic_bed: TestBed) -> None:
    """No proxy in between: a server in cloud sees edge-1's address as the peer."""
    server = traffic_bed.spawn(
        "cloud",
        [sys.executable, "-c", _ACCEPT_ONE, traffic_bed.address("cloud")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    traffic_bed.run(
        "edge-1",
        [
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('{traffic_bed.address('cloud')}', {port}), 10).close()",
        ],
    )
    assert server.stdout.readline().strip() == traffic_bed.address("edge-1")
    server.wait(10)


_ACCEPT_ONE = """
import socket, sys
s = socket.create_server((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
conn, peer = s.accept()
print(peer[0], flush=True)
"""


def test_nothing_leaves_the_test_subnet(traffic_bed: TestBed) -> None:
    """No host has a default route; an outside address is unreachable; the machine gained nothing."""
    for host in traffic_bed.plan.hosts:
        routes = subprocess.run(
            ["ip", "-n", traffic_bed.namespace(host.name), "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "default" not in routes, f"{host.name}: {routes}"
    # No route: the connection fails in the client's own kernel, before any packet is sent.
    unreachable = traffic_bed.run(
        "client",
        [*ECHO, "probe", "--host", "192.0.2.1", "--port", "9", "--count", "1", "--timeout-s", "2"],
        check=False,
    )
    assert unreachable.returncode == 1
    assert json.loads(unreachable.stdout)["errno"] == errno.ENETUNREACH
    hub_addresses = subprocess.run(
        ["ip", "-n", traffic_bed.hub, "-4", "-o", "addr"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line.split()[3] for line in hub_addresses.splitlines()] == ["127.0.0.1/8"]
    machine = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    on_machine = [ipaddress.ip_interface(line.split()[3]).ip for line in machine.splitlines()]
    assert not [a for a in on_machine if a in traffic_bed.plan.subnet], machine
    assert [x for x in traffic_bed.leftovers() if x.startswith("link")] == []  # none made here


def test_a_link_changes_while_it_runs(traffic_bed: TestBed, echo_ports: dict[str, int]) -> None:
    """set_link: edge-1 <-> cloud goes from 40 ms to 120 ms one way (no jitter), then back."""
    try:
        traffic_bed.set_link("edge-1", "cloud", delay_ms=120, jitter_ms=0)
        result = probe(traffic_bed, "edge-1", "cloud", echo_ports["cloud"], count=5)
        assert "error" not in result, result
        assert min(result["rtt_ms"]) >= 239.0, result
        # Only that pair changed.
        assert traffic_bed.plan.shape("edge-2", "cloud").delay_ms == 40
    finally:
        traffic_bed.set_link("edge-1", "cloud", delay_ms=40, jitter_ms=5)
    with pytest.raises(ValueError, match="no delay declared"):
        traffic_bed.set_link("edge-1", "edge-2", delay_ms=5)
    with pytest.raises(ValueError, match="takes delay_ms"):
        traffic_bed.set_link("edge-1", "cloud", loss=1.0)
