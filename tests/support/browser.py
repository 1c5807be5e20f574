"""Helpers of the dashboard's browser tests (tests/browser): the mesh they open, waits, screenshots."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.chaos import ChaosMesh

__all__ = ["Dashboard", "console_errors", "sign_in", "wait_for"]


@dataclass
class Dashboard:
    """The running mesh, its tokens, and the steps a browser test takes."""

    mesh: ChaosMesh
    admin_token: str
    read_url: str  # what `mesh ui` printed
    artefacts: Path

    @property
    def url(self) -> str:
        """The page's URL."""
        return f"{self.mesh.gateway}/ui/"

    def api(self, path: str) -> Any:
        """GET ``path`` with the admin token; the decoded JSON."""
        import urllib.request

        req = urllib.request.Request(
            self.mesh.gateway + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as res:
            return json.loads(res.read())

    def screenshot(self, driver: Any, name: str) -> Path:
        """The whole page (not just the window) as ``<artefacts>/<name>.png``."""
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": 1400, "height": min(max(height, 800), 6000)}
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {**metrics, "deviceScaleFactor": 1, "mobile": False},
        )
        try:
            path = self.artefacts / f"{name}.png"
            driver.save_screenshot(str(path))
        finally:
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The console's errors since the last call (Chrome's log is read once)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout_s: float, what: str) -> Any:
    """What ``condition`` returned once truthy; fails naming ``what`` after ``timeout_s``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(condition, message=what)


def sign_in(driver: Any, dashboard: Dashboard, token: str, page: str = "overview") -> None:
    """Open the dashboard signed in with ``token`` (through the URL's fragment) at ``page``."""
    driver.get(f"{dashboard.url}#token={token}")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.page") == "overview",
             60, "the overview after signing in")  # fmt: skip
    if page != "overview":
        driver.execute_script("location.hash = arguments[0]", f"#/{page}")
