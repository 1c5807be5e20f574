"""Fog hosts whose clocks are minutes off: replicas and a Ray node under libfaketime.

Two replica processes (``python -m mesh.serving.replica._server``, each answering
HTTP and MQTT) run with their wall clocks 5 minutes ahead of this host's and 5
minutes behind it, as replicas on fog hosts whose clocks drifted. This process
plays the control plane (a real gateway) and an edge device (the agent's real
offload client, stamping deadlines in its own clock). Every request through
the gateway and every offload must be answered.

The gateway's requests never carried a wall-clock time; an agent's offloads do
(``deadline_ts``): a replica 5 minutes ahead dropped every one as expired
before it read each agent's deadlines in that agent's clock.

A Ray node joined with ``mesh node join`` under libfaketime (its raylet and
workers inherit the preload) is a fog host 5 minutes ahead: the control
plane's node probes name it, with its skew, in a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from edge_agent._offload import OffloadClient
from edge_agent._transport import ConnectionConfig, MqttTransport
from edge_agent.protocol import Tensor, Topics
from mesh.compute._backend import TIER_LABEL
from mesh.edge.broker._broker import MosquittoBroker, free_port
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.brokers import mosquitto, unique  # noqa: F401
from tests.support.cli import mesh_cli
from tests.support.faketime import require_faketime, skewed_env
from tests.support.replica_process import ReplicaProcess
from tests.support.serving import running_gateway

pytestmark = pytest.mark.timeout(300)

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


def settled(process: Any, count: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
    """``/stats`` once ``count`` of it reaches REQUESTS (a replica counts a request just
    after its reply is out), or after 5 s."""
    doc = stats(process)
    for _ in range(100):
        if count(doc) >= REQUESTS:
            break
        time.sleep(0.05)
        doc = stats(process)
    return doc


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


@pytest.mark.mqtt
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
            assert settled(process, lambda s: s["requests"])["requests"] >= REQUESTS
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
            mqtt = settled(process, lambda s: s["mqtt"]["requests"] + s["mqtt"]["expired"])["mqtt"]
            assert mqtt["expired"] == 0 and mqtt["requests"] == REQUESTS
            # The replica's clock really is off: its estimate of the agent's clock
            # (this process's) minus its own.
            assert mqtt["clock_offsets_s"][AGENT] == pytest.approx(-skew, abs=5.0)
    finally:
        transport.stop()
    assert failures == []


# ---------------------------------------------------------------- a Ray node minutes ahead

RAY = str(Path(sys.executable).with_name("ray"))

#: A driver on this host's true clock: the node probes, polled until every node answered.
PROBE_SCRIPT = """
import json, logging, sys, time
import ray
from mesh.compute._backend import NodeInfo
from mesh.ray._probe import RayNodeProbe
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
ray.init(address=sys.argv[1], logging_level="ERROR")

def nodes():
    return [
        NodeInfo(n["NodeID"], n["Alive"], n.get("Labels", {}), n["Resources"],
                 address=n["NodeManagerAddress"], is_head=n.get("Labels", {}).get(
                     "mesh.tier") == "cloud")
        for n in ray.nodes()
    ]

probe = RayNodeProbe(nodes, timeout_s=30.0)
for _ in range(20):
    if len(probe.sample()) >= 2 and len(probe.clocks.offsets()) >= 2:
        break
    time.sleep(0.5)
probe.sample()
print(json.dumps(probe.clocks.offsets()))
probe.close()
"""


def _ray_processes(port: int) -> list[psutil.Process]:
    """This host's processes of the cluster whose GCS is on ``port`` (and their children)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(
            part.endswith(f":{port}") or part == f"--gcs_server_port={port}" for part in cmdline
        ):
            found[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in proc.children(recursive=True)})
    return list(found.values())


@pytest.fixture
def head(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Ray head on loopback (token auth, the cloud label) on this host's clock; ended by pid."""
    pytest.importorskip("ray")
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    command = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
               f"--labels={TIER_LABEL}=cloud", "--num-cpus=1", "--include-dashboard=false",
               f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
               "--disable-usage-stats"]  # fmt: skip
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"address": f"127.0.0.1:{port}", "port": port, "token": token, "env": env}
    finally:
        procs = _ray_processes(port)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)


@pytest.mark.ray
def test_a_ray_node_minutes_ahead_is_named_with_its_skew(
    head: dict[str, Any], tmp_path: Path
) -> None:
    require_faketime(SKEW_S)
    env = {**os.environ, "MESH_DATA_DIR": str(tmp_path / "fog-data"), "COLUMNS": "200"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    skewed = {**env, **skewed_env(SKEW_S)}
    joined = mesh_cli(skewed, "node", "join", head["address"], "--tier", "fog",
                      "--site", "skewed", "--cpus", "1", "--node-ip", "127.0.0.1",
                      "--token-file", str(head["token"]))  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr
    try:
        driver = {**head["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        done = subprocess.run(
            [sys.executable, "-c", PROBE_SCRIPT, head["address"]],
            env=driver,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        offsets: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        left = mesh_cli(env, "node", "leave")
        assert left.returncode == 0, left.stdout + left.stderr
    fog = [o for host, o in offsets.items() if "(fog node" in host]
    cloud = [o for host, o in offsets.items() if "(cloud node" in host]
    assert fog == [pytest.approx(SKEW_S, abs=5.0)] and cloud == [pytest.approx(0.0, abs=5.0)]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING host")]
    # One line, naming the host and its skew (the code before: no clock reading at all).
    assert len(warnings) == 1, done.stderr[-3000:]
    assert "(fog node " in warnings[0] and "its clock is +" in warnings[0]
    assert "set its time (NTP)" in warnings[0]
