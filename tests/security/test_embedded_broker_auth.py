"""The embedded broker the mesh starts: loopback only, and only the key store's logins.

Before, any local process could connect anonymously, pose as an agent, read the
pre-signed artifact URLs in desired states and run inference on replicas without
a token; and the broker bound wherever it was told. Here the control plane's own
broker start (:func:`mesh.runtime._control_plane._start_broker`) is attacked:
anonymous and wrong-password logins are refused, the mesh's own clients (edge bus,
enrolled agents, agents enrolled while it runs) get in with no configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.core._errors import MeshError
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import control_plane_credentials, enroll, revoke
from mesh.edge.broker._broker import EmbeddedBroker
from mesh.runtime._control_plane import ControlPlaneSettings, _start_broker
from tests.support.brokers import MqttProbe

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

# MQTT 3.1.1's "bad user name or password" and "not authorised", as paho 2 reports them.
_NOT_AUTHORISED = (134, 135)


@pytest.fixture
def settings(tmp_path: Path) -> ControlPlaneSettings:
    return ControlPlaneSettings(data_dir=tmp_path / "cp", embedded_broker_port=0)


@pytest.fixture
def started(settings: ControlPlaneSettings) -> Iterator[EmbeddedBroker]:
    broker = _start_broker(settings)
    try:
        yield broker
    finally:
        broker.stop()


def _connack(broker: EmbeddedBroker, username: str | None, password: str | None) -> int:
    probe = MqttProbe(broker, username=username, password=password)
    try:
        return probe.connack()
    finally:
        probe.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org", ""])
def test_a_non_loopback_bind_is_refused(host: str) -> None:
    with pytest.raises(MeshError, match="loopback only"):
        EmbeddedBroker(host, 0, password_file=Path("/nonexistent"))


def test_anonymous_clients_are_refused(started: EmbeddedBroker) -> None:
    assert _connack(started, None, None) in _NOT_AUTHORISED


def test_a_wrong_password_is_refused(
    started: EmbeddedBroker, settings: ControlPlaneSettings
) -> None:
    creds = control_plane_credentials(settings)
    assert _connack(started, creds.username, creds.password + "x") in _NOT_AUTHORISED
    assert _connack(started, "nobody", creds.password) in _NOT_AUTHORISED


def test_the_mesh_own_clients_get_in(
    started: EmbeddedBroker, settings: ControlPlaneSettings
) -> None:
    creds = control_plane_credentials(settings)
    with EdgeBus(
        started.url, username=creds.username, password=creds.password, protocol="3.1.1"
    ) as bus:
        assert bus.connected
    # An agent enrolled while the broker runs (a scenario's, `mesh agents enroll`)
    # gets in without a restart; once revoked, it does not.
    agent = enroll("cam-late", site="s1", settings=settings, public_key="unused")
    assert _connack(started, agent.username, agent.password) == 0
    revoke("cam-late", settings=settings)
    assert _connack(started, agent.username, agent.password) in _NOT_AUTHORISED


def test_without_a_password_file_it_does_not_start() -> None:
    with pytest.raises(MeshError, match="password file"):
        EmbeddedBroker("127.0.0.1", 0)
