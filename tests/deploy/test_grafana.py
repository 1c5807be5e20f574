"""deploy/grafana/: the dashboard queries only metrics a running control plane exposes.

The dashboard's PromQL names are read out of its panels and variables; the names a
control plane exposes are read from a real `mesh up`'s ``/metrics`` (its ``# TYPE``
lines: a family is listed there before its first sample). The scrape config is
checked against the Kubernetes Service it points at.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._manifests import DEPLOY, find, kubernetes_docs
from tests.support.cli import env, mesh_cli  # noqa: F401  (env: the CLI environment fixture)

DASHBOARD = DEPLOY / "grafana" / "fogmesh.json"
SCRAPE = DEPLOY / "grafana" / "prometheus.yml"
#: A metric name in PromQL: the mesh's own prefix (Grafana's ``$__`` macros are not names).
_NAME = re.compile(r"\bmesh_[a-z0-9_]+\b")
#: The sample names each family type exposes (prometheus-client's text format 0.0.4).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables."""
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def queried_names(doc: dict[str, Any]) -> set[str]:
    """The metric names the dashboard's queries read."""
    return {name for expr in _queries(doc) for name in _NAME.findall(expr)}


def exposed_names(exposition: str) -> set[str]:
    """The sample names an exposition carries, from its ``# TYPE`` lines."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            # Counters' families come as ``x_total`` (prometheus-client >= 0.4) or ``x``.
            family = family.removesuffix("_total") if kind == "counter" else family
            names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    doc = _dashboard()
    assert doc["uid"] == "fogmesh" and doc["panels"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_dashboard_covers_what_an_operator_asks_for() -> None:
    """Latency per module, version and node against the SLO, rates, migrations, liveness."""
    names = queried_names(_dashboard())
    assert {
        "mesh_inference_latency_seconds_bucket",
        "mesh_module_slo_seconds",
        "mesh_inference_requests_total",
        "mesh_inference_errors_total",
        "mesh_migrations",
        "mesh_edge_agent_up",
    } <= names
    latency = [e for e in _queries(_dashboard()) if "mesh_inference_latency_seconds" in e]
    assert any("module, version, node" in e for e in latency), latency


def test_exposed_names_follow_each_family_type() -> None:
    text = (
        "# HELP a_total x\n# TYPE a counter\na_total 1.0\n"
        "# TYPE b histogram\n# TYPE c gauge\n# TYPE d_total counter\n"
    )
    assert exposed_names(text) == {"a_total", "b_bucket", "b_sum", "b_count", "c", "d_total"}


def test_the_scrape_config_reads_the_gateway_service_with_a_read_token() -> None:
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    ((target,),) = [c["targets"] for c in job["static_configs"]]
    host, port = target.rsplit(":", 1)
    service = find(kubernetes_docs(), "Service", host.split(".")[0])
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_metric_the_dashboard_queries_is_one_metrics_exposes(
    env: dict[str, str],  # noqa: F811
) -> None:
    _ok(mesh_cli(env, "up"))
    try:
        token = _ok(mesh_cli(env, "tokens", "create", "grafana", "--scope", "read")).strip()
        record = json.loads((Path(env["MESH_DATA_DIR"]) / "cluster.json").read_text())
        request = urllib.request.Request(
            f"{record['gateway_url']}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            exposed = exposed_names(response.read().decode())
    finally:
        _ok(mesh_cli(env, "down"))
    missing = sorted(queried_names(_dashboard()) - exposed)
    assert not missing, f"{DASHBOARD.name} queries metrics /metrics does not expose: {missing}"
