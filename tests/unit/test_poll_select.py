"""PollSelect keeps select.select's answers and errors, and takes descriptors past 1,024."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import sys
from collections.abc import Iterator

import pytest

from edge_agent._poll_select import PollSelect, install


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_readable_and_writable_as_select_says(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    shim = PollSelect()
    assert shim.select([a], [], [], 0) == select.select([a], [], [], 0) == ([], [], [])
    b.send(b"x")
    assert shim.select([a], [a], [], 0.5) == ([a], [a], [])
    assert shim.select([a.fileno()], [], [], 0)[0] == [a.fileno()]


def test_errors_are_selects() -> None:
    shim = PollSelect()
    with pytest.raises(ValueError):
        shim.select([-1], [], [], 0)
    with pytest.raises(TypeError):
        shim.select([object()], [], [], 0)
    assert shim.error is select.error and shim.POLLIN == select.POLLIN


def test_a_descriptor_past_1024(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048")
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    high = os.dup2(a.fileno(), 1500)
    try:
        b.send(b"x")
        with pytest.raises(ValueError):
            select.select([high], [], [], 0)
        assert PollSelect().select([high], [], [], 0.5) == ([high], [], [])
    finally:
        os.close(high)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_install_swaps_pahos_select_once() -> None:
    import paho.mqtt.client as mqtt

    before = mqtt.select
    with contextlib.ExitStack() as undo:
        undo.callback(setattr, mqtt, "select", before)
        mqtt.select = select  # type: ignore[attr-defined]
        install()
        first = mqtt.select
        install()
        assert isinstance(first, PollSelect) and mqtt.select is first
    assert "paho.mqtt.client" in sys.modules
