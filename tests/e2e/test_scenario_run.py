"""`mesh run` on the small traffic scenario, the vibration scenario (no simulation), and
`mesh demo` (the full traffic one, slow), end to end.

Real everything: the embedded broker, a local Ray cluster (cloud head + fog
node), edge agent processes running the trained counter CNN on camera frames
rendered from SUMO by the traffic plugin (or an ONNX model on replay files),
the fog stream function's outputs (signal plans applied through libsumo), the
fault timeline and the placement controller.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import ROOT, mesh_cli

pytestmark = [pytest.mark.ray, pytest.mark.mqtt]


def _require_sumo() -> None:
    if importlib.util.find_spec("libsumo") is None or importlib.util.find_spec("sumo") is None:
        reason = "SUMO is not installed (pip install 'fogmesh[sim]')"
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


def _scenario_copy(name: str, out: Path, tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "scenarios" / f"{name}.yaml").read_text())
    data["outputs"] = {"dir": str(out)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check_report(out: Path, stdout: str) -> dict[str, object]:
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    assert "data-chart=" in page and "drawCharts();" in page
    summary = report["summary"]
    # Every camera frame is answered by an event, wherever it ran (the notes say which not).
    assert summary["lost_events"] == 0, report["notes"]
    # Failed forecasts are lost requests, and each module has its own attainment.
    assert summary["lost_requests"] == sum(len(m["failed"]) for m in report["modules"].values())
    assert set(summary["slo_attainment_by_module"]) == set(report["modules"])
    assert report["events_sent"] > 0
    assert report["events_received"] >= report["events_sent"]
    adaptive = report["simulation"]["kpis"]["adaptive"]
    assert adaptive["arrivals"] > 0
    assert adaptive["teleports"] == 0
    assert report["modules"]["counter"]["samples"]
    for stage in (
        "infrastructure",
        "simulation (sumo-traffic)",
        "models",
        "agents",
        "roll-out",
        "live",
        "simulation KPIs",
    ):
        assert stage in stdout
    assert "report:" in stdout
    _check_story(report, stdout, out)
    return report


#: Lines of Ray's own that reached the console before they went to run.log.
_RAY_INTERNALS = ("core_worker.cc", "[state-dump]", "raylet", "INFO utils.py", "WARNING __init__")


def _check_story(report: dict[str, Any], stdout: str, out: Path) -> None:
    """The console narrates each fault and migration, and shows none of Ray's internals."""
    faults, migrations = report["faults"], report["migrations"]
    for fault in faults:
        target = str(fault["target"]).partition(":")[2] or fault["target"]
        assert f"s {fault['kind']} on " in stdout and str(target) in stdout, fault
    told = [line for line in stdout.splitlines() if " → " in line and line.strip().startswith("t=")]
    switched = [m for m in migrations if m["switch_s"] is not None]
    assert len(told) >= len(switched), (told, migrations)
    for internal in _RAY_INTERNALS:
        assert internal not in stdout, internal
    assert f"log: {out / 'run.log'}" in stdout.replace("\n", "")
    assert (out / "run.log").is_file()


@pytest.mark.timeout(900)
def test_small_scenario(env: dict[str, str], tmp_path: Path) -> None:
    _require_sumo()
    out = tmp_path / "out"
    scenario = _scenario_copy("small", out, tmp_path)
    result = mesh_cli(env, "run", str(scenario), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = _check_report(out, result.stdout)
    assert set(report["simulation"]["kpis"]) == {"adaptive", "fixed"}
    kinds = {f["kind"] for f in report["faults"]}
    assert kinds == {"cpu_hog", "link_delay"}
    # The hogged agent's site moved with its camera: a fog replica took the frames.
    assert report["events_by_route"].get("remote", 0) > 0, report["migrations"]
    # Both agents' processes and the hog are gone (ended by pid).
    assert "train_counter on cloud node" in result.stdout


@pytest.mark.timeout(600)
def test_scenario_without_a_simulation(env: dict[str, str], tmp_path: Path) -> None:
    """The vibration scenario: replay files on the agents, a fog stream, a CPU hog; no plugin."""
    out = tmp_path / "out"
    scenario = _scenario_copy("vibration", out, tmp_path)
    result = mesh_cli(env, "run", str(scenario), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["simulation"] is None
    assert "simulation (" not in result.stdout  # no plugin stage
    # Every frame of both machines' replay files is answered (250 each).
    assert report["events_sent"] == 500, report["notes"]
    assert report["summary"]["lost_events"] == 0, report["notes"]
    assert report["summary"]["lost_requests"] == 0
    assert report["summary"]["slo_attainment_by_module"]["rms"] is not None
    assert len(report["modules"]["rms"]["samples"]) >= 500
    # The fog stream function saw the faulty machine's band: it raised alarms.
    assert report["streams"]["alarms"] > 0
    assert [f["kind"] for f in report["faults"]] == ["cpu_hog"]
    assert 25.0 <= report["sim_seconds"] <= 31.0
    assert "data-chart=" in (out / "report.html").read_text()


def test_bad_scenario_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodules:\n  - name: counter\n    qos: {p95_ms: fast}\n")
    result = mesh_cli(env, "run", str(bad), timeout=120)
    assert result.returncode == 1
    assert "bad.yaml:4: modules[0].qos.p95_ms" in result.stderr
    assert not (ROOT / ".mesh" / "scenarios" / "bad").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_traffic(env: dict[str, str], tmp_path: Path) -> None:
    _require_sumo()
    out = tmp_path / "out"
    scenario = _scenario_copy("traffic", out, tmp_path)
    result = mesh_cli(env, "run", str(scenario), timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = _check_report(out, result.stdout)
    assert set(report["simulation"]["kpis"]) == {"adaptive", "fixed", "actuated", "delay_based"}
