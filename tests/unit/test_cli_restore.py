"""`mesh up` and `mesh modules list` after a restart: each recorded module's state, never a silent success.

The control plane is a fake :class:`ControlPlaneClient` answering ``GET /v1/modules``.
"""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from mesh.cli import _main, _modules
from mesh.cli._main import app
from mesh.cli._modules import ControlPlaneClient, wait_for_restore

COUNTER = {"module": "counter", "version": "v1", "tier": "fog", "epoch": 1, "endpoints": [{}]}
CAM = {"module": "cam", "version": "v2", "tier": "edge", "agent": "cam-1", "epoch": None}


class FakeControlPlane(ControlPlaneClient):
    """Answers each ``GET /v1/modules`` with the next listing (the last one repeats)."""

    def __init__(self, *listings: list[dict[str, Any]]) -> None:
        super().__init__("http://127.0.0.1:9", "token")
        self.listings = list(listings)
        self.calls = 0

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert (method, path) == ("GET", "/v1/modules")
        self.calls += 1
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]


def _up(monkeypatch: pytest.MonkeyPatch, client: FakeControlPlane) -> Any:
    info = {"address": "127.0.0.1:6379", "pid": 1, "gateway_url": "http://127.0.0.1:9"}
    monkeypatch.setattr(_main, "read_cluster_file", lambda settings: None)
    monkeypatch.setattr(_main, "cluster_up", lambda settings, **kw: info)
    monkeypatch.setattr(ControlPlaneClient, "from_settings", classmethod(lambda cls, s: client))
    return CliRunner().invoke(app, ["up", "--restore-wait-s", "60"])


def test_wait_for_restore_returns_once_nothing_is_restoring() -> None:
    client = FakeControlPlane(
        [{**COUNTER, "status": "restoring"}], [{**COUNTER, "status": "serving"}]
    )
    assert wait_for_restore(client, wait_s=60) == [{**COUNTER, "status": "serving"}]
    assert client.calls == 2


def test_wait_for_restore_gives_up_after_its_wait_and_says_restoring() -> None:
    client = FakeControlPlane([{**COUNTER, "status": "restoring"}])
    assert wait_for_restore(client, wait_s=0) == [{**COUNTER, "status": "restoring"}]


def test_mesh_up_says_each_restored_module_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _up(monkeypatch, FakeControlPlane([{**COUNTER, "status": "serving"}]))
    assert result.exit_code == 0, result.output
    assert "module counter v1 on fog: serving" in result.output


def test_mesh_up_fails_loudly_when_a_module_could_not_be_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = {**CAM, "status": "failed: DeployError: agent cam-1 is offline"}
    result = _up(monkeypatch, FakeControlPlane([{**COUNTER, "status": "serving"}, failed]))
    assert result.exit_code == 1
    assert "module cam v2 on cam-1: failed: DeployError: agent cam-1 is offline" in result.output
    assert "could not be restored" in result.output


def test_modules_list_shows_the_status_column(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeControlPlane([{**COUNTER, "status": "serving"}, {**CAM, "status": "restoring"}])
    monkeypatch.setattr(ControlPlaneClient, "from_settings", classmethod(lambda cls, s: client))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(_modules.modules_app, ["list"])
    assert result.exit_code == 0, result.output
    [cam] = [line for line in result.output.splitlines() if " cam " in line]
    assert "restoring" in cam and "cam-1" in cam
