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
"""

from __future__ import annotations

import json
import statistics
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.multihost import FOG, Mesh, mesh_in
from tests.support.multihost import running_mesh as start_mesh

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


_INFER = """
import json, sys, time
import numpy as np
import tritonclient.http as triton

url, token, model, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
x = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
client = triton.InferenceServerClient(url=url, network_timeout=60.0)
inp = triton.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
ms, out = [], None
for _ in range(count):
    t0 = time.perf_counter()
    result = client.infer(model, [inp], headers={"Authorization": f"Bearer {token}"})
    ms.append((time.perf_counter() - t0) * 1000.0)
    out = result.as_numpy(result.get_response()["outputs"][0]["name"])
client.close()
print(json.dumps({"ms": ms, "out": out.tolist()}))
"""


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
    running_mesh: Mesh, tmp_path: Path
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
    done = bed.run(
        "client",
        [sys.executable, "-c", _INFER, gateway, token, MODEL, str(REQUESTS)],
        timeout_s=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(np.array(answer["out"]), expected, rtol=1e-4, atol=1e-5)

    # client -> cloud has no delay; gateway -> fog pays the cloud-fog round trip.
    shape = bed.plan.shape("cloud", "fog-0")
    rtt_floor_ms = 2 * (shape.delay_ms - shape.jitter_ms)
    assert min(answer["ms"]) >= rtt_floor_ms - 1.0, answer["ms"]
    assert statistics.median(answer["ms"]) >= 2 * shape.delay_ms - 1.0, answer["ms"]
    print(f"client -> gateway -> fog: p50 {statistics.median(answer['ms']):.1f} ms, "
          f"min {min(answer['ms']):.1f} ms, link RTT {2 * shape.delay_ms:g} ms")  # fmt: skip

    # The embedded broker is on cloud's loopback: the fog replicas serve HTTP only, and say so.
    log = (Path(env["MESH_DATA_DIR"]) / "cluster.log").read_text()
    assert "so they serve HTTP only" in log
