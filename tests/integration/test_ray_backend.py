"""The Ray backend on a real local cluster: a cloud head and a fog node (see conftest)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from mesh import (
    BackendError,
    BatchResult,
    CancelledError,
    FunctionTimeoutError,
    InvalidArgumentsError,
    Mesh,
    RemoteFunctionError,
    Resources,
    TuneResult,
    UnsatisfiableError,
)
from mesh.compute import check_satisfiable
from mesh.ray._backend import RayBackend
from mesh.ray._tune import report_trial

pytestmark = pytest.mark.ray

app = Mesh("itest")


@app.function(tier="cloud")
def on_cloud(x: int) -> int:
    return x + 1


@app.function(tier="fog")
def on_fog(x: int) -> int:
    return x * 2


@app.function(tier="fog", site="fog-0")
def on_fog_0(x: int) -> int:
    return x * 3


@app.function(tier="fog", site="fog-9")
def on_fog_9(x: int) -> int:
    return x * 9


@app.function(tier="cloud", retries=2)
def flaky(counter: str, fail_times: int) -> int:
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= fail_times:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return attempt


@app.function(tier="fog", timeout_s=1.0)
def too_slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.function(tier="fog")
def sleeper(started: str, seconds: float) -> str:
    Path(started).write_text("started")
    time.sleep(seconds)
    return "finished"


@app.function(tier="cloud")
def explode(code: int) -> None:
    raise ValueError(f"boom {code}")


@app.function(tier="cloud")
def die() -> None:
    os._exit(3)


@app.function(tier="fog", site="nowhere")
def lost_site() -> None: ...


@app.function(tier="fog", resources=Resources(cpus=8))
def too_many_cpus() -> None: ...


@app.function(tier="cloud", resources=Resources(cpus=0.25, gpus=1))
def needs_gpu() -> None: ...


@app.function(tier="cloud", resources=Resources(cpus=0.25, custom={"tpu": 1}))
def needs_tpu() -> None: ...


@app.stream(tier="fog", topic="traffic/+/counts", window_s=1)
def window_size(window: list[dict]) -> list[dict]:
    return [{"n": len(window), "total": sum(m["count"] for m in window)}]


@app.tune(
    metric="loss",
    mode="min",
    tier="fog",
    num_samples=1,
    search_space={"x": app.grid([1, 2, 3, 4, 5]), "offset": 3},
)
def quadratic(config: dict) -> None:
    report_trial({"loss": (config["x"] - config["offset"]) ** 2})


@app.tune(
    metric="score",
    mode="max",
    tier="cloud",
    num_samples=3,
    scheduler="asha",
    max_iterations=3,
    search_space={"w": app.uniform(0.0, 1.0), "k": app.choice([1, 2])},
)
def climb(config: dict) -> dict:
    for step in range(1, 3):
        report_trial({"score": config["w"] * config["k"] * step})
    return {"score": config["w"] * config["k"] * 3}


@app.tune(
    metric="loss", mode="min", num_samples=1, timeout_s=2.0, search_space={"x": app.grid([1, 2])}
)
def stuck(config: dict) -> None:
    time.sleep(120)


@app.batch(tier="cloud")
def bad_udf(events: Any) -> Any:
    def divide(batch: Any) -> Any:
        raise ZeroDivisionError("udf fails on purpose")

    return events.map_batches(divide)


@app.batch(tier="fog")
def per_site(events: Any) -> Any:
    def tag(batch: Any) -> Any:
        import ray

        batch["node"] = ray.get_runtime_context().get_node_id()
        return batch

    return events.map_batches(tag, batch_format="pandas").groupby(["site", "node"]).sum("v")


def _node(backend: RayBackend, node_id: str) -> Any:
    return next(n for n in backend.nodes(refresh=True) if n.node_id == node_id)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.1)


def test_nodes_carry_tier_and_site_labels(ray_backend: RayBackend) -> None:
    nodes = [n for n in ray_backend.nodes(refresh=True) if n.alive]
    heads = [n for n in nodes if n.is_head]
    assert len(heads) == 1 and heads[0].tier == "cloud"
    assert heads[0].resources_total["CPU"] == 1
    fog = [n for n in nodes if n.tier == "fog"]
    assert [n.site for n in fog if n.site == "fog-0"] == ["fog-0"]
    assert all(n.address for n in nodes)


@pytest.mark.parametrize(
    ("name", "arg", "value", "tier", "site"),
    [
        ("on_cloud", 1, 2, "cloud", None),
        ("on_fog", 2, 4, "fog", None),
        ("on_fog_0", 3, 9, "fog", "fog-0"),
    ],
)
def test_function_runs_on_its_tier_and_site(
    ray_backend: RayBackend, name: str, arg: int, value: int, tier: str, site: str | None
) -> None:
    result = ray_backend.submit(app.get(name), {"x": arg}, run_id=f"pin-{name}").result(30)
    assert result.value == value
    node = _node(ray_backend, result.node_id)
    assert node.tier == tier
    if site:
        assert node.site == site


def test_stream_window_runs_like_a_function(ray_backend: RayBackend) -> None:
    window = [{"count": 2}, {"count": 5}]
    result = ray_backend.submit(app.get("window_size"), {"window": window}, run_id="s1").result(30)
    assert result.value == [{"n": 2, "total": 7}]
    assert _node(ray_backend, result.node_id).tier == "fog"


def test_new_site_is_pinned_then_refused_once_its_node_is_gone(ray_backend: RayBackend) -> None:
    cluster = ray_backend.cluster
    assert cluster is not None
    fn = app.get("on_fog_9")
    with pytest.raises(UnsatisfiableError, match="fog-9"):
        ray_backend.submit(fn, {"x": 1}, run_id="site-before")
    node = cluster.add_fog_node(site="fog-9", cpus=1)
    try:
        result = ray_backend.submit(fn, {"x": 2}, run_id="site-on").result(60)
        assert (result.value, result.node_id) == (18, node.node_id)
    finally:
        cluster.remove_node(node.node_id)
    _wait_for(lambda: not _node(ray_backend, node.node_id).alive)
    started = time.monotonic()
    with pytest.raises(UnsatisfiableError, match="no live fog node has site 'fog-9'"):
        ray_backend.submit(fn, {"x": 3}, run_id="site-after")
    assert time.monotonic() - started < 5


def test_retries_rerun_until_success(ray_backend: RayBackend, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    result = ray_backend.submit(
        app.get("flaky"), {"counter": str(counter), "fail_times": 2}, run_id="retry-ok"
    ).result(60)
    assert result.value == 3
    assert counter.read_text() == "3"


def test_retries_exhausted_raise_the_last_error(ray_backend: RayBackend, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    call = ray_backend.submit(
        app.get("flaky"), {"counter": str(counter), "fail_times": 5}, run_id="retry-out"
    )
    with pytest.raises(RemoteFunctionError, match="attempt 3 fails on purpose"):
        call.result(60)
    assert counter.read_text() == "3"


def test_timeout_cancels_and_the_cluster_keeps_working(ray_backend: RayBackend) -> None:
    started = time.monotonic()
    call = ray_backend.submit(app.get("too_slow"), {"seconds": 60}, run_id="slow")
    with pytest.raises(FunctionTimeoutError) as info:
        call.result()
    assert time.monotonic() - started < 10
    assert info.value.timeout_s == 1.0 and info.value.run_id == "slow"
    assert call.done()
    result = ray_backend.submit(app.get("on_fog"), {"x": 5}, run_id="after-timeout").result(60)
    assert result.value == 10


def test_remote_error_carries_type_message_and_traceback(ray_backend: RayBackend) -> None:
    call = ray_backend.submit(app.get("explode"), {"code": 42}, run_id="err")
    with pytest.raises(RemoteFunctionError) as info:
        call.result(30)
    err = info.value
    assert (err.function, err.run_id) == ("explode", "err")
    assert err.remote_type == "ValueError"
    assert err.remote_message == "boom 42"
    assert 'raise ValueError(f"boom {code}")' in err.remote_traceback
    assert err.__cause__ is not None


def test_dead_worker_is_a_backend_error(ray_backend: RayBackend) -> None:
    with pytest.raises(BackendError, match="die .* died"):
        ray_backend.submit(app.get("die"), {}, run_id="dead").result(60)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("lost_site", "no live fog node has site 'nowhere'"),
        ("too_many_cpus", "CPU 1 < 8"),
        ("needs_gpu", "GPU 0 < 1"),
        ("needs_tpu", "tpu 0 < 1"),
    ],
)
def test_unsatisfiable_work_is_refused_within_seconds(
    ray_backend: RayBackend, name: str, reason: str
) -> None:
    fn = app.get(name)
    started = time.monotonic()
    with pytest.raises(UnsatisfiableError, match=reason):
        check_satisfiable(fn.spec, ray_backend.nodes())
    with pytest.raises(UnsatisfiableError, match=reason):
        ray_backend.submit(fn, {}, run_id=f"refuse-{name}")
    assert time.monotonic() - started < 5


def test_cancel_stops_a_running_function(ray_backend: RayBackend, tmp_path: Path) -> None:
    started = tmp_path / "started"
    call = ray_backend.submit(
        app.get("sleeper"), {"started": str(started), "seconds": 60}, run_id="cancel-me"
    )
    _wait_for(started.exists)
    assert not call.done()
    t0 = time.monotonic()
    call.cancel()
    with pytest.raises(CancelledError):
        call.result(30)
    assert time.monotonic() - t0 < 5
    assert call.done()
    assert ray_backend.submit(app.get("on_fog"), {"x": 1}, run_id="after").result(60).value == 2


def test_function_from_a_file_loaded_by_path(ray_backend: RayBackend, tmp_path: Path) -> None:
    source = tmp_path / "user_functions.py"
    source.write_text(
        "from mesh import Mesh\n"
        "app = Mesh('by-path')\n"
        "SCALE = 7\n"
        "def helper(x):\n"
        "    return x + 1\n"
        "@app.function(tier='fog')\n"
        "def scaled(x: int) -> int:\n"
        "    return helper(x) * SCALE\n"
    )
    name = f"user_functions_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        result = ray_backend.submit(module.app.get("scaled"), {"x": 5}, run_id="path").result(60)
    finally:
        del sys.modules[name]
    assert result.value == 42
    assert _node(ray_backend, result.node_id).tier == "fog"


def test_tune_finds_the_best_grid_point_on_fog(ray_backend: RayBackend) -> None:
    result = ray_backend.submit(app.get("quadratic"), {}, run_id="tune-grid").result(120)
    tuned = result.value
    assert isinstance(tuned, TuneResult)
    assert tuned.best_config["x"] == 3
    assert tuned.best_value == 0
    assert sorted(t["config"]["x"] for t in tuned.trials) == [1, 2, 3, 4, 5]
    assert "mesh_node_id" not in tuned.best_metrics
    assert _node(ray_backend, result.node_id).tier == "fog"


def test_tune_with_asha_and_returned_metrics(ray_backend: RayBackend) -> None:
    result = ray_backend.submit(app.get("climb"), {}, run_id="tune-asha").result(120)
    tuned = result.value
    assert len(tuned.trials) == 3
    best = max(t["metrics"]["score"] for t in tuned.trials)
    assert tuned.best_value == pytest.approx(best)
    assert tuned.best_config["k"] in (1, 2)
    assert _node(ray_backend, result.node_id).tier == "cloud"


def test_tune_past_its_timeout_is_stopped_and_tune_keeps_working(ray_backend: RayBackend) -> None:
    started = time.monotonic()
    call = ray_backend.submit(app.get("stuck"), {}, run_id="tune-stuck")
    with pytest.raises(FunctionTimeoutError):
        call.result()
    assert time.monotonic() - started < 6
    assert call.done()
    result = ray_backend.submit(app.get("quadratic"), {}, run_id="tune-after").result(120)
    assert result.value.best_config["x"] == 3


def test_batch_udf_error_names_the_user_exception(ray_backend: RayBackend, tmp_path: Path) -> None:
    csv = tmp_path / "tiny.csv"
    csv.write_text("site,v\na,1\nb,2\n")
    call = ray_backend.submit(app.get("bad_udf"), {"input": str(csv)}, run_id="batch-bad")
    with pytest.raises(RemoteFunctionError) as info:
        call.result(120)
    assert info.value.remote_type == "ZeroDivisionError"
    assert info.value.remote_message == "udf fails on purpose"
    assert 'raise ZeroDivisionError("udf fails on purpose")' in info.value.remote_traceback


def test_batch_groupby_over_csv_on_fog(ray_backend: RayBackend, tmp_path: Path) -> None:
    import pandas as pd

    csv = tmp_path / "events.csv"
    sites = ["a", "b", "c"]
    pd.DataFrame({"site": [sites[i % 3] for i in range(300)], "v": range(300)}).to_csv(
        csv, index=False
    )
    result = ray_backend.submit(app.get("per_site"), {"input": str(csv)}, run_id="batch-1").result(
        120
    )
    out = result.value
    assert isinstance(out, BatchResult)
    assert out.num_rows == 3
    assert set(out.columns) == {"site", "node", "sum(v)"}
    assert Path(out.output_path).is_relative_to(ray_backend.settings.data_dir.resolve())
    table = pd.read_parquet(out.output_path).sort_values("site")
    expected = {s: sum(v for v in range(300) if sites[v % 3] == s) for s in sites}
    assert dict(zip(table["site"], table["sum(v)"], strict=True)) == expected
    assert {_node(ray_backend, n).tier for n in table["node"]} == {"fog"}


def test_batch_without_input_is_refused(ray_backend: RayBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentsError, match="input"):
        ray_backend.submit(app.get("per_site"), {}, run_id="batch-none")
    with pytest.raises(InvalidArgumentsError, match="matches no file"):
        ray_backend.submit(
            app.get("per_site"), {"input": str(tmp_path / "*.csv")}, run_id="batch-glob"
        )


_DRIVER = """
import json
from mesh import Mesh, MeshSettings
from mesh.ray._backend import RayBackend

