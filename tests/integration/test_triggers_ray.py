"""Triggers as the control plane runs them: deployed apps, real Ray, a real Mosquitto.

A schedule fires and its run is recorded with the trigger; a burst of MQTT
messages fires one run with the last message; that run's success fires a
chained run with its result passed in; a file that appears under a watched
glob fires one run with its path once it stopped changing. The engine's clock follows the wall
clock, plus a jump to the next five-minute firing (cron's unit is a minute).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.compute._runs import Deployment, RunRecord, RunStatus, SQLiteStore
from mesh.edge._bus import EdgeBus
from mesh.runtime._triggers import TriggerService
from tests.support.brokers import mosquitto, unique  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.mqtt]

_APP = """
from typing import Any

from mesh import Mesh

app = Mesh("triggers-it")


@app.trigger(schedule="*/5 * * * *")
@app.function(tier="fog")
def tick() -> str:
    return "tick"


@app.trigger(topic="{prefix}/+/reading", debounce_s=0.3)
@app.function(tier="cloud")
def on_reading(event: dict[str, Any]) -> dict[str, Any]:
    return {{"seen": event["payload"], "topic": event["topic"]}}


@app.trigger(after="on_reading")
@app.function(tier="fog")
def refit(upstream: dict[str, Any]) -> dict[str, Any]:
    return {{"refit_from": upstream["seen"]}}


@app.trigger(path="{inbox}/**/*.csv", debounce_s=0.5)
@app.function(tier="fog")
def ingest(path: str) -> dict[str, Any]:
    with open(path) as f:
        return {{"name": path.rsplit("/", 1)[-1], "rows": len(f.read().splitlines())}}
"""


class ShiftedClock:
    """The wall clock plus ``shift_s``, which the test moves forward."""

    def __init__(self) -> None:
        self.shift_s = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self.shift_s

    def jump(self, seconds: float) -> None:
        with self._lock:
            self.shift_s += seconds


def _wait(what: str, condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s  # a Ray task on a warm 2-node cluster: seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _finished(store: SQLiteStore, function: str) -> RunRecord | None:
    runs = store.list_runs(function=function, limit=5)
    return runs[0] if runs and runs[0].status.finished else None


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[SQLiteStore, str]]:
    prefix = unique("trig")
    source = tmp_path / "trigger_app.py"
    (tmp_path / "inbox" / "old").mkdir(parents=True)
    (tmp_path / "inbox" / "old" / "before.csv").write_text("there before the watch\n")
    source.write_text(_APP.format(prefix=prefix, inbox=tmp_path / "inbox"))
    store = SQLiteStore(tmp_path / "mesh.db")
    functions = (("tick", "fog"), ("on_reading", "cloud"), ("refit", "fog"), ("ingest", "fog"))
    for name, tier in functions:
        store.put_deployment(
            Deployment(name, "triggers-it", "function", str(source), tier, "{}", time.time())
        )
    try:
        yield store, prefix
    finally:
        store.close()


def test_schedule_event_and_chain_fire_on_ray_and_are_recorded(
    ray_backend: Any,
    mosquitto: Any,  # noqa: F811
    deployed: tuple[SQLiteStore, str],
) -> None:
    store, prefix = deployed
    inbox = Path(store.path).parent / "inbox"
    bus = EdgeBus(mosquitto.url, client_id=unique("gw")).start()
    clock = ShiftedClock()
    service = TriggerService(store, ray_backend, bus, clock=clock, period_s=0.1, reload_s=0.5)
    service.start()
    try:
        _wait("the event trigger's subscription", lambda: service.topics)
        assert service.topics == {f"{prefix}/+/reading"}
        assert _finished(store, "tick") is None  # nothing is due before the jump

        # The schedule: jump to the next five-minute firing.
        next_at = service.engine.next_firing("tick-schedule")
        assert next_at is not None
        clock.jump(next_at - clock.now() + 1)
        tick = _wait("the scheduled run", lambda: _finished(store, "tick"))
        assert (tick.status, tick.trigger) == (RunStatus.SUCCEEDED, "tick-schedule")
        assert tick.result_ref == '"tick"' and tick.node_labels.get("mesh.tier") == "fog"

        # The event: a burst of three readings fires one run, with the last.
        for n in range(3):
            bus.publish(f"{prefix}/s{n}/reading", json.dumps({"n": n}).encode())
        reading = _wait("the event's run", lambda: _finished(store, "on_reading"))
        assert (reading.status, reading.trigger) == (RunStatus.SUCCEEDED, "on_reading-topic")
        assert json.loads(reading.result_ref or "") == {
            "seen": {"n": 2},
            "topic": f"{prefix}/s2/reading",
        }
        # The chain: the event run's value passed to refit.
        refit = _wait("the chained run", lambda: _finished(store, "refit"))
        assert (refit.status, refit.trigger) == (RunStatus.SUCCEEDED, "refit-after")
        assert json.loads(refit.result_ref or "") == {"refit_from": {"n": 2}}
        assert len(store.list_runs(function="on_reading")) == 1  # one burst, one run

        # The file: a CSV written under the watched folder fires one run with its
        # path; the file there before the watch and a non-CSV fire nothing.
        assert _finished(store, "ingest") is None
        (inbox / "old" / "skip.txt").write_text("not a csv\n")
        (inbox / "old" / "counts-1.csv").write_text("a,b\n1,2\n3,4\n")
        ingest = _wait("the file's run", lambda: _finished(store, "ingest"))
        assert (ingest.status, ingest.trigger) == (RunStatus.SUCCEEDED, "ingest-path")
        assert json.loads(ingest.result_ref or "") == {"name": "counts-1.csv", "rows": 3}
        time.sleep(2.0)  # four settle times: the same file fires once
        assert len(store.list_runs(function="ingest")) == 1
    finally:
        service.stop()
        bus.stop()
