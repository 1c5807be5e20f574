"""The dashboard's reads and page over fake sources: snapshot, history, auth, the stream, `mesh ui`.

The page itself, in a real browser against a real mesh, is tests/browser.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # starlette's notice about httpx2, not ours to fix
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from mesh.core._http_errors import install_error_handlers
from mesh.dashboard import _api
from mesh.dashboard._api import create_dashboard_router
from mesh.dashboard._snapshot import HISTORY_SAMPLES, DashboardSources, Snapshots
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth

NOW = 1_700_000_000.0


@dataclass(frozen=True)
class _Node:
    name: str
    kind: str = "ray"
    tier: str = "fog"
    site: str = "s1"
    alive: bool = True
    servers: int = 1
    memory_mb: float = 2048.0
    utilisation: float | None = 0.25
    rtt_ms: float | None = 1.5


@dataclass(frozen=True)
class _Stats:
    count: int = 10
    errors: int = 1
    p50_ms: float = 3.0
    p95_ms: float = 9.0
    rate_per_s: float = 2.0


@dataclass
class _Monitors:
    nodes: dict[str, _Node] = field(default_factory=dict)
    latency: dict[tuple[str, str], _Stats] = field(default_factory=dict)


def _placements() -> dict[str, Any]:
    return {
        "plan_version": 3,
        "modules": [
            {
                "module": "counter",
                "version": "v2",
                "tier": "fog",
                "node": "n-fog",
                "slo_ms": 25.0,
                "observed": {"count": 10, "errors": 1, "p50_ms": 3.0, "p95_ms": 9.0},
                "decision": "counter@s1 -> n-fog",
            }
        ],
        "running": [],
    }


RUNS = [
    {"id": "r1", "function": "f", "tier": "fog", "status": "succeeded"},
    {"id": "r2", "function": "f", "tier": "cloud", "status": "failed"},
]


def _sources(monitors: _Monitors, calls: list[str] | None = None) -> DashboardSources:
    def placements() -> dict[str, Any]:
        if calls is not None:
            calls.append("placements")
        return _placements()

    return DashboardSources(
        placements=placements,
        history=lambda module, limit: [{"id": "m1", "module": "counter", "reason": "p95 > SLO"}][
            :limit
        ],
        monitors=lambda _window: monitors,
        agents=lambda: [{"agent_id": "a1", "health": "online"}],
        models=lambda: {"counter": "vehicle-counter"},
        runs=lambda function, limit: [r for r in RUNS if function in (None, r["function"])][:limit],
    )


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_snapshot_has_nodes_modules_per_node_and_is_shared_within_its_interval() -> None:
    monitors = _Monitors(
        nodes={
            "n-fog": _Node("n-fog"),
            "n-cloud": _Node("n-cloud", tier="cloud"),
            "a1": _Node("a1", kind="agent", tier="edge"),
        },
        latency={("counter", "n-fog"): _Stats(p95_ms=math.nan), ("other", "n-fog"): _Stats()},
    )
    calls: list[str] = []
    clock = _Clock()
    snapshots = Snapshots(_sources(monitors, calls), min_interval_s=0.5, clock=clock)
    snap = snapshots.latest()
    assert [n["name"] for n in snap["nodes"]] == ["n-cloud", "n-fog"]  # cloud first, agents apart
    assert snap["nodes"][0]["cpu_percent"] == 25.0
    (module,) = snap["modules"]
    assert module["model"] == "vehicle-counter"
    assert module["error_rate"] == pytest.approx(0.1)
    assert module["per_node"] == [
        {"at": NOW, "node": "n-fog", "p50_ms": 3.0, "p95_ms": None, "rate_per_s": 2.0, "errors": 1}
    ]
    assert snapshots.latest() is snap and calls == ["placements"]
    clock.now += 0.6
    assert snapshots.latest() is not snap and len(calls) == 2
    assert [s["at"] for s in snapshots.latency_history("counter")] == [NOW, NOW + 0.6]
    assert snapshots.latency_history("nope") == []


def test_latency_history_is_bounded_and_forgets_modules_no_longer_served() -> None:
    monitors = _Monitors(latency={("counter", "n"): _Stats()})
    clock = _Clock()
    sources = _sources(monitors)
    snapshots = Snapshots(sources, min_interval_s=0.0, clock=clock)
    for _ in range(HISTORY_SAMPLES + 5):
        clock.now += 1
        snapshots.latest()
    assert len(snapshots.latency_history("counter")) == HISTORY_SAMPLES
    gone = DashboardSources(
        placements=lambda: {"modules": []},
        history=sources.history,
        monitors=sources.monitors,
        agents=sources.agents,
    )
    snapshots.sources = gone
    clock.now += 1
    snapshots.latest()
    assert snapshots.latency_history("counter") == []


def test_health_changes_are_listed_as_faults_newest_first() -> None:
    monitors = _Monitors(nodes={"n1": _Node("n1")})
    agents = [{"agent_id": "a1", "health": "online"}]
    clock = _Clock()
    base = _sources(monitors)
    sources = DashboardSources(
        placements=base.placements, history=base.history, monitors=base.monitors,
        agents=lambda: agents,
    )  # fmt: skip
    snapshots = Snapshots(sources, min_interval_s=0.0, clock=clock)
    assert snapshots.latest()["faults"] == []  # the state at start is no change
    agents[0] = {"agent_id": "a1", "health": "offline"}
    clock.now += 1
    monitors.nodes["n1"] = _Node("n1", alive=False)
    clock.now += 1
    faults = snapshots.latest()["faults"]
    assert [(f["kind"], f["name"], f["from"], f["to"]) for f in faults] == [
        ("agent", "a1", "online", "offline"),
        ("node", "n1", "alive", "dead"),
    ]
    agents[0] = {"agent_id": "a1", "health": "online"}
    clock.now += 1
    assert snapshots.latest()["faults"][0]["to"] == "online"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(b"s" * 32)


def _client(signer: TokenSigner, sources: DashboardSources | None = None) -> TestClient:
    auth = TokenAuth(signer)
    app = FastAPI()
    install_error_handlers(app)
    snapshots = Snapshots(sources or _sources(_Monitors()), min_interval_s=0.0)
    app.include_router(
        create_dashboard_router(
            snapshots, auth=auth.dependency, check=lambda h: auth.check(h, "read")
        )
    )
    return TestClient(app)


def _bearer(signer: TokenSigner, *scopes: str, ttl_s: float = 60.0) -> dict[str, str]:
    token = signer.issue("op", list(scopes), ttl_s=ttl_s, now=time.time())
    return {"Authorization": f"Bearer {token}"}


def test_the_page_is_open_and_loads_nothing_from_elsewhere(signer: TokenSigner) -> None:
    client = _client(signer)
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/ui").text == page.text
    for name in ("app.js", "style.css", "icon.svg"):
        got = client.get(f"/ui/static/{name}")
        assert got.status_code == 200, name
        # Works offline: no CDN, no remote font or script, only the page's own paths.
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", got.text), name
        assert "http://" not in got.text.replace("http://www.w3.org/2000/svg", ""), name
    assert "https://" not in page.text and "http://" not in page.text
    missing = client.get("/ui/static/../_api.py")
    assert missing.status_code == 404
    assert client.get("/ui/static/index2.html").json()["type"] == "NotFoundError"


def test_reads_need_a_read_token_and_whoami_names_its_scopes(signer: TokenSigner) -> None:
    client = _client(signer)
    for path in ("/v1/dashboard/snapshot", "/v1/dashboard/whoami", "/v1/dashboard/runs",
                 "/v1/dashboard/modules/counter", "/v1/dashboard/events"):  # fmt: skip
        assert client.get(path).status_code == 401, path
    expired = signer.issue("op", ["read"], ttl_s=1, now=time.time() - 10)
    assert (
        client.get(
            "/v1/dashboard/snapshot", headers={"Authorization": f"Bearer {expired}"}
        ).status_code
        == 401
    )
    who = client.get("/v1/dashboard/whoami", headers=_bearer(signer, "read")).json()
    assert who["subject"] == "op" and who["scopes"] == ["read"]
    assert who["expires_at"] > time.time()
    res = client.get("/v1/dashboard/snapshot", headers=_bearer(signer, "read"))
    assert res.headers["content-type"] == "application/json"
    snap = res.json()
    assert snap["modules"][0]["module"] == "counter"
    assert snap["agents"] == [{"agent_id": "a1", "health": "online"}]


def test_module_detail_and_runs_filters(signer: TokenSigner) -> None:
    client = _client(signer)
    read = _bearer(signer, "read")
    detail = client.get("/v1/dashboard/modules/counter", headers=read).json()
    assert detail["module"]["module"] == "counter" and detail["placements"][0]["id"] == "m1"
    unknown = client.get("/v1/dashboard/modules/nope", headers=read)
    assert unknown.status_code == 404 and "counter" in unknown.json()["error"]
    runs = client.get("/v1/dashboard/runs", headers=read).json()
    assert [r["id"] for r in runs] == ["r1", "r2"]
    failed = client.get("/v1/dashboard/runs?status=failed", headers=read).json()
    assert [r["id"] for r in failed] == ["r2"]
    fog = client.get("/v1/dashboard/runs?tier=fog&function=f", headers=read).json()
    assert [r["id"] for r in fog] == ["r1"]
    assert client.get("/v1/dashboard/runs?limit=0", headers=read).status_code == 422


def _events(lines: list[str]) -> list[tuple[str, Any]]:
    out = []
    for block in "\n".join(lines).split("\n\n"):
        kind = re.search(r"^event: (.+)$", block, re.M)
        data = re.search(r"^data: (.+)$", block, re.M)
        if kind and data:
            out.append((kind.group(1), json.loads(data.group(1))))
    return out


def test_the_stream_sends_snapshots_then_ends_and_stops_for_a_revoked_token(
    signer: TokenSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_api, "EVENT_INTERVAL_S", 0.01)
    monkeypatch.setattr(_api, "STREAM_LIFETIME_S", 0.2)
    monitors = _Monitors(latency={("counter", "n"): _Stats(p95_ms=math.inf)})
    client = _client(signer, _sources(monitors))
    with client.stream("GET", "/v1/dashboard/events", headers=_bearer(signer, "read")) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        events = _events(list(res.iter_lines()))
    kinds = [k for k, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "end" and set(kinds) == {"snapshot", "end"}
    assert events[0][1]["modules"][0]["per_node"][0]["p95_ms"] is None  # JSON has no infinity

    # A token that expires while the stream is open ends it with the reason.
    short = signer.issue("op", ["read"], ttl_s=0.05, now=time.time())
    monkeypatch.setattr(_api, "STREAM_LIFETIME_S", 30.0)
    with client.stream(
        "GET", "/v1/dashboard/events", headers={"Authorization": f"Bearer {short}"}
    ) as res:
        events = _events(list(res.iter_lines()))
    assert events[-1][0] == "end" and "expired" in events[-1][1]["reason"]


def test_mesh_ui_url_carries_a_short_read_token_in_the_fragment(tmp_path: Path) -> None:
    from mesh.cli._ui import dashboard_url
    from mesh.core._settings import MeshSettings

    settings = MeshSettings(data_dir=tmp_path)
    with pytest.raises(LookupError, match="mesh up"):
        dashboard_url(settings, ttl_s=60)
    settings.cluster_file.parent.mkdir(parents=True, exist_ok=True)
    settings.cluster_file.write_text(
        json.dumps({"pid": os.getpid(), "gateway_url": "http://127.0.0.1:8123"})
    )
    url = dashboard_url(settings, ttl_s=60, now=NOW)
    base, token = url.split("#token=")
    assert base == "http://127.0.0.1:8123/ui/"
    claims = TokenSigner.load_or_create(tmp_path).verify(token, now=NOW + 1)
    assert claims.scopes == ("read",) and claims.expires_at == NOW + 60
    with pytest.raises(ValueError, match="ttl_s"):
        dashboard_url(settings, ttl_s=-1)


def test_the_scenario_feed_keeps_the_run_its_faults_and_kpis() -> None:
    from mesh.dashboard._scenario import ScenarioFeed

    feed = ScenarioFeed(clock=lambda: NOW)
    assert feed.describe() is None
    feed.update(sim_s=1.0, wall_s=1.0, kpis={"x": 1})  # before begin: nothing to update
    feed.fault(1.0, "ignored")
    assert feed.describe() is None
    feed.begin("demo", duration_s=60, planned=[{"at_s": 10, "kind": "cpu_hog", "load": math.nan}])
    feed.update(sim_s=12.0, wall_s=6.0, kpis={"served": 5, "delay_s": math.inf, "obj": object})
    feed.fault(10.0, "cpu_hog on a1")
    got = feed.describe()
    assert got is not None
    assert got["planned"] == [{"at_s": 10, "kind": "cpu_hog", "load": None}]
    assert got["kpis"]["served"] == 5 and got["kpis"]["delay_s"] is None
    assert isinstance(got["kpis"]["obj"], str)
    assert got["log"] == [{"sim_s": 10.0, "at": NOW, "what": "cpu_hog on a1"}]
    assert [h["sim_s"] for h in got["kpi_history"]] == [12.0] and got["running"]
    feed.end()
    assert feed.describe()["running"] is False  # type: ignore[index]
    snapshots = Snapshots(
        DashboardSources(
            placements=lambda: {"modules": []},
            history=lambda _m, _n: [],
            monitors=lambda _w: _Monitors(),
            agents=lambda: [],
            scenario=feed.describe,
        )
    )
    assert snapshots.latest()["scenario"]["name"] == "demo"


def test_the_stream_ends_when_the_server_stops(
    signer: TokenSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_api, "STREAM_LIFETIME_S", 30.0)
    client = _client(signer)
    app = client.app
    assert isinstance(app, FastAPI)
    app.state.stopping = True  # what ServerThread.stop sets first
    with client.stream("GET", "/v1/dashboard/events", headers=_bearer(signer, "read")) as res:
        events = _events(list(res.iter_lines()))
    assert [k for k, _ in events] == ["snapshot"]  # one, then it ended: no 30 s stream


def test_a_stopping_server_sets_its_apps_state(signer: TokenSigner) -> None:
    from mesh.core._http_server import serve_asgi

    app = FastAPI()
    server = serve_asgi(app, name="stop-test")
    server.stop()
    assert app.state.stopping is True


def test_the_sampler_records_latency_before_any_page_asks() -> None:
    monitors = _Monitors(latency={("counter", "n"): _Stats()})
    clock = _Clock()
    snapshots = Snapshots(_sources(monitors), min_interval_s=0.5, clock=clock)
    for _ in range(3):
        snapshots.sample()
        clock.now += 1
    assert [s["at"] for s in snapshots.latency_history("counter")] == [NOW, NOW + 1, NOW + 2]
    snapshots.latest()  # samples too (t+3) ...
    snapshots.sample()  # ... so the sampler's tick within min_interval_s adds nothing
    assert len(snapshots.latency_history("counter")) == 4


@pytest.mark.parametrize("fast", [True, False])
def test_json_drops_nan_and_names_the_unknown(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    if not fast:  # the standard library's, without orjson
        monkeypatch.setattr(_api, "_orjson", None)
    data = {"p95_ms": math.nan, "rtt": [math.inf, 1.5], 7: Path("/x"), "ok": True}
    assert json.loads(_api.to_json(data)) == {
        "p95_ms": None,
        "rtt": [None, 1.5],
        "7": "/x",
        "ok": True,
    }
