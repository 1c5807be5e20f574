"""The control plane killed and started again, with agents on the edge hosts (issue 16, item 3e).

The mesh of test_mesh_edge.py: Ray head, ``mesh up`` and a TLS Mosquitto in
``cloud``, fog joined, an enrolled agent in each edge host, a counter
deployed on each agent (pinned). The control plane is killed with ``kill
-9``. By design its gateway and replicas end with it (they are its threads
and its Ray actors); the broker and the agents run on, and each agent keeps
serving its cached module. ``mesh up`` again on cloud restores from the store
and from what the agents report: ``mesh agents list`` shows the three agents
online, each counter is known on its agent at the same version and still
pinned there (restored, not installed again: no agent downloads its model twice, and none restarted), and
the client host infers through the new gateway to an edge agent with a token
made before the crash.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.multihost import EDGE, Mesh, mesh_in
from tests.support.multihost import running_mesh as start_mesh
from tests.support.multihost_client import client_input, infer_from_client
from tests.support.multihost_edge import deploy_on_agents, edge_module
from tests.support.testbed import _netns

pytest.importorskip("ray")
pytest.importorskip("onnx")
pytest.importorskip("tritonclient.http")
pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "restart-counter"
#: What the agent logs when it downloads and installs a module (edge_agent/_cache.py).
INSTALLED = ": installed "


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Head, control plane and Mosquitto in cloud, fog joined, agents in edge-1..3."""
    with start_mesh(tmp_path_factory.mktemp("restart-agents"), broker="mosquitto-tls",
                    agents=EDGE) as mesh:  # fmt: skip
        yield mesh


def _agents(mesh: Mesh) -> dict[str, str]:
    """Each agent's health as `mesh agents list` reports it live from the broker."""
    listed = json.loads(mesh_in(mesh.bed, "cloud", mesh.cloud_env, "agents", "list", "--json",
                                "--wait-s", "15"))  # fmt: skip
    assert listed["live"], listed
    return {a["agent_id"]: a["health"] for a in listed["agents"]}


def _on_agents(mesh: Mesh) -> dict[str, tuple[str, str, list[str]]]:
    """The counters `mesh modules list` knows: (version, status, agents) by module."""
    listed = json.loads(mesh_in(mesh.bed, "cloud", mesh.cloud_env, "modules", "list", "--json"))
    return {
        m["module"]: (m["version"], m["status"], [e["agent_id"] for e in m["endpoints"]])
        for m in listed
        if m["module"].startswith(f"{MODEL}-")
    }


def test_kill_9_of_the_control_plane_then_mesh_up_restores_the_agents_and_their_modules(
    running_mesh: Mesh, tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime as ort

    from tests.support.agent_fixtures import build_cnn

    mesh, bed, env = running_mesh, running_mesh.bed, running_mesh.cloud_env
    model = build_cnn(tmp_path / "counter.onnx")
    mesh_in(bed, "cloud", env, "models", "register", MODEL, str(model), "--code-version", "1")
    mesh_in(bed, "cloud", env, "models", "promote", MODEL, "v1")
    deploy_on_agents(mesh, MODEL, EDGE)
    token = mesh_in(bed, "cloud", env, "tokens", "create", "pre-crash", "--scope", "invoke")
    token = token.strip()
    expected_modules = {edge_module(MODEL, a): ("v1", "serving", [a]) for a in EDGE}
    assert _on_agents(mesh) == expected_modules
    assert _agents(mesh) == dict.fromkeys(EDGE, "online")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: client_input()})[0]
    target = edge_module(MODEL, EDGE[0])
    before = infer_from_client(bed, mesh.gateway_url, token, target, 3, timeout_s=180)
    np.testing.assert_allclose(before.out, expected, rtol=1e-4, atol=1e-5)
    for agent in EDGE:  # each downloaded its model once
        assert mesh.agents[agent].log().count(INSTALLED) == 1, mesh.agents[agent].log()[-3000:]
    pids = {a: mesh.agents[a].pid for a in EDGE}
    logs = {a: len(mesh.agents[a].log()) for a in EDGE}

    record = Path(env["MESH_DATA_DIR"]) / "cluster.json"
    pid = int(json.loads(record.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _netns.alive(pid) and time.monotonic() < deadline:  # bounded by the deadline
        time.sleep(0.1)
    assert not _netns.alive(pid)

    began = time.monotonic()
    up = mesh_in(bed, "cloud", env, "up")
    # `mesh up` waited for each recorded module and says it serves again.
    restored = [line.split() for line in up.splitlines() if line.strip().startswith("module ")]
    said = {words[1]: (words[2], words[-1]) for words in restored}
    assert said == {edge_module(MODEL, a): ("v1", "serving") for a in EDGE}, up
    gateway_url = str(json.loads(record.read_text())["gateway_url"])
    after = infer_from_client(bed, gateway_url, token, target, 3, timeout_s=180)
    took = time.monotonic() - began
    np.testing.assert_allclose(after.out, expected, rtol=1e-4, atol=1e-5)

    # The agent registry: the three agents online again, as they report to the new control plane.
    assert _agents(mesh) == dict.fromkeys(EDGE, "online")
    # The deployments: each counter known on its agent, same version, serving.
    assert _on_agents(mesh) == expected_modules
    # The pins, from the store: each counter still pinned to, and placed on, its agent.
    doc = json.loads(mesh_in(bed, "cloud", env, "placements", "list", "--json"))
    placed = {m["module"]: ((m.get("pin") or {}).get("node"), m.get("node"))
              for m in doc["modules"] if m["module"].startswith(f"{MODEL}-")}  # fmt: skip
    assert placed == {edge_module(MODEL, a): (a, a) for a in EDGE}, doc
    # Restored, not installed again: the same agent processes, no second download.
    assert {a: mesh.agents[a].pid for a in EDGE} == pids
    for agent in EDGE:
        since = mesh.agents[agent].log()[logs[agent] :]
        assert INSTALLED not in since, f"{agent} installed its module again:\n{since[-3000:]}"
    print(f"kill -9 of the control plane -> mesh up -> first edge answer: {took:.1f} s")
