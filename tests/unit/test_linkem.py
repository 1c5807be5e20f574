"""The link emulator, end to end over loopback: a real echo server behind the proxy.

Functional checks with generous bounds (this is not a timing benchmark): the
added delay is about what was asked, the bandwidth cap holds roughly, a change
at run time takes effect, bytes arrive intact and in order, and stop is clean.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from mesh.scenario._linkem import LinkEmulator, LinkShape, _Pacer


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on 127.0.0.1, one thread per connection."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)  # accept() wakes up to see the stop flag
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    stop.set()
    server.close()
    thread.join(5)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip_ms(address: tuple[str, int], n: int = 10) -> float:
    """Median time to echo 16 bytes."""
    times = []
    with connect(address) as sock:
        for i in range(n):
            payload = i.to_bytes(16, "big")
            start = time.perf_counter()
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += sock.recv(64)
            times.append((time.perf_counter() - start) * 1000)
            assert got == payload
    return statistics.median(times)


def test_adds_the_configured_delay_each_way(echo: tuple[str, int]) -> None:
    direct = round_trip_ms(echo)
    with LinkEmulator(echo, up=LinkShape(delay_ms=15)) as link:
        via = round_trip_ms(link.address)
    # 15 ms each way: ~30 ms more per round trip.
    assert 25 <= via - direct <= 80, (direct, via)


def test_change_at_run_time_takes_effect(echo: tuple[str, int]) -> None:
    with LinkEmulator(echo, up=LinkShape(delay_ms=5)) as link:
        before = round_trip_ms(link.address)
        link.set(delay_ms=30, direction="up")
        assert link.shape("up").delay_ms == 30 and link.shape("down").delay_ms == 5
        after = round_trip_ms(link.address)
        link.set(delay_ms=0)
        cleared = round_trip_ms(link.address)
    assert 5 <= before <= 45, before
    assert 30 <= after <= 90, after  # 30 up + 5 down
    assert cleared < before, (cleared, before)


def test_bandwidth_cap_is_roughly_respected(echo: tuple[str, int]) -> None:
    payload = bytes(range(256)) * 400  # 100 kB
    # 2,000 kbit/s = 250 kB/s: 100 kB takes ~0.4 s each way, pipelined.
    shape = LinkShape(rate_kbps=2000, burst_bytes=4096)
    with LinkEmulator(echo, up=shape) as link, connect(link.address) as sock:
        received = bytearray()

        def read() -> None:
            while len(received) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=read)
        start = time.perf_counter()
        reader.start()
        sock.sendall(payload)
        reader.join(20)
        elapsed = time.perf_counter() - start
    assert bytes(received) == payload  # intact and in order
    assert 0.3 <= elapsed <= 3.0, elapsed


def test_jitter_never_reorders_bytes(echo: tuple[str, int]) -> None:
    shape = LinkShape(delay_ms=2, jitter_ms=2)
    with LinkEmulator(echo, up=shape, seed=1) as link, connect(link.address) as sock:
        sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
        for i in range(0, len(sent), 400):
            sock.sendall(sent[i : i + 400])
        got = b""
        while len(got) < len(sent):
            got += sock.recv(65536)
    assert got == sent


def test_pacer_model() -> None:
    pacer = _Pacer(__import__("random").Random(0))
    shape = LinkShape(delay_ms=10, rate_kbps=8, burst_bytes=1000)  # 1,000 bytes/s
    assert pacer.arrival(0.0, 1000, shape) == pytest.approx(0.010)  # from the burst
    assert pacer.arrival(0.0, 500, shape) == pytest.approx(0.510)  # waits for tokens
    jittery = LinkShape(delay_ms=10, jitter_ms=10)
    times = [pacer.arrival(1.0, 1, jittery) for _ in range(50)]
    assert times == sorted(times) and min(times) >= 1.0


def test_stop_is_clean_and_idempotent(echo: tuple[str, int]) -> None:
    link = LinkEmulator(echo, up=LinkShape(delay_ms=1)).start()
    address = link.address
    held = connect(address)  # an open connection must not block stop
    held.sendall(b"ping")
    assert held.recv(4) == b"ping"
    link.stop()
    link.stop()
    assert not [t for t in threading.enumerate() if t.name == "linkem"]
    held.settimeout(5)
    assert held.recv(4) == b""  # the proxy closed it
    held.close()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=1).close()


def test_upstream_down_closes_the_client_connection() -> None:
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    dead = spare.getsockname()
    spare.close()  # nothing listens there now
    with LinkEmulator(dead) as link, connect(link.address) as sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        LinkShape(delay_ms=-1)
    with pytest.raises(ValueError, match="rate_kbps"):
        LinkShape(rate_kbps=0)


def test_cli_refuses_a_non_loopback_listen_address() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.scenario._linkem",
            "--listen",
            "0.0.0.0:9",
            "--upstream",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "loopback" in result.stderr
