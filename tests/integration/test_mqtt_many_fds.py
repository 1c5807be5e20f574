"""A paho client whose socket is descriptor 1024 or higher still connects and receives.

paho's own loop waits in ``select.select``, which cannot take such a descriptor;
``edge_agent/_poll_select.py`` swaps in ``poll()`` for it. Without that, the
bench's bus in ``bench/fleet.py`` (beside 2,000 simulated agents' sockets) never
saw its CONNACK, and a control plane serving a thousand downloads would lose its
bus the next time it reconnected.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import select
from collections.abc import Iterator

import pytest

from edge_agent._mqtt import ClientOptions, close_client, connect_and_wait, new_client
from mesh.edge.broker._broker import MosquittoBroker
from tests.support.brokers import mosquitto, unique  # noqa: F401

pytestmark = pytest.mark.mqtt

_HIGH = 1100  # descriptors held open before the client connects


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Hold descriptors up to past 1,024 (raising the soft limit if it is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = _HIGH + 64
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < _HIGH:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_client_on_a_high_descriptor_connects_and_receives(
    many_fds: None,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    got: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    client = new_client(ClientOptions(unique("high"), "5"))
    client.on_message = lambda _c, _u, msg: got.put(msg.payload)
    try:
        code = connect_and_wait(
            client, mosquitto.host, mosquitto.port, keepalive_s=10, timeout_s=10
        )
        assert code == 0, "no CONNACK on a socket numbered past select()'s bound"
        sock = client.socket()
        assert sock is not None and sock.fileno() >= 1024
        with pytest.raises(ValueError):  # what paho's loop met before the swap
            select.select([sock], [], [], 0)
        topic = unique("t/high")
        client.subscribe(topic, qos=1)
        for i in range(20):  # the first may come before the SUBACK: keep publishing
            client.publish(topic, f"m{i}".encode(), qos=1)
            with contextlib.suppress(queue.Empty):
                assert got.get(timeout=0.5).startswith(b"m")
                break
        else:
            pytest.fail("no message arrived on the high-descriptor client")
    finally:
        close_client(client)
