"""Desired states sent again after a reconnect, to the agents not reporting them yet."""

from __future__ import annotations

import threading

from mesh.edge._desired_resend import DesiredResend


class Bed:
    def __init__(self) -> None:
        self.observed: dict[str, int] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.done = threading.Event()
        self.resend = DesiredResend(self.observed.get, self._publish)

    def _publish(self, agent: str, payload: bytes) -> None:
        self.sent.append((agent, payload))
        self.done.set()

    def reconnect(self) -> None:
        self.done.clear()
        self.resend.connection_ready()


def test_only_agents_behind_the_last_published_version_are_sent_again() -> None:
    bed = Bed()
    bed.resend.record("on-it", 3, b"v3")
    bed.resend.record("behind", 3, b"v3")
    bed.resend.record("silent", 1, b"v1")  # never reported anything
    bed.resend.record("cleared", 2, b"v2")
    bed.resend.forget("cleared")
    bed.observed.update({"on-it": 3, "behind": 2, "cleared": 1})

    assert sorted(bed.resend.pending()) == [("behind", b"v3"), ("silent", b"v1")]


def test_the_first_connection_sends_nothing_a_reconnect_sends_the_pending() -> None:
    bed = Bed()
    bed.resend.record("cam-1", 2, b"v2")
    bed.resend.connection_ready()  # the bus's start: it publishes desired states itself
    assert bed.sent == []

    bed.reconnect()
    assert bed.done.wait(10.0)
    assert bed.sent == [("cam-1", b"v2")]

    bed.observed["cam-1"] = 2  # the agent applied it: nothing more to send
    bed.sent.clear()
    bed.resend.record("cam-2", 5, b"v5")
    bed.reconnect()
    assert bed.done.wait(10.0)
    assert bed.sent == [("cam-2", b"v5")]


def test_a_publish_that_fails_stops_the_round_for_the_next_reconnect() -> None:
    calls: list[str] = []

    def offline(agent: str, payload: bytes) -> None:
        calls.append(agent)
        raise ConnectionError("down again")

    resend = DesiredResend(lambda agent: None, offline)
    resend.record("a", 1, b"1")
    resend.record("b", 1, b"1")
    resend.connection_ready()
    resend._resend()  # what the reconnect's thread runs
    assert calls == ["a"] and resend.resent == 0
