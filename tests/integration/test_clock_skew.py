"""Fog hosts whose clocks are minutes off: replicas in processes under libfaketime.

Two replica processes (``python -m mesh.serving.replica._server``, each answering
HTTP and MQTT) run with their wall clocks 5 minutes ahead of this host's and 5
minutes behind it, as replicas on fog hosts whose clocks drifted. This process
plays the control plane (a real gateway) and an edge device (the agent's real
offload client, stamping deadlines in its own clock). Every request through
the gateway and every offload must be answered.

The gateway's requests never carried a wall-clock time; an agent's offloads do
(``deadline_ts``): a replica 5 minutes ahead dropped every one as expired
before it read each agent's deadlines in that agent's clock.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._offload import OffloadClient
from edge_agent._transport import ConnectionConfig, MqttTransport
from edge_agent.protocol import Tensor, Topics
from mesh.edge.broker._broker import MosquittoBroker
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.brokers import mosquitto, unique  # noqa: F401
from tests.support.faketime import require_faketime, skewed_env
from tests.support.replica_process import ReplicaProcess
from tests.support.serving import running_gateway

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

SKEW_S = 300.0
KEY = "k" * 43
AGENT = "cam-skew"
REQUESTS = 20


@pytest.fixture
def replicas(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict[float, Any]]:  # noqa: F811
    """A replica 5 minutes ahead and one 5 minutes behind, both on the broker."""
    require_faketime(SKEW_S)
    model = build_tiny_model(tmp_path / "tiny.onnx", scale=3.0)
    started: dict[float, Any] = {}
    try:
        for skew in (SKEW_S, -SKEW_S):
            replica_id = unique("m-v1")
            process = ReplicaProcess(
                model,
                key=KEY,
                extra=["--mqtt", mosquitto.url, "--replica-id", replica_id],
                env=skewed_env(skew),
            )
            process.replica_id = replica_id  # type: ignore[attr-defined]
            started[skew] = process
        yield started
    finally:
        for process in started.values():
            process.stop()


def stats(process: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{process.url}/stats", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def infer(gateway: str, value: float) -> tuple[int, Any]:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
    ).encode()
    request = urllib.request.Request(
        f"http://{gateway}/v2/models/m/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_replicas_minutes_ahead_and_behind_serve_the_gateway_and_agents(
    replicas: dict[float, Any],
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    routes = RouteTable()
    failures: list[str] = []
    with running_gateway(routes) as (_, server):
        gateway = f"{server.host}:{server.port}"
        for skew, process in replicas.items():
            endpoint = ReplicaEndpoint(
                process.replica_id, "fog", process.host, process.port, "v1", key=KEY
            )
            routes.set("m", "v1", [endpoint], tier="fog")
            for i in range(REQUESTS):
                status, doc = infer(gateway, float(i))
                if status != 200:
                    failures.append(f"{skew:+.0f} s: {status} {doc}")
                    continue
                assert doc["outputs"][0]["data"] == [3.0 * i] * 4
            assert stats(process)["requests"] >= REQUESTS
    assert failures == []

    transport = MqttTransport(
        ConnectionConfig(mosquitto.host, mosquitto.port, AGENT, protocol="3.1.1")
    )
    offload = OffloadClient(transport, Topics("mesh/v1"), AGENT)
    offload.start()
    transport.start()
    try:
        deadline = time.monotonic() + 30
        while not transport.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert transport.connected, "the agent could not reach the broker"
        x = Tensor.from_numpy("x", np.full((1, 4), 2.0, np.float32))
        for skew, process in replicas.items():
            for _ in range(REQUESTS):
                # 5 s to answer, in the agent's clock: the code before dropped every one
                # of these at the replica 5 minutes ahead (expired 295 s before arrival).
                result = offload.request("m", process.replica_id, [x], timeout_s=5.0)
                if result.error is not None:
                    failures.append(f"offload {skew:+.0f} s: {result.error.reason}")
                    continue
                assert result.outputs is not None
                assert result.outputs[0].to_numpy().tolist() == [[6.0] * 4]
            mqtt = stats(process)["mqtt"]
            assert mqtt["expired"] == 0 and mqtt["requests"] == REQUESTS
            # The replica's clock really is off: its estimate of the agent's clock
            # (this process's) minus its own.
            assert mqtt["clock_offsets_s"][AGENT] == pytest.approx(-skew, abs=5.0)
    finally:
        transport.stop()
    assert failures == []
