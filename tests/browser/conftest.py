"""The dashboard in a real browser: Debian's chromium driven by Selenium through chromedriver.

Nothing is downloaded: the browser and the driver are the system's
(``/usr/bin/chromium``, ``/usr/bin/chromedriver``, or ``MESH_CHROMIUM`` /
``MESH_CHROMEDRIVER``), and Selenium Manager (which would fetch a browser
build) is made to fail should Selenium ever reach for it. Tests skip with the
reason when either binary or Selenium is missing.

The mesh is a real one, started as a user does (:class:`tests.support.chaos.ChaosMesh`:
``mesh up`` with two fog nodes, a fog module, an enrolled agent serving an edge
module), once for the module, with steady inference on both modules so the
charts have something to draw. Screenshots go to ``$MESH_TEST_ARTEFACTS/browser``
(else a pytest temporary directory), printed at the end of the session.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Dashboard
from tests.support.chaos import ChaosMesh, Load


def _binary(env: str, default: str) -> str | None:
    path = os.environ.get(env) or shutil.which(Path(default).name) or default
    return path if Path(path).is_file() else None


@dataclass(frozen=True)
class Browsers:
    """Where the browser and its driver are, and where screenshots go."""

    chromium: str
    chromedriver: str
    artefacts: Path


@pytest.fixture(scope="session")
def browsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browsers]:
    """The system's chromium and chromedriver (skips without them)."""
    chromium = _binary("MESH_CHROMIUM", "/usr/bin/chromium")
    driver = _binary("MESH_CHROMEDRIVER", "/usr/bin/chromedriver")
    missing = None
    if importlib.util.find_spec("selenium") is None:
        missing = "selenium is not installed (the dev extra)"
    elif chromium is None or driver is None:
        missing = "Debian's chromium and chromium-driver are not installed"
    if missing is not None:
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {missing}")
        pytest.skip(missing)
    assert chromium is not None and driver is not None
    root = os.environ.get("MESH_TEST_ARTEFACTS")
    artefacts = Path(root) / "browser" if root else tmp_path_factory.mktemp("screenshots")
    artefacts.mkdir(parents=True, exist_ok=True)
    yield Browsers(chromium, driver, artefacts)
    print(f"\ndashboard screenshots: {artefacts}")


@pytest.fixture
def driver(browsers: Browsers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless chromium with its console log kept (``goog:loggingPrefs``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def no_downloads(*_a: object, **_k: object) -> dict[str, str]:
        raise AssertionError("Selenium Manager would fetch a browser: give explicit paths")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_downloads)
    options = webdriver.ChromeOptions()
    options.binary_location = browsers.chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(browsers.chromedriver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def dashboard(browsers: Browsers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """``mesh up`` with a fog module, an agent and its edge module, traffic, a run or two."""
    work = tmp_path_factory.mktemp("dashboard-mesh")
    mesh = ChaosMesh(work, fog_nodes=2)
    load: Load | None = None
    try:
        mesh.start()
        admin = mesh.cli("tokens", "create", "operator", "--scope", "admin").strip()
        load = Load(
            mesh.gateway, mesh.token, [mesh.FOG, mesh.EDGE], rate_hz=5.0, over_mqtt=(mesh.EDGE,)
        ).start()
        mesh.cli("deploy", "functions/demo.py")
        mesh.cli("invoke", "collect_counts", "--arg", "site=j9", "--arg",
                 f"out_dir={work / 'counts'}", "--arg", "minutes=30")  # fmt: skip
        printed = mesh.cli("ui", "--no-open", "--ttl-s", "900")
        read_url = next(w for w in printed.split() if "/ui/#token=" in w)
        yield Dashboard(mesh, admin, read_url, browsers.artefacts)
    finally:
        if load is not None:
            load.stop()
        mesh.close()
