"""A stream function fed by a real MQTT broker, its windows run on the fog tier of real Ray."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mesh import Mesh, SQLiteStore
from mesh.compute._runner import Runner
from mesh.compute._streams import StreamWorker
from mesh.edge._bus import EdgeBus
from tests.support.brokers import broker, embedded_broker, mosquitto, unique  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.mqtt]

app = Mesh("stream-it")


@app.stream(tier="fog", topic="it/+/counts", window_s=0.5, output_topic="it/plans")
def totals(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_site: dict[str, int] = {}
    for message in window:
        by_site[message["site"]] = by_site.get(message["site"], 0) + int(message["n"])
    return [{"site": site, "total": total} for site, total in sorted(by_site.items())]


@pytest.fixture
def gateway(broker: Any) -> Iterator[EdgeBus]:  # noqa: F811
    gw = EdgeBus(broker.url, client_id=unique("gw")).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_windows_from_mqtt_run_on_fog_and_publish(ray_backend: Any, gateway: EdgeBus) -> None:
    runner = Runner([app], backend=ray_backend, store=SQLiteStore(":memory:"))
    plans: list[dict[str, Any]] = []
    got = threading.Event()

    def on_plan(_topic: str, payload: bytes) -> None:
        plans.append(json.loads(payload))
        if sum(p["total"] for p in plans) == 15:
            got.set()

    gateway.subscribe("it/plans", on_plan)
    worker = StreamWorker(runner, "totals", gateway)
    worker.start()
    try:
        for n in range(1, 6):
            gateway.publish(
                f"it/j{n % 2}/counts", json.dumps({"site": f"j{n % 2}", "n": n}).encode()
            )
        gateway.publish("it/j0/counts", b"{broken")
        assert got.wait(30), f"plans seen: {plans}"
    finally:
        worker.stop()
    assert worker.dropped == 1
    ran = [o for o in worker.outcomes if o.run_id]
    assert sum(o.messages for o in ran) == 5
    for outcome in ran:
        record = runner.store.get_run(outcome.run_id or "")
        assert record.node_labels.get("mesh.tier") == "fog"
