from __future__ import annotations

import json
from typing import Any

import pytest

from mesh import Mesh, SpecError
from mesh.compute._runner import Runner
from mesh.compute._runs import SQLiteStore
from mesh.compute._streams import LocalBus, StreamWorker

from .fakes import FakeBackend


def _runner() -> Runner:
    app = Mesh("s")

    @app.stream(topic="t/+/counts", window_s=60, output_topic="t/out")
    def total(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"n": sum(m["n"] for m in window), "topics": sorted(m["_topic"] for m in window)}]

    @app.function()
    def plain() -> None: ...

    return Runner([app], backend=FakeBackend(), store=SQLiteStore(":memory:"))


def test_windows_become_runs_and_outputs_are_published() -> None:
    runner, bus = _runner(), LocalBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe("t/out", lambda _t, p: seen.append(json.loads(p)))
    worker = StreamWorker(runner, "total", bus)
    worker.start()
    bus.publish("t/a/counts", b'{"n": 2}')
    bus.publish("t/b/counts", b'{"n": 3}')
    bus.publish("t/b/other", b'{"n": 100}')
    bus.publish("t/c/counts", b"not json")
    bus.publish("t/c/counts", b"[1, 2]")
    worker.stop()
    assert seen == [{"n": 5, "topics": ["t/a/counts", "t/b/counts"]}]
    assert worker.dropped == 2
    [outcome] = worker.outcomes
    assert outcome.messages == 2 and outcome.run_id is not None
    assert runner.store.get_run(outcome.run_id).function == "total"


def test_empty_windows_run_nothing() -> None:
    runner = _runner()
    worker = StreamWorker(runner, "total", LocalBus())
    assert worker.flush().run_id is None
    assert runner.store.list_runs() == []


def test_only_stream_functions_can_be_streamed() -> None:
    with pytest.raises(
        SpecError, match=r"is not a stream function \(it is registered with @app.function\)"
    ):
        StreamWorker(_runner(), "plain", LocalBus())
