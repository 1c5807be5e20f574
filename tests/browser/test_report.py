"""The scenario report draws its charts with the dashboard's chart code, offline, in Chromium.

A report written from a known ScenarioReport (the unit tests' one) is opened
from its file, with no server: every ``data-chart`` becomes an SVG with one
path per series, and the console stays clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mesh.scenario import write_report
from tests.browser.conftest import Browsers
from tests.support.browser import console_errors, wait_for
from tests.unit.test_scenario_report import _report

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def test_the_report_draws_every_chart_offline(
    driver: Any, browsers: Browsers, tmp_path: Path
) -> None:
    paths = write_report(_report(), tmp_path / "report")
    driver.get(paths.html.as_uri())
    specs = driver.execute_script(
        "return [...document.querySelectorAll('[data-chart]')].map(e => e.getAttribute('data-chart'))"
    )
    assert len(specs) >= 3, "queues, each module's latency, agent CPU"
    wait_for(
        driver,
        lambda d: len(d.find_elements("css selector", "[data-chart] svg")) == len(specs),
        10,
        "an SVG in every chart",
    )
    drawn = driver.execute_script(
        "return [...document.querySelectorAll('[data-chart] svg')]"
        ".map(s => s.querySelectorAll('path').length)"
    )
    expected = [sum(1 for s in json.loads(spec)["series"] if s["points"]) for spec in specs]
    assert drawn == expected
    assert console_errors(driver) == []
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1100, min(max(height, 800), 6000))
    driver.save_screenshot(str(browsers.artefacts / "report.png"))
