"""GET /v1/scenario: the running scenario's stage, clocks, faults, story and live KPIs."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from mesh.core._http_server import serve_asgi
from mesh.scenario._faults import FaultTimeline
from mesh.scenario._schema import CpuHog, NodeRemove
from mesh.scenario._status import STORY_LINES, ScenarioStatus, scenario_router


class _Actions:
    def hog_cpu(self, target: str, load: float) -> None: ...

    def stop_hog(self, target: str) -> None: ...

    def remove_node(self, name: str) -> None: ...


def test_the_timeline_says_which_faults_still_run() -> None:
    timeline = FaultTimeline(
        [
            CpuHog(kind="cpu_hog", at_s=10, target="agent:a", duration_s=20, load=0.5),
            NodeRemove(kind="node_remove", at_s=15, target="node:fog-1"),
        ]
    )
    actions: Any = _Actions()
    timeline.advance(16.0, actions)
    assert timeline.so_far() == [
        {"kind": "cpu_hog", "target": "agent:a", "start": 16.0, "end": None},
        {"kind": "node_remove", "target": "node:fog-1", "start": 16.0, "end": 16.0},
    ]
    timeline.advance(31.0, actions)
    assert timeline.so_far()[0]["end"] == 31.0


def test_the_route_answers_the_state_with_kpis_read_at_each_request() -> None:
    status = ScenarioStatus("small", "a 2x2 grid", 120.0)
    app = FastAPI()
    app.include_router(scenario_router(status))
    server = serve_asgi(app, host="127.0.0.1", port=0)  # TestClient warns (errors here)
    client = httpx.Client(base_url=server.url, timeout=10)
    try:
        _check(status, client)
    finally:
        client.close()
        server.stop()


def _check(status: ScenarioStatus, client: httpx.Client) -> None:
    first = client.get("/v1/scenario").json()
    assert first["stage"] == "starting" and first["kpis"] == {} and first["duration_s"] == 120.0

    vehicles = iter([3, 5])
    status.stage("live")
    status.clock(44.0, 22.5)
    status.faults([{"kind": "cpu_hog", "target": "agent:a", "start": 40.0, "end": None}])
    status.live_kpis(lambda: {"vehicles": next(vehicles)})
    for i in range(STORY_LINES + 5):
        status.story(f"t={i} s line")
    body = client.get("/v1/scenario").json()
    assert (body["stage"], body["sim_s"], body["wall_s"]) == ("live", 44.0, 22.5)
    assert body["faults"][0]["end"] is None
    assert body["kpis"] == {"vehicles": 3}
    assert len(body["story"]) == STORY_LINES and body["story"][-1] == f"t={STORY_LINES + 4} s line"
    assert client.get("/v1/scenario").json()["kpis"] == {"vehicles": 5}


def test_a_failing_kpi_source_shows_its_error_and_the_rest_still_answers() -> None:
    status = ScenarioStatus("s", "", None)

    def broken() -> dict[str, Any]:
        raise RuntimeError("libsumo closed")

    status.live_kpis(broken)
    snap = status.snapshot()
    assert snap["kpis"] == {"error": "libsumo closed"} and snap["name"] == "s"
