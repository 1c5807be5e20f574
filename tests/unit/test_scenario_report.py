"""The scenario report: JSON keys, headline figures and a self-contained HTML page.

The traffic figures come from the SUMO plugin's section (its KPIs, summary and
plot), the rest from the mesh's harness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions.traffic.sim.kpis import ControllerKpis, traffic_section
from mesh.scenario import SimulationReport, write_report
from mesh.scenario._report import (
    FaultWindow,
    MigrationRecord,
    ModuleLatency,
    ScenarioReport,
    headline,
    percentile,
)


def _report() -> ScenarioReport:
    queue = [(float(t), float(t % 7)) for t in range(0, 120, 5)]
    report = ScenarioReport(
        name="small",
        sim_seconds=120.0,
        wall_seconds=30.0,
        modules={
            "counter": ModuleLatency(
                slo_ms=20.0, samples=[(float(t), 5.0 if t != 50 else 40.0) for t in range(100)]
            ),
            # One call answered in time, one failed: a failure misses the SLO.
            "forecaster": ModuleLatency(slo_ms=50.0, samples=[(60.0, 9.0)], failed=[120.0]),
        },
        migrations=[
            MigrationRecord(t=55.0, module="counter", site="A0", source="edge", target="fog-0")
        ],
        faults=[FaultWindow(kind="cpu_hog", target="agent:j-A0", start=40.0, end=70.0)],
        agent_cpu={"j-A0": [(float(t), 20.0) for t in range(0, 120, 10)]},
        events_sent=100,
        events_received=100,
        events_by_route={"local": 60, "remote": 40},
        over_slo_by_route={"local": 1},
    )
    traffic = {
        "adaptive": ControllerKpis(
            mean_wait_s=9.0, mean_time_loss_s=14.0, mean_trip_s=80.0, arrivals=90, queue=queue
        ),
        "fixed": ControllerKpis(
            mean_wait_s=30.0, mean_time_loss_s=40.0, mean_trip_s=110.0, arrivals=80
        ),
        "actuated": ControllerKpis(
            mean_wait_s=12.0, mean_time_loss_s=18.0, mean_trip_s=85.0, arrivals=88
        ),
        "delay_based": ControllerKpis(
            mean_wait_s=10.0, mean_time_loss_s=16.0, mean_trip_s=84.0, arrivals=89
        ),
    }
    section = traffic_section(traffic, report, subtitle="grid 2x2; demand peak", plots=True)
    report.simulation = SimulationReport(
        name="sumo-traffic",
        subtitle=section.subtitle,
        kpis={k: v.model_dump(mode="json") for k, v in traffic.items()},
        summary=dict(section.summary),
        headline=list(section.headline),
        title=section.title,
        html=section.html,
    )
    return report


def test_summary_compares_adaptive_with_the_best_non_fixed_baseline() -> None:
    s = _report().summary()
    assert s["best_baseline"] == "delay_based"
    assert s["adaptive_vs_best_baseline"] == pytest.approx(0.9)
    assert s["slo_attainment_pooled"] == pytest.approx(100 / 102)
    assert s["migrations"] == 1


def test_a_failed_request_is_lost_in_the_summary_and_the_headline() -> None:
    report = _report()
    assert report.summary()["lost_requests"] == 1  # the forecaster's failed call
    assert "lost requests: 1;" in headline(report)[-1]


def test_attainment_is_reported_per_module_not_only_pooled() -> None:
    report = _report()
    report.modules["camera"] = ModuleLatency(slo_ms=25.0, samples=[(1.0, 3.0)], lost_events=3)
    s = report.summary()
    assert s["slo_attainment_by_module"] == {
        "counter": pytest.approx(0.99),
        "forecaster": pytest.approx(0.5),
        "camera": pytest.approx(0.25),  # three inputs never answered miss the SLO
    }
    assert s["slo_attainment_worst"] == pytest.approx(0.25)
    assert s["lost_requests"] == 1  # lost events are not requests
    assert any(line.endswith("25.00% within SLO (3 events lost)") for line in headline(report))


def test_report_files(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path / "out")
    body = json.loads(paths.json.read_text())
    assert body["summary"]["lost_events"] == 0
    assert body["summary"]["lost_requests"] == 1
    assert body["summary"]["slo_attainment_by_module"]["forecaster"] == 0.5
    assert body["simulation"]["kpis"]["adaptive"]["mean_wait_s"] == 9.0
    assert "html" not in body["simulation"]  # the page has it, the JSON does not
    page = paths.html.read_text()
    # Drawn in the page by the dashboard's chart code, inlined: queues, each module's
    # latency, agent CPU.
    charts = page.count('data-chart="{&quot;series&quot;')
    assert charts == 2 + sum(1 for m in _report().modules.values() if m.samples), charts
    assert "function chart(series" in page and "drawCharts();" in page
    assert "src=" not in page and "href=" not in page  # self-contained
    assert "delay_based" in page and "cpu_hog" in page and "grid 2x2" in page
    assert "requests lost 1." in page


def test_time_loss_and_arrivals_are_compared_each_with_its_best_sumo_program() -> None:
    s = _report().summary()
    # delay_based waits least (10 s) and loses least (16 s); it also arrives most (89).
    assert s["adaptive_vs_best"] == {
        "mean_wait_s": pytest.approx(0.9),
        "mean_time_loss_s": pytest.approx(14.0 / 16.0, abs=1e-3),
        "arrivals": pytest.approx(90 / 89, abs=1e-3),
    }
    assert s["mean_time_loss_s"]["adaptive"] == 14.0 and s["arrivals"]["fixed"] == 80
    lines = headline(_report())
    assert (
        "time loss: adaptive 14.0 s, fixed 40.0 s, actuated 18.0 s, delay_based 16.0 s; "
        "arrivals: adaptive 90, fixed 80, actuated 88, delay_based 89" in lines
    )
    assert (
        "adaptive / best SUMO program (delay_based): waiting 0.90x, time loss 0.88x, "
        "arrivals 1.01x" in lines
    )


def test_each_measure_names_its_own_best_program_when_they_differ() -> None:
    from functions.traffic.sim.kpis import traffic_headline, traffic_summary

    kpis = {
        "adaptive": ControllerKpis(mean_wait_s=9, mean_time_loss_s=20, mean_trip_s=80, arrivals=99),
        "actuated": ControllerKpis(
            mean_wait_s=10, mean_time_loss_s=25, mean_trip_s=82, arrivals=100
        ),
        "delay_based": ControllerKpis(
            mean_wait_s=12, mean_time_loss_s=22, mean_trip_s=81, arrivals=97
        ),
    }
    last = traffic_headline(traffic_summary(kpis))[-1]
    assert last == (
        "adaptive / best SUMO program: waiting 0.90x (actuated), time loss 0.91x (delay_based), "
        "arrivals 0.99x (actuated)"
    )


def test_headline_and_percentile() -> None:
    lines = headline(_report())
    assert any("0.90x" in line for line in lines)
    assert any(line.startswith("counter: p95") for line in lines)
    assert any(line.endswith("50.00% within SLO (1 failed)") for line in lines)
    assert "(ran: local 60, 1 over SLO; remote 40)" in lines[-1]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([], 95) != percentile([], 95)  # NaN


def test_the_traffic_bench_reads_the_worst_module_and_lost_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "bench_traffic", Path(__file__).parents[2] / "bench" / "traffic.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_traffic", bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    body = json.loads(write_report(_report(), tmp_path / "out").json.read_text())
    figures = bench.mesh_figures(body)
    # The forecaster's one failure in two calls is not hidden by the counter's hundred.
    assert figures["slo_attainment"] == pytest.approx(0.5)
    assert figures["lost_requests"] == 1
    assert figures["modules"]["forecaster"]["failed"] == 1
