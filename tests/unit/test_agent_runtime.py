"""ONNX Runtime modules: signatures, input checks, workers, deadlines, batching, hot swap."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from edge_agent._runtime import Job, JobResult, ModuleLoadError, ModuleServer, load_model
from edge_agent.protocol import ErrorCode, Tensor
from tests.support.agent_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=2.0)


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny3.onnx", scale=3.0)


def x(n: int = 1, value: float = 1.0, width: int = 4, dtype: str = "float32") -> Tensor:
    return Tensor.from_numpy("x", np.full((n, width), value, dtype=dtype))


def test_signature_and_run(tiny: Path) -> None:
    m = load_model(tiny, name="tiny", version="1", warmup_runs=1)
    assert m.describe_inputs() == "x: float32[N,4]"
    assert m.outputs[0].name == "y" and m.batchable and m.provider == "CPUExecutionProvider"
    (y,) = m.run(m.feeds([x(2, 1.5)]))
    np.testing.assert_allclose(y.to_numpy(), np.full((2, 4), 3.0))


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (x(dtype="float64"), "dtype float64, expected float32"),
        (x(width=3), "shape [1, 3], expected x: float32[N,4]"),
        (Tensor.from_numpy("x", np.zeros(4, np.float32)), "shape [4]"),
    ],
)
def test_bad_inputs_name_the_signature(tiny: Path, tensor: Tensor, needle: str) -> None:
    m = load_model(tiny, name="tiny", version="1")
    with pytest.raises(Exception) as err:
        m.feeds([tensor])
    assert getattr(err.value, "code", None) is ErrorCode.BAD_INPUT
    assert needle in str(err.value) and "signature: x: float32[N,4]" in str(err.value)


def test_names_checked_when_ambiguous(tiny: Path) -> None:
    m = load_model(tiny, name="tiny", version="1")
    assert "x" in m.feeds([Tensor.from_numpy("anything", np.zeros((1, 4), np.float32))])
    with pytest.raises(Exception, match=r"missing \['x'\], unexpected \['a', 'b'\]"):
        m.feeds(
            [
                Tensor.from_numpy("a", np.zeros((1, 4), np.float32)),
                Tensor.from_numpy("b", np.zeros((1, 4), np.float32)),
            ]
        )


def test_modules_the_device_cannot_run(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ModuleLoadError, match="needs one of providers") as err:
        load_model(tiny, name="t", version="1", providers=["CUDAExecutionProvider"])
    assert err.value.code is ErrorCode.UNSUPPORTED
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModuleLoadError, match="cannot load") as err:
        load_model(garbage, name="g", version="1")
    assert err.value.code is ErrorCode.UNSUPPORTED
    custom = build_tiny_model(tmp_path / "c.onnx", op_domain="com.example.unknown")
    with pytest.raises(ModuleLoadError) as err:
        load_model(custom, name="c", version="1")
    assert err.value.code is ErrorCode.UNSUPPORTED


class Collector:
    def __init__(self) -> None:
        self.results: list[JobResult] = []
        self.cond = threading.Condition()

    def __call__(self, r: JobResult) -> None:
        with self.cond:
            self.results.append(r)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[JobResult]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) >= n, timeout)
            return list(self.results)


def job(done: Collector, tensors: Sequence[Tensor], **kw: object) -> Job:
    return Job(tensors, done, enqueued=time.perf_counter(), **kw)  # type: ignore[arg-type]


def test_server_runs_jobs_and_reports_stats(tiny: Path) -> None:
    server = ModuleServer("tiny", max_queue=8)
    got = Collector()
    try:
        assert server.submit(job(got, [x()]))
        (r,) = got.wait(1)
        assert r.error is not None and r.error.code is ErrorCode.NOT_READY
        server.swap(load_model(tiny, name="tiny", version="1"))
        assert server.submit(job(got, [x(value=2.0)]))
        r = got.wait(2)[1]
        assert r.error is None and r.version == "1" and r.outputs is not None
        np.testing.assert_allclose(r.outputs[0].to_numpy(), 4.0)
        stats = server.stats()
        assert stats.requests == 2 and stats.errors == 1 and stats.p50_ms is not None
    finally:
        server.stop()


def test_expired_jobs_are_dropped_not_run(tiny: Path) -> None:
    server = ModuleServer("tiny")
    server.swap(load_model(tiny, name="tiny", version="1"))
    got = Collector()
    expired = threading.Event()
    try:
        server.submit(job(got, [x()], deadline_ts=time.time() - 1, on_expired=expired.set))
        server.submit(job(got, [x()]))
        got.wait(1)
        assert expired.is_set() and len(got.results) == 1
        assert server.stats().expired == 1
    finally:
        server.stop()


def test_bounded_queue_and_version_pin(tiny: Path) -> None:
    server = ModuleServer("tiny", max_queue=2)
    gate = threading.Event()
    got = Collector()

    def slow(r: JobResult) -> None:
        gate.wait(5)
        got(r)

    server.swap(load_model(tiny, name="tiny", version="1"))
    try:
        assert server.submit(Job([x()], slow))
        time.sleep(0.1)  # the worker holds the first job at the gate
        assert server.submit(Job([x()], got)) and server.submit(Job([x()], got))
        assert not server.submit(Job([x()], got))  # full
        assert server.depth == 2
        gate.set()
        got.wait(3)
        server.submit(job(got, [x()], version="9"))
        r = got.wait(4)[3]
        assert r.error is not None and r.error.code is ErrorCode.UNKNOWN_MODULE
        assert "serving 1" in r.error.reason
    finally:
        gate.set()
        server.stop()


def test_batches_match_single_runs(tiny: Path) -> None:
    server = ModuleServer("tiny", max_batch=16)
    gate = threading.Event()
    got = Collector()
    server.swap(load_model(tiny, name="tiny", version="1"))
    try:
        server.submit(Job([x()], lambda r: (gate.wait(5), got(r))))
        inputs = [x(n=1 + i % 3, value=float(i)) for i in range(12)]
        inputs.append(x(width=5))  # a bad one in the batch only fails itself
        done: list[Collector] = [Collector() for _ in inputs]
        for t, d in zip(inputs, done, strict=True):
            assert server.submit(job(d, [t]))
        gate.set()
        for i, (t, d) in enumerate(zip(inputs, done, strict=True)):
            (r,) = d.wait(1)
            if i == 12:
                assert r.error is not None and r.error.code is ErrorCode.BAD_INPUT
                continue
            assert r.error is None and r.outputs is not None
            np.testing.assert_allclose(r.outputs[0].to_numpy(), t.to_numpy() * 2)
    finally:
        gate.set()
        server.stop()


def test_hot_swap_under_load_fails_nothing(tiny: Path, tiny3: Path) -> None:
    server = ModuleServer("tiny", max_queue=1024)
    server.swap(load_model(tiny, name="tiny", version="1"))
    got = Collector()
    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        while not stop.is_set():
            if server.submit(job(got, [x()])):
                sent[0] += 1
            time.sleep(0.0005)

    t = threading.Thread(target=feed)
    t.start()
    try:
        time.sleep(0.2)
        new = load_model(tiny3, name="tiny", version="2", warmup_runs=2)
        server.swap(new)
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    results = got.wait(sent[0])
    server.stop()
    assert all(r.error is None for r in results)
    versions = [r.version for r in results]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # no going back
    for r in results:
        assert r.outputs is not None
        expected = 2.0 if r.version == "1" else 3.0
        np.testing.assert_allclose(r.outputs[0].to_numpy(), expected)
