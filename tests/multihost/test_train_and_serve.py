"""Train on cloud, serve on fog and edge, infer from the client host (issue 16, item 3a).

The mesh of test_mesh_edge.py (Ray head, ``mesh up`` and a TLS Mosquitto in
``cloud``; ``fog-0``/``fog-1`` joined; an enrolled agent in each edge host).
The traffic app's training functions run as a user runs them: ``mesh deploy
functions/traffic/app.py`` then ``mesh invoke train_counter`` and ``mesh
invoke train_forecaster`` (tier cloud; tiny budgets). The run store records
where each ran: the cloud head, never a fog host. Each ONNX export becomes a
new version in the control plane's registry: the forecaster's registered by
its own run (``register=true``, as scenarios/traffic.yaml trains it; the
worker is told the driver's data dir), the counter's with ``mesh models
register`` and the run in its lineage. Both promoted and deployed: the
counter on the three agents (pinned), the forecaster on fog.
tritonclient in ``client`` then infers both through the gateway, and the
answers are ONNX Runtime's on the same exports.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.multihost import EDGE, FOG, Mesh, mesh_in
from tests.support.multihost import running_mesh as start_mesh
from tests.support.multihost_client import client_input, infer_from_client
from tests.support.multihost_edge import deploy_on_agents, edge_module
from tests.support.testbed._bed import ROOT

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("tritonclient.http")
pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(900)]

COUNTER, FORECASTER = "vehicle-counter", "flow-forecaster"
#: Tiny budgets: what is tested is where training runs and what serves its export.
TRAIN_ARGS = {
    "train_counter": ["train_size=128", "val_size=32", "epochs=1", "width=8"],
    "train_forecaster": ["minutes=600", "epochs=2", "lags=8", "register=true"],
}
#: Each model's input name and the shape the client sends.
INPUTS = {COUNTER: ("occupancy", (2, 4, 2, 64)), FORECASTER: ("counts", (2, 4, 8))}


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Head, control plane and Mosquitto in cloud, fog joined, agents in edge-1..3."""
    with start_mesh(tmp_path_factory.mktemp("train-serve"), broker="mosquitto-tls",
                    agents=EDGE) as mesh:  # fmt: skip
        yield mesh


def _head_node(mesh: Mesh) -> tuple[str, set[str]]:
    """From `mesh status`: the head's node id prefix, and the fog nodes' prefixes."""
    out = mesh_in(mesh.bed, "cloud", mesh.cloud_env, "status")
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    rows = [row for row in rows if len(row) == 8 and row[3] == "yes"]
    heads = [row[0] for row in rows if row[7] == "yes" and row[1] == "cloud"]
    assert len(heads) == 1, out
    return heads[0], {row[0] for row in rows if row[1] == "fog"}


def _train_on_cloud(mesh: Mesh, function: str, out_dir: Path) -> dict[str, Any]:
    """``mesh invoke FUNCTION --json`` in cloud; the ModelRef and the run recorded for it."""
    from mesh.compute._runs import SQLiteStore

    args = [a for arg in [f"out_dir={out_dir}", *TRAIN_ARGS[function]] for a in ("--arg", arg)]
    out = mesh_in(mesh.bed, "cloud", mesh.cloud_env, "invoke", function, "--json", *args)
    ref: dict[str, Any] = json.loads(out)
    store = SQLiteStore(Path(mesh.cloud_env["MESH_DATA_DIR"]) / "mesh.db")
    try:
        runs = store.list_runs(function=function)
    finally:
        store.close()
    assert len(runs) == 1, runs
    ref["run"] = runs[0]
    return ref


