"""TLS settings for MQTT: URLs, CA files, the enrolment command, Mosquitto's listener."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edge_agent._mqtt import TlsOptions, broker_tls, tls_failure_text
from edge_agent._settings import SettingsError, load_settings
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, device_command
from mesh.edge._records import EdgeBusError
from mesh.edge.broker._mosquitto import MosquittoConfig, MosquittoTls, render_mosquitto_config
from mesh.serving._contract import ReplicaMqtt


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not parsed here\n")
    return path


def test_broker_tls_follows_the_scheme(ca: Path) -> None:
    assert broker_tls("mqtt://h:1883") is None
    assert broker_tls("mqtts://h") == TlsOptions()  # the system CAs
    assert broker_tls("ssl://h", ca_file=str(ca)) == TlsOptions(ca_file=str(ca))


@pytest.mark.parametrize(
    ("url", "files", "match"),
    [
        ("mqtt://h", {"ca_file": "CA"}, "plain MQTT .* use mqtts://"),
        ("http://h", {}, "expected mqtt://host"),
        ("mqtts://h", {"ca_file": "/nonexistent/ca.pem"}, "CA file /nonexistent/ca.pem does not"),
        ("mqtts://h", {"key_file": "CA"}, "key was given without its certificate"),
    ],
)
def test_bad_tls_settings_are_refused_clearly(
    url: str, files: dict[str, str], match: str, ca: Path
) -> None:
    files = {k: str(ca) if v == "CA" else v for k, v in files.items()}
    with pytest.raises(ValueError, match=match):
        broker_tls(url, **files)


def test_a_failed_handshake_reads_as_the_verify_error() -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "certificate has expired"
    text = tls_failure_text(err, TlsOptions(ca_file="/etc/ca.pem"))
    assert text is not None
    assert "(certificate has expired)" in text and "CA file /etc/ca.pem" in text
    assert "system CAs" in (tls_failure_text(err, TlsOptions()) or "")
    assert tls_failure_text(ConnectionRefusedError(), TlsOptions()) is None
    assert tls_failure_text(err, None) is None  # plain MQTT: not a TLS failure


def test_edge_bus_takes_mqtts_with_the_tls_port(ca: Path) -> None:
    bus = EdgeBus("mqtts://10.0.0.2", ca_file=str(ca))
    assert (bus.host, bus.port) == ("10.0.0.2", 8883)
    with pytest.raises(EdgeBusError, match="plain MQTT"):
        EdgeBus("mqtt://10.0.0.2", ca_file=str(ca))


def test_replica_mqtt_carries_the_ca(ca: Path) -> None:
    cfg = ReplicaMqtt("mqtts://cp:pw@10.0.0.2", ca_file=str(ca))
    assert cfg.endpoint() == ("10.0.0.2", 8883, "cp", "pw")
    assert cfg.tls() == TlsOptions(ca_file=str(ca))
    assert ReplicaMqtt("mqtt://10.0.0.2").tls() is None
    with pytest.raises(ValueError, match="plain MQTT"):
        ReplicaMqtt("mqtt://10.0.0.2", ca_file=str(ca))


def test_the_device_command_names_the_ca_for_a_tls_broker_only(tmp_path: Path) -> None:
    common = {"agent_id": "a", "site": "s", "username": "a", "public_key": "k"}
    pw = tmp_path / "pw"
    tls = device_command(broker_url="mqtts://b:8883", password_file=pw, ca_file="/ca", **common)
    assert tls[tls.index("--ca-file") + 1] == "/ca" and tls[2] == "mqtts://b:8883"
    plain = device_command(broker_url="mqtt://b", password_file=pw, ca_file="/ca", **common)
    assert "--ca-file" not in plain


def test_the_device_ca_defaults_to_the_control_planes(tmp_path: Path) -> None:
    settings = EdgeSettings(data_dir=tmp_path, broker_ca_file=tmp_path / "ca.pem")
    assert settings.device_ca_file == str(tmp_path / "ca.pem")
    assert EdgeSettings(data_dir=tmp_path, agent_ca_file="/etc/mesh/ca.pem").device_ca_file == (
        "/etc/mesh/ca.pem"
    )
    assert EdgeSettings(data_dir=tmp_path).device_ca_file is None


def test_mosquitto_tls_listener(tmp_path: Path) -> None:
    tls = MosquittoTls(tmp_path / "ca.pem", tmp_path / "s.pem", tmp_path / "s.key")
    text = render_mosquitto_config(MosquittoConfig(port=8883, tls=tls))
    listener = text[text.index("listener 8883") :]
    for line in (f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"):
        assert line in listener
    assert "require_certificate false" in listener and "tls_version tlsv1.2" in listener
    assert "certfile" not in render_mosquitto_config(MosquittoConfig(port=1883))


def test_the_agent_refuses_tls_files_it_cannot_use(ca: Path) -> None:
    base = ["--id", "cam-1", "--broker"]
    ok = load_settings([*base, "mqtts://b", "--ca-file", str(ca)], env={})
    assert ok.tls and ok.ca_file == ca and ok.broker_port == 8883
    with pytest.raises(SettingsError, match="ca_file given but broker 'mqtt://b' is plain MQTT"):
        load_settings([*base, "mqtt://b", "--ca-file", str(ca)], env={})
    with pytest.raises(SettingsError, match=r"ca_file /nonexistent/ca.pem does not exist"):
        load_settings([*base, "mqtts://b", "--ca-file", "/nonexistent/ca.pem"], env={})
