"""Agents' artifact URLs name an address devices reach, never loopback behind their back."""

from __future__ import annotations

import logging

import pytest

from mesh.runtime._artifact_url import artifact_base_url, local_address_toward


def _route(host: str) -> str:
    assert host == "10.77.0.10", host
    return "10.77.0.20"


@pytest.mark.parametrize(
    ("gateway_host", "broker", "expected"),
    [
        ("10.77.0.10", "mqtts://10.77.0.10:8883", "http://10.77.0.10:8080"),  # the test bed
        ("0.0.0.0", "mqtts://10.77.0.10:8883", "http://10.77.0.20:8080"),  # toward the devices
        ("::", "mqtts://10.77.0.10:8883", "http://10.77.0.20:8080"),
        ("0.0.0.0", "mqtt://127.0.0.1:1883", "http://127.0.0.1:8080"),  # the demo: one host
        ("127.0.0.1", "mqtt://127.0.0.1:1883", "http://127.0.0.1:8080"),
        ("fd00::5", "mqtts://10.77.0.10:8883", "http://[fd00::5]:8080"),
    ],
)
def test_the_url_names_the_gateway_where_devices_reach_it(
    gateway_host: str, broker: str, expected: str
) -> None:
    url = artifact_base_url(explicit=None, gateway_host=gateway_host, gateway_port=8080,
                            device_broker_url=broker, route=_route)  # fmt: skip
    assert url == expected


def test_an_explicit_base_url_wins() -> None:
    url = artifact_base_url(explicit="https://models.example/fog", gateway_host="0.0.0.0",
                            gateway_port=8080, device_broker_url="mqtts://10.77.0.10:8883",
                            route=_route)  # fmt: skip
    assert url == "https://models.example/fog"


def test_a_loopback_url_for_devices_elsewhere_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="mesh.runtime._artifact_url"):
        url = artifact_base_url(explicit=None, gateway_host="127.0.0.1", gateway_port=8080,
                                device_broker_url="mqtts://10.77.0.10:8883")  # fmt: skip
    assert url == "http://127.0.0.1:8080"
    assert "MESH_ARTIFACT_BASE_URL" in caplog.text and "MESH_GATEWAY_HOST" in caplog.text


def test_the_local_address_toward_loopback_is_loopback() -> None:
    assert local_address_toward("127.0.0.1") == "127.0.0.1"


def test_no_route_falls_back_to_loopback_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mesh.runtime._artifact_url"):
        assert local_address_toward("no-such-host.invalid") == "127.0.0.1"
    assert "no route" in caplog.text