app = Mesh("driver")

@app.function(tier="fog")
def triple(x: int) -> int:
    return 3 * x

backend = RayBackend.connect(MeshSettings())
try:
    result = backend.submit(app.get("triple"), {"x": 14}, run_id="d1").result(60)
    tiers = sorted(n.tier or "-" for n in backend.nodes() if n.alive)
    owned = backend.cluster is not None
    print(json.dumps({"address": backend.address, "value": result.value, "tiers": tiers,
                      "owned": owned}))
finally:
    backend.close()
"""


def test_cluster_daemon_serves_drivers_until_sigterm(tmp_path: Path) -> None:
    # The defaults: token auth, the token under the data dir, which the driver finds.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "RAY_AUTH"))}
    env.update(MESH_DATA_DIR=str(tmp_path), MESH_FOG_NODES="1", MESH_OBJECT_STORE_MB="100")
    cluster_file = tmp_path / "cluster.json"
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mesh.ray._cluster"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: cluster_file.exists() or daemon.poll() is not None, 120)
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        recorded = json.loads(cluster_file.read_text())
        assert recorded["pid"] == daemon.pid
        assert [n["tier"] for n in recorded["nodes"]] == ["cloud", "fog"]
        driver = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        seen = json.loads(driver.stdout.strip().splitlines()[-1])
        assert seen == {
            "address": recorded["address"],
            "value": 42,
            "tiers": ["cloud", "fog"],
            "owned": False,
        }
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        returncode = daemon.wait(timeout=60)
    assert returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert not cluster_file.exists()
