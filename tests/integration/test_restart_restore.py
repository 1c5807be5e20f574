"""A restart restores what served: `kill -9` of the control plane, `mesh up`, infer with a pre-crash token.

The real `mesh up` daemon (Ray, the embedded broker, the gateway) in subprocesses.
A module deployed and killed at once (before any placement round could record
it) serves again after `mesh up`, which says so; so does it after a clean
`mesh down` / `mesh up`. Each start backs the sound store up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mesh.runtime._daemon import pid_alive
from tests.support.cli import env, mesh_cli  # noqa: F401  (env: the CLI environment fixture)

pytest.importorskip("onnx")
pytest.importorskip("tritonclient.http")
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(480)]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _daemon(data: Path) -> tuple[int, str]:
    record = json.loads((data / "cluster.json").read_text())
    return int(record["pid"]), str(record["gateway_url"])


def _kill_9(pid: int) -> None:
    """``kill -9`` the control plane; returns once it is gone (30 s at most)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)


def _infer(gateway_url: str, token: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=gateway_url.removeprefix("http://"))
    try:
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(
            "vehicle-counter", [inp], headers={"Authorization": f"Bearer {token}"}
        )
        out: np.ndarray = result.as_numpy(result.get_response()["outputs"][0]["name"])
        return out
    finally:
        client.close()


def test_kill_9_then_mesh_up_serves_the_module_with_a_pre_crash_token(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    from tests.support.agent_fixtures import build_cnn

    model = build_cnn(tmp_path / "counter.onnx")
    data = Path(env["MESH_DATA_DIR"])
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]

    _ok(mesh_cli(env, "up"))
    _ok(mesh_cli(env, "models", "register", "vehicle-counter", str(model), "--code-version", "1"))
    _ok(mesh_cli(env, "models", "promote", "vehicle-counter", "v1"))
    # With a drift check and a canary: the lifecycle tracks it again after each restart.
    lifecycle = ["--drift", '{"statistic": "outputs", "threshold": 3}', "--canary", "{}"]
    _ok(mesh_cli(env, "modules", "deploy", "vehicle-counter", "--tier", "fog", "--replicas", "1",
                 *lifecycle))  # fmt: skip
    token = _ok(mesh_cli(env, "tokens", "create", "x", "--scope", "invoke")).strip()
    pid, gateway_url = _daemon(data)
    np.testing.assert_allclose(_infer(gateway_url, token, x), expected, rtol=1e-4, atol=1e-5)

    # The crash, right after the deploy answered: no placement round has to have run.
    orphans = psutil.Process(pid).children(recursive=True)
    try:
        _kill_9(pid)

        up = _ok(mesh_cli(env, "up"))
        assert "module vehicle-counter v1 on fog: serving" in up, up
        new_pid, gateway_url = _daemon(data)
        assert new_pid != pid
        np.testing.assert_allclose(_infer(gateway_url, token, x), expected, rtol=1e-4, atol=1e-5)
        listed = json.loads(_ok(mesh_cli(env, "modules", "list", "--json")))
        assert [(m["module"], m["status"]) for m in listed] == [("vehicle-counter", "serving")]
        metrics = urllib.request.Request(
            f"{gateway_url}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(metrics, timeout=30) as response:
            text = response.read().decode()
        assert 'mesh_restore_modules{state="serving"} 1.0' in text
        assert 'mesh_restore_modules{state="failed"} 0.0' in text

        # A clean restart restores it too.
        _ok(mesh_cli(env, "down"))
        up = _ok(mesh_cli(env, "up"))
        assert "module vehicle-counter v1 on fog: serving" in up, up
        _, gateway_url = _daemon(data)
        np.testing.assert_allclose(_infer(gateway_url, token, x), expected, rtol=1e-4, atol=1e-5)
    finally:
        for p in orphans:  # the killed daemon's Ray processes, when they outlive it
            with contextlib.suppress(psutil.Error):
                p.kill()

    # Each restart backed the sound store up (the first start found none yet).
    assert len(list((data / "backups").glob("mesh-*.db"))) == 2
    log = (data / "cluster.log").read_text()
    assert "could not restore" not in log and "KeyError: 'pydantic.v1'" not in log
    resumed = "lifecycle tracking resumed after a restart: {'vehicle-counter': ['drift', "
    assert log.count(resumed) == 2, log[-3000:]


def test_a_broker_port_taken_at_the_first_start_stays_the_broker_port_after_a_crash(
    env: dict[str, str],  # noqa: F811
) -> None:
    """Agents were told the free port the broker took instead: a restart must keep it.

    Before, the restarted control plane bound the port asked for (free again by
    then), and an agent told the fallback port never found its broker again (a
    fresh-clone CI run lost the chaos agent so).
    """
    import socket

    data = Path(env["MESH_DATA_DIR"])
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    asked = holder.getsockname()[1]
    env = {**env, "MESH_EMBEDDED_BROKER_PORT": str(asked)}
    try:
        _ok(mesh_cli(env, "up"))
    finally:
        holder.close()  # the asked-for port is free from here on
    record = json.loads((data / "cluster.json").read_text())
    pid, first = int(record["pid"]), str(record["broker_url"])
    assert not first.endswith(f":{asked}"), first  # it took another port
    orphans = psutil.Process(pid).children(recursive=True)
    try:
        _kill_9(pid)
        _ok(mesh_cli(env, "up"))
        again = str(json.loads((data / "cluster.json").read_text())["broker_url"])
        assert again == first, (first, again)
        _ok(mesh_cli(env, "down"))
    finally:
        for p in orphans:  # the killed daemon's Ray processes, when they outlive it
            with contextlib.suppress(psutil.Error):
                p.kill()
