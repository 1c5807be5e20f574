"""``mqtts://`` end to end on a real Mosquitto with a test CA made at test time (issue 16).

A TLS-only Mosquitto with the password file and ACL that enrolment writes; an agent
started with exactly the command ``mesh agents enroll`` prints (``mqtts://`` and
``--ca-file``) serves a module whose requests come from the control plane's edge
bus, itself over TLS. A client given the wrong CA, or facing an expired
certificate, refuses: the agent says so in one log line and keeps refusing, the
edge bus fails to start naming the broker, the CA and the verify error, and no
client ever falls back to plain MQTT.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from edge_agent.protocol import DesiredState
from mesh.cli._agents import collect_health
from mesh.core._errors import MeshError
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, control_plane_credentials, enroll
from mesh.edge._records import EdgeBusError, EdgeConnectionError
from mesh.edge.broker._broker import free_port
from mesh.edge.broker._mosquitto import MosquittoBroker, start_mosquitto
from mesh.runtime._control_plane import ControlPlaneSettings, build_services
from mesh.serving._contract import ReplicaMqtt
from mesh.serving.replica._mqtt import MqttResponder
from mesh.serving.replica._server import ModelRunner, ReplicaApp
from tests.support import agent_fixtures as af
from tests.support.agent_fixtures import AgentProcess, ArtifactServer, SigningKey
from tests.support.brokers import require_mosquitto
from tests.support.tls import TestPki, make_test_pki

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes

_ATTEMPTS = 3  # connection attempts a refusing agent is watched for
_WAIT_S = 30.0  # generous: the agent retries every second
# How OpenSSL words a chain from another CA (Mosquitto sends that CA in the chain).
_FOREIGN = (
    r"\((self-signed certificate in certificate chain|unable to get local issuer certificate)\)"
)


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


def _tls_broker(tmp_path: Path, pki: TestPki, which: str = "server") -> MosquittoBroker:
    require_mosquitto()
    return start_mosquitto(workdir=tmp_path / f"mq-{which}", tls=pki.listener(which))


def _refusing_agent(
    make: Callable[..., AgentProcess], tmp_path: Path, url: str, ca: Path, name: str
) -> AgentProcess:
    args = ["--id", name, "--site", "s1", "--broker", url, "--ca-file", str(ca)]
    args += ["--cache-dir", str(tmp_path / name), "--reconnect-min-s", "1"]
    args += ["--reconnect-max-s", "1", "--log-level", "INFO"]
    return make(args, tmp_path / f"{name}.log").start()


def _attempts(broker: MosquittoBroker) -> int:
    return broker.log_text().count("New connection from")


def _wait_attempts(broker: MosquittoBroker) -> None:
    for _ in range(int(_WAIT_S * 20)):  # bounded: until the broker saw enough attempts
        if _attempts(broker) >= _ATTEMPTS:
            return
        time.sleep(0.05)


def _watch_refusals(agent: AgentProcess, broker: MosquittoBroker, needle: str) -> str:
    """Wait for ``_ATTEMPTS`` connection attempts; return the agent's refusal line."""
    assert agent.wait_log(needle, _WAIT_S), agent.log()
    _wait_attempts(broker)
    assert _attempts(broker) >= _ATTEMPTS, broker.log_text()
    assert agent.proc is not None and agent.proc.poll() is None  # still running, still refusing
    lines = [line for line in agent.log().splitlines() if "TLS handshake failed" in line]
    assert len(lines) == 1, lines  # one line however often it retried
    assert "New client connected" not in broker.log_text()  # no session, TLS or plain
    assert " connected (MQTT" not in agent.log()
    return lines[0]


# ---------------------------------------------------------------- the happy path


