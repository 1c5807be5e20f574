"""Live forecasts: minute means per junction, calls off the event thread, the gateway client."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from functions.traffic.sim.forecast_feed import ForecastFeed, GatewayPredictor, gateway_feed
from mesh.core._http_server import ServerThread, serve_asgi
from mesh.models._export import ModelSignature, TensorSpec
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from mesh.serving._gateway import Gateway
from mesh.serving._gateway_app import create_gateway_app
from mesh.serving._oip import ServingError
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from mesh.serving.replica._server import ModelRunner, ReplicaApp

APPROACHES = ("north", "east", "south", "west")


class FakePredictor:
    """Next minute = the last one + 1; records windows; may fail, or wait on a gate."""

    def __init__(self, *, fail: int = 0, gate: threading.Event | None = None) -> None:
        self.windows: list[npt.NDArray[np.float32]] = []
        self.fail = fail
        self.gate = gate
        self.started = threading.Event()

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.windows.append(windows.copy())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10.0)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("replica gone")
        return windows[:, :, -1] + 1.0


def level(minute: int) -> list[float]:
    """What each approach holds on average during ``minute``: minute + 10 x approach."""
    return [minute + 10.0 * k for k in range(4)]


def live_minute(feed: ForecastFeed, junction: str, minute: int) -> None:
    """Two observations in ``minute`` whose mean is :func:`level`."""
    feed.observe(junction, minute * 60 + 10.0, [v - 1.0 for v in level(minute)])
    feed.observe(junction, minute * 60 + 40.0, [v + 1.0 for v in level(minute)])


@pytest.fixture
def predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def feed(predictor: FakePredictor) -> Iterator[ForecastFeed]:
    f = ForecastFeed(predictor, lags=3).start()
    try:
        yield f
    finally:
        f.close()


def test_a_completed_minute_with_enough_lags_asks_for_the_next(
    feed: ForecastFeed, predictor: FakePredictor
) -> None:
    for minute in range(3):
        live_minute(feed, "J", minute)
    assert feed.drain(5.0) and predictor.windows == []  # minute 2 is not over yet
    feed.observe("J", 185.0, level(3))  # minute 3 begins: minute 2 is complete
    assert feed.drain(5.0)
    assert len(predictor.windows) == 1
    window = predictor.windows[0]
    assert window.shape == (1, 4, 3) and window.dtype == np.float32
    # Per approach, the means of minutes 0, 1 and 2, oldest first.
    expected = np.asarray([level(0), level(1), level(2)], np.float32).T
    np.testing.assert_allclose(window[0], expected)
    stats = feed.stats
    assert (stats.requested, stats.answered, stats.failed) == (1, 1, 0)


def test_no_call_within_a_minute_or_before_lags_minutes(
    feed: ForecastFeed, predictor: FakePredictor
) -> None:
    for t in range(0, 60, 5):
        feed.observe("J", float(t), level(0))
    live_minute(feed, "J", 1)
    feed.observe("J", 125.0, level(2))  # two minutes complete: lags is 3
    assert feed.drain(5.0)
    assert predictor.windows == [] and feed.stats.requested == 0


def test_a_forecast_is_attached_during_its_minute_only(
    feed: ForecastFeed, predictor: FakePredictor
) -> None:
    for minute in range(3):
        live_minute(feed, "J", minute)
    assert feed.observe("J", 181.0, level(3)) is None  # asked for, not answered yet
    assert feed.drain(5.0)
    expected = dict(zip(APPROACHES, [v + 1.0 for v in level(2)], strict=True))
    assert feed.forecast("J", 200.0) == expected
    assert feed.observe("J", 230.0, level(3)) == expected  # what the message carries
    assert feed.forecast("K", 200.0) is None  # another junction has none
    # Minute 4: the forecast was for minute 3; the next one comes with minute 4's call.
    assert feed.forecast("J", 241.0) is None


def test_a_gap_or_an_unseen_approach_restarts_the_window(
    feed: ForecastFeed, predictor: FakePredictor
) -> None:
    for minute in (0, 1, 2, 4, 5):  # minute 3 missing (the agent was down)
        live_minute(feed, "J", minute)
    feed.observe("J", 305.0, level(5))
    feed.observe("J", 290.0, [1000.0] * 4)  # late: minute 4 is over
    live_minute(feed, "J", 6)
    assert feed.drain(5.0) and predictor.windows == []  # 4, 5: two contiguous minutes
    feed.observe("J", 425.0, level(7))
    assert feed.drain(5.0) and len(predictor.windows) == 1
    np.testing.assert_allclose(
        predictor.windows[0][0], np.asarray([level(4), level(5), level(6)], np.float32).T
    )
    assert feed.stats.late == 1


def test_a_minute_with_an_approach_never_seen_breaks_the_series(predictor: FakePredictor) -> None:
    feed = ForecastFeed(predictor, lags=2).start()
    try:
        live_minute(feed, "J", 0)
        feed.observe("J", 70.0, [1.0, None, 1.0, float("nan")])  # east and west: no count
        feed.observe("J", 100.0, [1.0, 2.0, 1.0, None])  # east seen, west still not
        live_minute(feed, "J", 2)
        feed.observe("J", 185.0, level(3))  # minutes 1 and 2: 1 is incomplete
        assert feed.drain(5.0) and predictor.windows == []
        feed.observe("J", 245.0, level(4))  # minutes 2 and 3
        assert feed.drain(5.0) and len(predictor.windows) == 1
    finally:
        feed.close()


def test_each_call_s_latency_is_recorded_with_its_sim_time(predictor: FakePredictor) -> None:
    ticks = itertools.count()
    samples: list[tuple[float, float]] = []
    feed = ForecastFeed(
        predictor, lags=1, on_latency=samples.append, clock=lambda: next(ticks) * 0.004
    ).start()
    try:
        live_minute(feed, "J", 0)
        feed.observe("J", 61.0, level(1))
        assert feed.drain(5.0)
    finally:
        feed.close()
    assert len(samples) == 1 and samples[0][0] == 61.0
    assert samples[0][1] == pytest.approx(4.0)


def test_a_failing_predictor_is_logged_and_the_feed_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    predictor = FakePredictor(fail=1)
    samples: list[tuple[float, float]] = []
    failures: list[float] = []
    feed = ForecastFeed(
        predictor,
        lags=1,
        on_latency=samples.append,
        on_failure=failures.append,
        name="forecaster",
    ).start()
    try:
        with caplog.at_level(logging.WARNING, logger="functions.traffic.sim.forecast_feed"):
            live_minute(feed, "J", 0)
            live_minute(feed, "J", 1)  # completes minute 0: the call fails
            assert feed.drain(5.0)
        assert "forecaster: forecast for junction J minute 1 failed: replica gone" in caplog.text
        assert feed.forecast("J", 90.0) is None and samples == []
        feed.observe("J", 125.0, level(2))  # completes minute 1: this one is answered
        assert feed.drain(5.0)
    finally:
        feed.close()
    assert feed.forecast("J", 125.0) == dict(zip(APPROACHES, level(2), strict=True))
    stats = feed.stats
    assert (stats.requested, stats.answered, stats.failed) == (2, 1, 1) and len(samples) == 1
    assert len(failures) == 1 and 60.0 <= failures[0] < 120.0  # the failed call's sim time


def test_a_predictor_answering_the_wrong_shape_is_a_failure() -> None:
    class Wrong:
        def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return np.zeros((1, 3), np.float32)

    feed = ForecastFeed(Wrong(), lags=1).start()
    try:
        live_minute(feed, "J", 0)
        feed.observe("J", 61.0, level(1))
        assert feed.drain(5.0)
    finally:
        feed.close()
    assert feed.stats.failed == 1 and feed.forecast("J", 61.0) is None


def test_observe_never_waits_on_the_predictor() -> None:
    gate = threading.Event()
    predictor = FakePredictor(gate=gate)
    feed = ForecastFeed(predictor, lags=1, queue_size=1).start()
    try:
        for junction in "ABC":
            live_minute(feed, junction, 0)
        feed.observe("A", 61.0, level(1))  # A's call: the worker takes it and waits
        assert predictor.started.wait(5.0)

        def the_others() -> None:
            feed.observe("B", 61.0, level(1))  # queued
            feed.observe("C", 61.0, level(1))  # the queue is full: dropped
            for t in range(62, 70):
                feed.observe("A", float(t), level(1))

        caller = threading.Thread(target=the_others)
        caller.start()
        caller.join(5.0)
        assert not caller.is_alive(), "observe() waited on a blocked predictor"
        assert feed.forecast("A", 70.0) is None
        gate.set()
        assert feed.drain(5.0)
    finally:
        gate.set()
        feed.close()
    stats = feed.stats
    assert (stats.requested, stats.answered, stats.dropped) == (3, 2, 1)
    assert feed.forecast("B", 70.0) is not None and feed.forecast("C", 70.0) is None


def test_feed_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="lags >= 1"):
        ForecastFeed(FakePredictor(), lags=0)
    feed = ForecastFeed(FakePredictor(), lags=2)
    with pytest.raises(ValueError, match="expected 4 counts"):
        feed.observe("J", 0.0, [1.0, 2.0])


# -- through the real gateway -----------------------------------------------------------


def mean_model(path: Path, lags: int) -> Path:
    """``next_counts = mean(counts, axis=2)``: counts float32[N, 4, lags] (onnx.helper)."""
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["counts"], ["next_counts"], axes=[2], keepdims=0)
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["N", 4, lags])],
        [helper.make_tensor_value_info("next_counts", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@dataclass
class Served:
    url: str
    data_dir: Path
    signer: TokenSigner


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("forecast")
    runner = ModelRunner(mean_model(data_dir / "mean.onnx", 3), cpus=0.5, warmup_runs=1)
    replica = ReplicaApp(
        runner, model="forecaster", version="v1", node_id="node-f1", replica_id="f1"
    )
    replica.warmup()
    replica_server = serve_asgi(replica, port=0)
    routes = RouteTable()
    signature = ModelSignature(
        inputs=(TensorSpec("counts", "float32", ("N", 4, 3)),),
        outputs=(TensorSpec("next_counts", "float32", ("N", 4)),),
        opset=17,
    )
    endpoint = ReplicaEndpoint("f1", "node-f1", replica_server.host, replica_server.port, "v1")
    routes.set("forecaster", "v1", [endpoint], signature=signature, tier="fog")
    signer = TokenSigner.load_or_create(data_dir)
    gateway = Gateway(routes, auth=TokenAuth(signer))
    server: ServerThread = serve_asgi(create_gateway_app(gateway), port=0, lifespan="on")
    try:
        yield Served(server.url, data_dir, signer)
    finally:
        server.stop()
        replica_server.stop()
        replica.close()


def token(served: Served, *scopes: str) -> str:
    import time

    return served.signer.issue("tester", list(scopes), ttl_s=60.0, now=time.time())


def test_the_gateway_predictor_reads_lags_and_predicts(served: Served) -> None:
    predictor = GatewayPredictor(served.url, "forecaster", token=token(served, "invoke", "read"))
    try:
        assert predictor.lags() == 3
        windows = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
        for _ in range(3):  # the kept-alive connection is reused
            np.testing.assert_allclose(predictor.predict(windows), windows.mean(axis=2))
    finally:
        predictor.close()


def test_gateway_errors_name_the_module_and_the_status(served: Served) -> None:
    anonymous = GatewayPredictor(served.url, "forecaster")
    with pytest.raises(ServingError, match=r"forecaster: HTTP 401 .*Authorization"):
        anonymous.metadata()
    other = GatewayPredictor(served.url, "nowhere", token=token(served, "invoke", "read"))
    with pytest.raises(ServingError, match="HTTP 404 .*not served"):
        other.lags()
    with pytest.raises(ValueError, match="http:// gateway URL"):
        GatewayPredictor("ftp://x", "forecaster")


def test_a_feed_through_the_gateway_attaches_forecasts_and_records_latency(
    served: Served,
) -> None:
    samples: list[tuple[float, float]] = []
    feed = gateway_feed(served.url, served.data_dir, "forecaster", on_latency=samples.append)
    try:
        assert feed.lags == 3
        for minute in range(3):
            live_minute(feed, "J", minute)
        feed.observe("J", 181.0, level(3))
        assert feed.drain(10.0)
        mean = np.mean([level(0), level(1), level(2)], axis=0)
        assert feed.forecast("J", 200.0) == pytest.approx(
            dict(zip(APPROACHES, mean.tolist(), strict=True))
        )
    finally:
        feed.close()
    assert len(samples) == 1 and samples[0][0] == 181.0 and 0.0 < samples[0][1] < 5000.0
