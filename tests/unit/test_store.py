from __future__ import annotations

import time
from pathlib import Path

import pytest

from mesh import StoreError
from mesh.compute._runs import Deployment, RunRecord, RunStatus, SQLiteStore


def _record(run_id: str, started: float) -> RunRecord:
    return RunRecord(
        id=run_id,
        function="f",
        app="a",
        kind="function",
        args_digest="d",
        args_preview="{}",
        tier="fog",
        status=RunStatus.RUNNING,
        started_at=started,
    )


def test_runs_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.db")
    store.start_run(_record("abc123", 1.0))
    store.start_run(_record("abd456", 2.0))
    store.finish_run(
        "abc123",
        status=RunStatus.SUCCEEDED,
        duration_s=0.5,
        node_id="n1",
        node_labels={"mesh.tier": "fog"},
        result_ref="3",
    )
    store.close()
    store = SQLiteStore(tmp_path / "m.db")
    assert [r.id for r in store.list_runs()] == ["abd456", "abc123"]
    done = store.get_run("abc")
    assert done.status is RunStatus.SUCCEEDED and done.node_labels == {"mesh.tier": "fog"}
    with pytest.raises(StoreError, match="more than one run matches 'ab'"):
        store.get_run("ab")
    with pytest.raises(StoreError, match="no run 'zzz' to finish"):
        store.finish_run("zzz", status=RunStatus.FAILED, duration_s=0)


def test_deployments_replace_by_name() -> None:
    store = SQLiteStore(":memory:")
    first = Deployment("f", "a", "function", "/x.py", "fog", "{}", time.time())
    assert store.put_deployment(first) is None
    second = Deployment("f", "a", "function", "/y.py", "cloud", "{}", time.time())
    assert store.put_deployment(second) == first
    assert store.list_deployments() == [second]


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises((StoreError, OSError)):
        SQLiteStore(blocker / "m.db")