def test_agent_serves_over_mqtts_from_the_enrolment_command(
    tmp_path: Path,
    pki: TestPki,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    require_mosquitto()
    port = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    settings = EdgeSettings(data_dir=tmp_path / "data", broker_url=url, broker_ca_file=pki.ca)
    creds = control_plane_credentials(settings)
    enrolled = enroll("cam-tls", site="s1", settings=settings, public_key=signing_key.public_b64)
    assert enrolled.broker_url == url
    assert enrolled.command[enrolled.command.index("--ca-file") + 1] == str(pki.ca)
    broker = start_mosquitto(
        port,
        workdir=tmp_path / "mq",
        password_file=settings.password_file,
        acl_file=settings.acl_file,
        tls=pki.listener(),
    )
    try:
        argv = [*enrolled.command[1:], "--cache-dir", str(tmp_path / "cache")]
        agent = agent_processes(argv, tmp_path / "agent.log").start()
        model = af.build_tiny_model(tmp_path / "m.onnx", scale=2.0).read_bytes()
        spec = af.module_spec(artifact_server, signing_key, "m", "1", model)
        with EdgeBus(
            url, username=creds.username, password=creds.password, ca_file=str(pki.ca)
        ) as bus:
            bus.publish_desired("cam-tls", DesiredState.model_validate(af.desired(1, [spec])))
            assert agent.wait_log("connected (MQTT", _WAIT_S), agent.log()
            assert agent.wait_log("module m: now serving version 1", _WAIT_S), agent.log()
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            result = asyncio.run(bus.infer("m", "cam-tls", {"x": x}, timeout_s=_WAIT_S))
            np.testing.assert_array_equal(result.outputs["y"], x * 2)
        assert "connecting to mqtts://" in agent.log()
    finally:
        broker.stop()


# ---------------------------------------------------------------- refusals


def test_agent_with_the_wrong_ca_refuses_with_one_line(
    tmp_path: Path, pki: TestPki, agent_processes: Callable[..., AgentProcess]
) -> None:
    broker = _tls_broker(tmp_path, pki)
    try:
        agent = _refusing_agent(agent_processes, tmp_path, broker.url, pki.other_ca, "cam-ca")
        line = _watch_refusals(agent, broker, "TLS handshake failed")
        assert broker.url in line and str(pki.other_ca) in line
        assert re.search(_FOREIGN, line)
    finally:
        broker.stop()


def test_agent_facing_an_expired_certificate_refuses_with_one_line(
    tmp_path: Path, pki: TestPki, agent_processes: Callable[..., AgentProcess]
) -> None:
    broker = _tls_broker(tmp_path, pki, "expired")
    try:
        agent = _refusing_agent(agent_processes, tmp_path, broker.url, pki.ca, "cam-exp")
        line = _watch_refusals(agent, broker, "TLS handshake failed")
        assert broker.url in line and str(pki.ca) in line and "certificate has expired" in line
    finally:
        broker.stop()


def test_agent_never_falls_back_to_plain_mqtt(
    tmp_path: Path, pki: TestPki, agent_processes: Callable[..., AgentProcess]
) -> None:
    """mqtts:// at a plain listener: handshakes fail, and no CONNECT ever reaches it."""
    require_mosquitto()
    plain = start_mosquitto(workdir=tmp_path / "plain")  # anonymous: a CONNECT would succeed
    try:
        url = f"mqtts://{plain.host}:{plain.port}"
        agent = _refusing_agent(agent_processes, tmp_path, url, pki.ca, "cam-plain")
        _wait_attempts(plain)
        assert _attempts(plain) >= _ATTEMPTS, plain.log_text()
        assert "New client connected" not in plain.log_text()
        assert " connected (MQTT" not in agent.log()
    finally:
        plain.stop()


@pytest.mark.parametrize("which", ["other", "expired"])
def test_edge_bus_with_a_bad_certificate_fails_to_start_clearly(
    tmp_path: Path, pki: TestPki, which: str
) -> None:
    broker = _tls_broker(tmp_path, pki, which)
    try:
        with pytest.raises(EdgeConnectionError) as caught:
            EdgeBus(broker.url, ca_file=str(pki.ca)).start(timeout_s=10)
        text = str(caught.value)
        assert broker.url in text and str(pki.ca) in text and "TLS handshake failed" in text
        assert re.search("certificate has expired" if which == "expired" else _FOREIGN, text)
        assert "New client connected" not in broker.log_text()
    finally:
        broker.stop()


def test_edge_bus_refuses_a_ca_for_a_plain_url(pki: TestPki) -> None:
    with pytest.raises(EdgeBusError, match="plain MQTT .* use mqtts://"):
        EdgeBus("mqtt://127.0.0.1:1883", ca_file=str(pki.ca))
    with pytest.raises(EdgeBusError, match="does not exist"):
        EdgeBus("mqtts://127.0.0.1:8883", ca_file=str(pki.ca.with_name("missing.pem")))


def test_a_replica_responder_connects_over_mqtts_and_refuses_a_wrong_ca(
    tmp_path: Path, pki: TestPki
) -> None:
    broker = _tls_broker(tmp_path, pki)
    runner = ModelRunner(af.build_tiny_model(tmp_path / "tiny.onnx"), cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id="m-v1-tls")
    try:
        responder = MqttResponder(app, ReplicaMqtt(broker.url, ca_file=str(pki.ca))).start(
            timeout_s=15
        )
        try:
            assert responder.describe()["subscribed"]
        finally:
            responder.stop(timeout_s=2)
        wrong = MqttResponder(app, ReplicaMqtt(broker.url, ca_file=str(pki.other_ca)))
        with pytest.raises(MeshError, match=f"{broker.port}: TLS handshake failed") as caught:
            wrong.start(timeout_s=10)
        assert str(pki.other_ca) in str(caught.value)
    finally:
        app.close()
        broker.stop()


def test_mesh_agents_list_reads_live_health_over_mqtts(tmp_path: Path, pki: TestPki) -> None:
    broker = _tls_broker(tmp_path, pki)
    try:
        good = EdgeSettings(
            data_dir=tmp_path / "data", broker_url=broker.url, broker_ca_file=pki.ca
        )
        _rows, reason = collect_health(good, wait_s=1.0)
        assert reason is None
        wrong = good.model_copy(update={"broker_ca_file": pki.other_ca})
        _rows, reason = collect_health(wrong, wait_s=1.0)
        assert reason is not None and "TLS handshake failed" in reason
        assert str(pki.other_ca) in reason
    finally:
        broker.stop()


def test_the_control_plane_with_a_wrong_ca_fails_to_start_naming_it(
    tmp_path: Path, pki: TestPki
) -> None:
    """What ``mesh up`` runs first: the edge bus, before anything touches Ray."""
    broker = _tls_broker(tmp_path, pki)
    undo: list[tuple[str, Callable[[], object]]] = []
    settings = ControlPlaneSettings(
        data_dir=tmp_path / "data", broker_url=broker.url, broker_ca_file=pki.other_ca
    )
    try:
        with pytest.raises(EdgeConnectionError, match="TLS handshake failed") as caught:
            build_services(settings, cast(Any, None), broker.url, "auto", undo)
        assert broker.url in str(caught.value) and str(pki.other_ca) in str(caught.value)
        assert undo == []  # nothing started that would need stopping
    finally:
        broker.stop()
