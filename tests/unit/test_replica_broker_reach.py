"""Which replicas get the broker: a loopback broker only reaches nodes on the control plane's host."""

from __future__ import annotations

import logging

import pytest

from mesh.runtime._replica_broker import replicas_reach_broker


@pytest.mark.parametrize(
    ("broker_url", "ray_address", "reached"),
    [
        ("mqtt://127.0.0.1:1883", None, True),  # the embedded cluster: every node is this host
        ("mqtt://127.0.0.1:1883", "127.0.0.1:6379", True),
        ("mqtt://localhost:1883", "[::1]:6379", True),
        ("mqtt://127.0.0.1:1883", "10.77.0.10:6379", False),
        ("mqtt://localhost:1883", "head.example:6379", False),
        ("mqtts://10.77.0.10:8883", "10.77.0.10:6379", True),
        ("mqtt://broker.example:1883", "10.77.0.10:6379", True),
    ],
)
def test_a_loopback_broker_is_not_given_to_replicas_on_other_hosts(
    broker_url: str, ray_address: str | None, reached: bool
) -> None:
    assert replicas_reach_broker(broker_url, ray_address) is reached


def test_the_user_is_told_what_to_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mesh.runtime._replica_broker"):
        assert not replicas_reach_broker("mqtt://127.0.0.1:41000", "10.77.0.10:6379")
    assert "serve HTTP only" in caplog.text and "MESH_BROKER_URL" in caplog.text
