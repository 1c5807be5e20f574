"""The mesh across the test bed's hosts, on the production path of issue 16 (item 3a, fog).

In ``cloud``: the Ray head (``ray start --head --labels mesh.tier=cloud``, token
auth, on 10.77.0.10) and ``mesh up`` against it (``MESH_RAY_ADDRESS``, the
gateway on ``MESH_GATEWAY_HOST=10.77.0.10``, the embedded broker). ``fog-0`` and
``fog-1`` join with ``mesh node join``. A model registered and deployed to fog
through the CLI serves from a replica in a fog host, on that host's address;
the ``client`` host infers through the gateway with a token (tritonclient), and
every answer crosses the cloud-fog link (15 ms one way): no request is faster
than its round trip. ``mesh down`` and ``mesh node leave`` (after which no
process runs in a fog host) end it; the test bed ends the head's processes
(``ray start`` leaves them running) and removes the hosts.

Item 3(e), for fog: the control plane killed with ``kill -9`` and started again
with ``mesh up`` serves the deployment it had, from its store, to a client
holding a token made before the crash (the set-up: tests/support/multihost.py).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.multihost import FOG, Mesh, mesh_in
from tests.support.multihost import running_mesh as start_mesh
from tests.support.multihost_client import client_input, infer_from_client
from tests.support.readme_runs import readme_drift
from tests.support.testbed import TestBed, _netns

pytest.importorskip("ray")
pytest.importorskip("onnx")
pytest.importorskip("tritonclient.http")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "vehicle-counter"
REQUESTS = 20


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Head and control plane in cloud, both fog hosts joined (tests/support/multihost.py)."""
    with start_mesh(tmp_path_factory.mktemp("mesh-fog")) as mesh:
        yield mesh


def test_mesh_status_lists_the_head_and_both_fog_hosts(running_mesh: Mesh) -> None:
    """`mesh status` on the cloud host, a driver of the external cluster, sees every node."""
    out = mesh_in(running_mesh.bed, "cloud", running_mesh.cloud_env, "status")
    assert f"cluster {running_mesh.head}" in out, out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    alive = [(row[1], row[2]) for row in rows if len(row) == 8 and row[3] == "yes"]
    assert sorted(alive) == [
        ("cloud", "-"),
        ("fog", "fog-0"),
        ("fog", "fog-1"),
    ], out


def test_a_client_infers_through_the_gateway_to_a_fog_replica(
    running_mesh: Mesh, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import numpy as np
    import onnxruntime as ort

    from tests.support.agent_fixtures import build_cnn

    bed, env = running_mesh.bed, running_mesh.cloud_env
    model = build_cnn(tmp_path / "counter.onnx")
    mesh_in(bed, "cloud", env, "models", "register", MODEL, str(model), "--code-version", "1")
    mesh_in(bed, "cloud", env, "models", "promote", MODEL, "v1")
    mesh_in(bed, "cloud", env, "modules", "deploy", MODEL, "--tier", "fog", "--replicas", "1")
    token = mesh_in(bed, "cloud", env, "tokens", "create", "client", "--scope", "invoke").strip()

    # The replica runs in a fog host and listens on that host's address.
    listed = json.loads(mesh_in(bed, "cloud", env, "modules", "list", "--json"))
    assert [(m["module"], m["status"]) for m in listed] == [(MODEL, "serving")], listed
    fog_ips = {bed.address(host) for host in FOG}
    urls = [e["url"] for m in listed for e in [*m["endpoints"], *m.get("standby", [])]]
    hosts = {urllib.parse.urlsplit(url).hostname for url in urls}
    assert hosts and hosts <= fog_ips, f"replicas advertise {hosts}, fog hosts are {fog_ips}"

    gateway = running_mesh.gateway_url.removeprefix("http://")
    assert gateway.startswith(bed.address("cloud") + ":"), gateway
    run = infer_from_client(bed, gateway, token, MODEL, REQUESTS)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: client_input()})[0]
    np.testing.assert_allclose(run.out, expected, rtol=1e-4, atol=1e-5)

    # client -> cloud has no delay; gateway -> fog pays the cloud-fog round trip.
    shape = bed.plan.shape("cloud", "fog-0")
    rtt_floor_ms = 2 * (shape.delay_ms - shape.jitter_ms)
    assert min(run.ms) >= rtt_floor_ms - 1.0, run.ms
    assert statistics.median(run.ms) >= 2 * shape.delay_ms - 1.0, run.ms
    print(f"client -> gateway -> fog: p50 {statistics.median(run.ms):.1f} ms, "
          f"min {min(run.ms):.1f} ms, link RTT {2 * shape.delay_ms:g} ms")  # fmt: skip

    # README's commands for a cloud and fog hosts are the ones run here.
    assert readme_drift(request.node.nodeid, bed.ran) == []

    # The embedded broker is on cloud's loopback: the fog replicas serve HTTP only, and say so.
    log = (Path(env["MESH_DATA_DIR"]) / "cluster.log").read_text()
    assert "so they serve HTTP only" in log


