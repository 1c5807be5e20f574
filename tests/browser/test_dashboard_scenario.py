"""The Scenario page in chromium: a scenario's feed shown live (sim time, faults, KPIs).

The page is served by the dashboard's own router in this process, over a
:class:`~mesh.dashboard._scenario.ScenarioFeed` the test drives as the
scenario harness would, and sources with no mesh behind them (no Ray: the
page's data is what is under test here, the mesh is in test_dashboard.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from mesh.core._http_errors import install_error_handlers
from mesh.core._http_server import serve_asgi
from mesh.dashboard._api import create_dashboard_router
from mesh.dashboard._scenario import ScenarioFeed
from mesh.dashboard._snapshot import DashboardSources, Snapshots
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from tests.support.browser import console_errors, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@dataclass
class _Monitors:
    nodes: dict[str, Any] = field(default_factory=dict)
    latency: dict[tuple[str, str], Any] = field(default_factory=dict)


@dataclass
class _Page:
    url: str
    token: str
    feed: ScenarioFeed


@pytest.fixture
def page() -> Iterator[_Page]:
    signer = TokenSigner(b"k" * 32)
    auth = TokenAuth(signer)
    feed = ScenarioFeed()
    sources = DashboardSources(
        placements=lambda: {"modules": [], "running": []},
        history=lambda _module, _limit: [],
        monitors=lambda _window: _Monitors(),
        agents=lambda: [],
        scenario=feed.describe,
    )
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(
        create_dashboard_router(
            Snapshots(sources), auth=auth.dependency, check=lambda h: auth.check(h, "read")
        )
    )
    server = serve_asgi(app, name="dashboard-test")
    try:
        token = signer.issue("op", ["read"], ttl_s=600, now=time.time())
        yield _Page(server.url, token, feed)
    finally:
        server.stop()


def test_the_scenario_page_follows_the_run(driver: Any, page: _Page, browsers: Any) -> None:
    feed = page.feed
    driver.get(f"{page.url}/ui/#token={page.token}")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.page"), 30, "page")
    driver.execute_script("location.hash = '#/scenario'")
    wait_for(driver, lambda d: "No scenario runs" in d.page_source, 30, "the no-scenario note")
    hidden = "return document.querySelector('[data-nav=scenario]').hidden"
    assert driver.execute_script(hidden), "no Scenario tab without a scenario"

    feed.begin(
        "vibration",
        duration_s=300,
        planned=[
            {"at_s": 60, "kind": "cpu_hog", "target": "agent j-B1", "duration_s": 90},
            {"at_s": 200, "kind": "kill_agent", "target": "j-B2"},
        ],
    )
    for t in range(0, 121, 10):
        feed.update(
            sim_s=float(t),
            wall_s=t / 10,
            kpis={"vehicles": 100 + 3 * t, "mean_delay_s": 20 - t / 20, "phase": "green"},
        )
    feed.fault(60.0, "cpu_hog on agent j-B1 for 90 s")
    wait_for(driver, lambda d: "t=120 s" in d.page_source, 5, "the scenario within a second or two")
    assert not driver.execute_script(hidden), "the Scenario tab once one runs"
    assert len(driver.find_elements("css selector", "[data-kpi]")) == 2  # the numeric ones
    assert len(driver.find_elements("css selector", "#fault-timeline svg rect")) == 1
    assert "cpu_hog on agent j-B1 for 90 s" in driver.page_source

    feed.fault(150.0, "cpu_hog on agent j-B1 ended")
    wait_for(driver, lambda d: "ended" in d.page_source, 5, "a new fault line")
    shots: Path = browsers.artefacts
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1400, "height": max(height, 800), "deviceScaleFactor": 1, "mobile": False},
    )
    driver.save_screenshot(str(shots / "9-scenario.png"))
    assert console_errors(driver) == []
