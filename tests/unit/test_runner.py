from __future__ import annotations

import time
from typing import Any

import pytest

from mesh import (
    FunctionTimeoutError,
    InvalidArgumentsError,
    Mesh,
    RemoteFunctionError,
    Resources,
    UnknownFunctionError,
    UnsatisfiableError,
)
from mesh.compute import NodeInfo
from mesh.compute._runner import Runner
from mesh.compute._runs import RunStatus, SQLiteStore

from .fakes import FakeBackend


def _app() -> Mesh:
    app = Mesh("t")

    @app.function(tier="fog")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.function(tier="cloud")
    def boom(x: int) -> int:
        raise ValueError(f"bad x {x}")

    @app.function(tier="cloud", timeout_s=0.2)
    def slow() -> None:
        time.sleep(5)

    @app.function(tier="cloud", resources=Resources(cpus=1, gpus=1))
    def gpu_train() -> None: ...

    @app.function(tier="fog", site="plant-9")
    def on_site() -> None: ...

    @app.tune(metric="loss", mode="min", search_space={"x": app.grid([1, 2, 3, 4])})
    def search(config: dict[str, Any]) -> dict[str, float]:
        return {"loss": (config["x"] - 3) ** 2}

    return app


@pytest.fixture
def store() -> SQLiteStore:
    return SQLiteStore(":memory:")


@pytest.fixture
def runner(store: SQLiteStore) -> Runner:
    return Runner([_app()], backend=FakeBackend(), store=store)


def test_invoke_records_the_run_with_its_node(runner: Runner, store: SQLiteStore) -> None:
    run = runner.submit("add", a="2")
    assert run.result() == 3
    [record] = store.list_runs()
    assert record.status is RunStatus.SUCCEEDED
    assert record.tier == "fog" and record.node_labels["mesh.tier"] == "fog"
    assert record.result_ref == "3" and record.args_preview == '{"a":2}'
    assert record.duration_s is not None and record.duration_s >= 0


def test_bad_input_records_nothing(runner: Runner, store: SQLiteStore) -> None:
    with pytest.raises(UnknownFunctionError, match="did you mean 'add'"):
        runner.submit("ad", a=1)
    with pytest.raises(InvalidArgumentsError, match="a='x' is not a valid int"):
        runner.submit("add", a="x")
    with pytest.raises(
        UnsatisfiableError, match=r"no cloud node has the resources asked for \(GPU 0 < 1\)"
    ):
        runner.submit("gpu_train")
    with pytest.raises(UnsatisfiableError, match="no live fog node has site 'plant-9'"):
        runner.submit("on_site")
    assert store.list_runs() == []
    assert runner.backend.submitted == []  # type: ignore[attr-defined]


def test_a_node_that_joins_later_is_seen(runner: Runner) -> None:
    backend: FakeBackend = runner.backend  # type: ignore[assignment]
    backend.add_node(
        NodeInfo("p" * 56, True, {"mesh.tier": "fog", "mesh.site": "plant-9"}, {"CPU": 1.0})
    )
    assert runner.invoke("on_site") is None


def test_remote_error_is_recorded_with_traceback(runner: Runner, store: SQLiteStore) -> None:
    with pytest.raises(RemoteFunctionError) as info:
        runner.invoke("boom", x=7)
    assert info.value.remote_type == "ValueError"
    assert 'raise ValueError(f"bad x {x}")' in info.value.remote_traceback
    [record] = store.list_runs()
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "bad x 7" in record.error


def test_timeout_is_recorded(runner: Runner, store: SQLiteStore) -> None:
    with pytest.raises(FunctionTimeoutError, match="timeout_s=0.2"):
        runner.invoke("slow")
    assert store.list_runs()[0].status is RunStatus.TIMED_OUT


def test_result_is_recorded_once_and_cached(runner: Runner, store: SQLiteStore) -> None:
    run = runner.submit("add", a=1)
    assert run.result() == run.result() == 2
    assert len(store.list_runs()) == 1


def test_tune_takes_no_arguments_and_picks_the_best(runner: Runner) -> None:
    with pytest.raises(InvalidArgumentsError, match="takes no arguments"):
        runner.submit("search", x=1)
    result = runner.invoke("search")
    assert result.best_config == {"x": 3} and result.best_value == 0


def test_same_name_in_two_apps_is_refused(store: SQLiteStore) -> None:
    with pytest.raises(Exception, match="registered by both app"):
        Runner([_app(), _app()], backend=FakeBackend(), store=store)