def _replica_processes(bed: TestBed) -> dict[str, list[int]]:
    """The replica actors' processes alive in each fog host (Ray titles them ``ray::ReplicaActor``)."""
    found: dict[str, list[int]] = {}
    for host in FOG:
        found[host] = []
        for pid in _netns.pids(bed.namespace(host)):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ReplicaActor" in title and _netns.alive(pid):
                found[host].append(pid)
    return found


def test_kill_9_of_the_control_plane_then_mesh_up_serves_again_with_a_pre_crash_token(
    running_mesh: Mesh, tmp_path: Path
) -> None:
    """Issue 16, 3(e) for fog: the store brings back the deployment and routes in the cluster.

    The control plane is a driver of the external cluster: its replicas in fog end
    with it (they are its actors), and `mesh up` starts them again from the store,
    on a fog host, with no replica left over from before the crash.
    """
    import numpy as np
    import onnxruntime as ort

    from tests.support.agent_fixtures import build_cnn

    bed, env, model_name = running_mesh.bed, running_mesh.cloud_env, "restart-counter"
    model = build_cnn(tmp_path / "counter.onnx")
    mesh_in(bed, "cloud", env, "models", "register", model_name, str(model), "--code-version", "1")
    mesh_in(bed, "cloud", env, "models", "promote", model_name, "v1")
    mesh_in(bed, "cloud", env, "modules", "deploy", model_name, "--tier", "fog", "--replicas", "1")
    token = mesh_in(bed, "cloud", env, "tokens", "create", "pre-crash", "--scope", "invoke")
    token = token.strip()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: client_input()})[0]
    before = infer_from_client(bed, running_mesh.gateway_url, token, model_name, 3)
    np.testing.assert_allclose(before.out, expected, rtol=1e-4, atol=1e-5)

    record = Path(env["MESH_DATA_DIR"]) / "cluster.json"
    pid = int(json.loads(record.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _netns.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _netns.alive(pid)
    # Its actors end with their driver: no replica of the crashed control plane serves on.
    deadline = time.monotonic() + 60
    while any(_replica_processes(bed).values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_replica_processes(bed).values()), _replica_processes(bed)

    began = time.monotonic()
    up = mesh_in(bed, "cloud", env, "up")
    assert f"module {model_name} v1 on fog: serving" in up, up
    gateway_url = str(json.loads(record.read_text())["gateway_url"])
    after = infer_from_client(bed, gateway_url, token, model_name, 3)
    took = time.monotonic() - began
    np.testing.assert_allclose(after.out, expected, rtol=1e-4, atol=1e-5)
    listed = json.loads(mesh_in(bed, "cloud", env, "modules", "list", "--json"))
    served = {m["module"]: m for m in listed}
    assert served[model_name]["status"] == "serving", listed
    fog_ips = {bed.address(host) for host in FOG}
    hosts = {urllib.parse.urlsplit(e["url"]).hostname for e in served[model_name]["endpoints"]}
    assert hosts and hosts <= fog_ips, hosts
    # One replica and at most one warm standby per module deployed here, nothing more.
    replicas = sum(len(pids) for pids in _replica_processes(bed).values())
    assert 1 <= replicas <= 2 * len(served), _replica_processes(bed)
    print(f"kill -9 of the control plane -> mesh up -> first answer: {took:.1f} s")