def _register(mesh: Mesh, ref: dict[str, Any]) -> str:
    """The export's version in the control plane's registry, promoted.

    Registered by its run when it says so (``registered_version``), else with
    ``mesh models register``, its run and data in the lineage.
    """
    bed, env = mesh.bed, mesh.cloud_env
    if ref["registered_version"] is not None:
        out = mesh_in(bed, "cloud", env, "models", "show", ref["model"],
                      "--version", ref["registered_version"], "--json")  # fmt: skip
        version = json.loads(out)
        assert version["sha256"] == ref["sha256"], version
        mesh_in(bed, "cloud", env, "models", "promote", ref["model"], version["version"])
        return str(version["version"])
    metric = f"val_mae={ref['metrics']['val_mae']}"
    out = mesh_in(bed, "cloud", env, "models", "register", ref["model"], ref["onnx_path"],
                  "--code-version", ref["code_version"], "--metric", metric, "--mode", "min",
                  "--run-id", ref["run"].id, "--data-id", ref["data_id"], "--json")  # fmt: skip
    version = json.loads(out)
    assert version["sha256"] == ref["sha256"], version
    assert version["lineage"]["run_id"] == ref["run"].id, version
    mesh_in(bed, "cloud", env, "models", "promote", ref["model"], version["version"])
    return str(version["version"])


def _expected(ref: dict[str, Any]) -> Any:
    import onnxruntime as ort

    name, shape = INPUTS[ref["model"]]
    session = ort.InferenceSession(ref["onnx_path"], providers=["CPUExecutionProvider"])
    return session.run(None, {name: client_input(shape)})[0]


def test_trained_on_the_cloud_head_served_on_fog_and_on_the_agents(running_mesh: Mesh) -> None:
    import numpy as np

    mesh, bed, env = running_mesh, running_mesh.bed, running_mesh.cloud_env
    mesh_in(bed, "cloud", env, "deploy", str(ROOT / "functions" / "traffic" / "app.py"))
    head, fog_nodes = _head_node(mesh)
    refs = {}
    for function in TRAIN_ARGS:
        ref = _train_on_cloud(mesh, function, mesh.work / "exports")
        run = ref["run"]
        # Where it ran, as the run store recorded it: the head in cloud, not a fog host.
        assert run.status.value == "succeeded", run
        assert run.node_labels.get("mesh.tier") == "cloud", run
        assert run.node_id is not None and run.node_id[:8] == head, (run.node_id, head)
        assert run.node_id[:8] not in fog_nodes
        refs[ref["model"]] = ref
        print(f"{function}: run {run.id[:8]} on the cloud head {head} in {run.duration_s:.1f} s, "
              f"val_mae {ref['metrics']['val_mae']:.2f}")  # fmt: skip

    versions = {model: _register(mesh, ref) for model, ref in refs.items()}
    assert versions == {COUNTER: "v1", FORECASTER: "v1"}, versions
    deploy_on_agents(mesh, COUNTER, EDGE)
    mesh_in(bed, "cloud", env, "modules", "deploy", FORECASTER, "--tier", "fog",
            "--replicas", "1")  # fmt: skip
    token = mesh_in(bed, "cloud", env, "tokens", "create", "client", "--scope", "invoke").strip()

    listed = {m["module"]: m for m in json.loads(mesh_in(bed, "cloud", env, "modules", "list",
                                                         "--json"))}  # fmt: skip
    for agent in EDGE:
        module = listed[edge_module(COUNTER, agent)]
        assert (module["tier"], module["status"], module["version"]) == ("edge", "serving", "v1")
        assert [e["agent_id"] for e in module["endpoints"]] == [agent], module
    forecaster = listed[FORECASTER]
    assert (forecaster["status"], forecaster["version"]) == ("serving", "v1"), forecaster
    hosts = {urllib.parse.urlsplit(e["url"]).hostname for e in forecaster["endpoints"]}
    assert hosts and hosts <= {bed.address(h) for h in FOG}, hosts

    # The client host infers both through the gateway: fog, and an edge agent over MQTT.
    targets = {FORECASTER: FORECASTER, COUNTER: edge_module(COUNTER, EDGE[0])}
    for model, module in targets.items():
        name, shape = INPUTS[model]
        run = infer_from_client(bed, mesh.gateway_url, token, module, 5, timeout_s=180,
                                input_name=name, shape=shape)  # fmt: skip
        np.testing.assert_allclose(run.out, _expected(refs[model]), rtol=1e-4, atol=1e-4)
        print(f"client -> gateway -> {module}: {[round(ms, 1) for ms in run.ms]} ms")
