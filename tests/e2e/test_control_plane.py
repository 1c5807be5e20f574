"""The README's serving commands, as a user runs them: `mesh up` to `mesh down` in subprocesses.

mesh up -> mesh models register / promote -> mesh modules deploy --tier fog -> tritonclient
through the gateway (checked against ONNX Runtime here) -> 401 without a token -> mesh modules
list -> mesh modules undeploy -> mesh down.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mesh.runtime._daemon import pid_alive
from tests.support.cli import mesh_cli

pytest.importorskip("onnx")
pytest.importorskip("tritonclient.http")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_up_register_deploy_infer_undeploy_down(env: dict[str, str], tmp_path: Path) -> None:
    import onnxruntime as ort
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from tests.support.agent_fixtures import build_cnn

    model = build_cnn(tmp_path / "counter.onnx")
    data = Path(env["MESH_DATA_DIR"])

    modules_down = mesh_cli(env, "modules", "list")
    assert modules_down.returncode == 1 and "mesh up" in modules_down.stderr

    started = time.monotonic()
    up = _ok(mesh_cli(env, "up"))
    up_s = time.monotonic() - started
    record = json.loads((data / "cluster.json").read_text())
    gateway_url = record["gateway_url"]
    assert gateway_url == f"http://127.0.0.1:{env['MESH_GATEWAY_PORT']}"
    assert (
        gateway_url in up
        and record["broker_url"] in up
        and record["broker_url"].startswith("mqtt://127.0.0.1:")
    )
    assert {n["tier"] for n in record["nodes"]} == {"cloud", "fog"}

    _ok(
        mesh_cli(
            env,
            "models",
            "register",
            "vehicle-counter",
            str(model),
            "--code-version",
            "1",
            "--metric",
            "val_mae=0.7",
            "--mode",
            "min",
        )
    )
    _ok(mesh_cli(env, "models", "promote", "vehicle-counter", "v1"))

    unknown = mesh_cli(env, "modules", "deploy", "no-such-model", "--tier", "fog")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no-such-model" in unknown.stderr

    started = time.monotonic()
    deployed = _ok(
        mesh_cli(
            env,
            "modules",
            "deploy",
            "vehicle-counter",
            "--version",
            "production",
            "--tier",
            "fog",
            "--replicas",
            "1",
        )
    )
    deploy_s = time.monotonic() - started
    assert "deployed vehicle-counter v1 on fog (epoch 1)" in deployed

    token = _ok(mesh_cli(env, "tokens", "create", "x", "--scope", "invoke")).strip()
    x = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    client = triton.InferenceServerClient(url=gateway_url.removeprefix("http://"))
    try:
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(
            "vehicle-counter", [inp], headers={"Authorization": f"Bearer {token}"}
        )
        np.testing.assert_allclose(
            result.as_numpy(result.get_response()["outputs"][0]["name"]),
            expected,
            rtol=1e-4,
            atol=1e-5,
        )
        assert result.get_response()["model_version"] == "v1"
        with pytest.raises(InferenceServerException, match="401"):
            client.infer("vehicle-counter", [inp])
    finally:
        client.close()

    listed = _ok(mesh_cli(env, "modules", "list", "--json"))
    (module,) = json.loads(listed)
    assert (module["module"], module["version"], module["tier"], module["epoch"]) == (
        "vehicle-counter",
        "v1",
        "fog",
        1,
    )
    fog = {n["node_id"] for n in record["nodes"] if n["tier"] == "fog"}
    primaries = [r for r in module["replicas"] if not r["state"].startswith("standby")]
    assert [r["node"] in fog and r["state"] == "serving" for r in primaries] == [True]
    assert "vehicle-counter" in _ok(mesh_cli(env, "modules", "list"))

    assert "undeployed vehicle-counter" in _ok(
        mesh_cli(env, "modules", "undeploy", "vehicle-counter")
    )
    assert "no modules served" in _ok(mesh_cli(env, "modules", "list"))

    down = _ok(mesh_cli(env, "down"))
    assert f"stopped the cluster process {record['pid']}" in down
    assert not (data / "cluster.json").exists() and not pid_alive(record["pid"])
    print(f"mesh up {up_s:.1f} s, mesh modules deploy {deploy_s:.1f} s")
