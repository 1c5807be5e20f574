"""After a restart, the recorded modules with a drift check or a canary are tracked again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mesh import QoS
from mesh.control._store import DeploymentRecord, PlacementStore
from mesh.runtime._lifecycle import LifecycleTracking
from mesh.sdk import ModuleSpec
from mesh.sdk._specs import Canary, Drift

DRIFT = Drift(statistic="error", threshold=3.0, labels="traffic/{site}/truth")


class Service:
    """Records what it was asked to track (the services' ``track``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def track(self, spec: ModuleSpec, **options: Any) -> None:
        self.calls.append((spec.name, options))


def _record(spec: ModuleSpec, *, version: str = "v2", agent: str = "j-A0") -> DeploymentRecord:
    return DeploymentRecord(
        module=spec.name,
        spec_json=spec.model_dump_json(),
        version=version,
        tier="edge",
        site="A0",
        agent=agent,
        sources={},
        updated_at=1.0,
    )


def test_recorded_modules_with_a_check_or_a_canary_are_tracked_again(tmp_path: Path) -> None:
    qos = QoS(p95_latency_ms=25)
    counter = ModuleSpec(name="counter", model="vc", qos=qos, drift=DRIFT, canary=Canary())
    only_canary = ModuleSpec(name="ranker", model="rk", qos=qos, canary=Canary(fraction=0.5))
    plain = ModuleSpec(name="plain", model="p", qos=qos)
    store = PlacementStore(tmp_path / "mesh.db")
    try:
        for spec in (counter, only_canary, plain):
            store.put_deployment(_record(spec))
        records = store.deployments()
    finally:
        store.close()
    lifecycle = LifecycleTracking()
    drift, fresh, canary = Service(), Service(), Service()
    lifecycle.drift, lifecycle.fresh_data, lifecycle.canary = drift, fresh, canary  # type: ignore[assignment]

    resumed = lifecycle.resume(records)

    assert resumed == {"counter": ["drift", "fresh data", "canary"], "ranker": ["canary"]}
    assert drift.calls == [("counter", {"version": "v2"})]
    assert fresh.calls == [("counter", {})]
    assert canary.calls == [("counter", {}), ("ranker", {})]


def test_a_spec_that_no_longer_parses_is_skipped_and_the_rest_resume(caplog: Any) -> None:
    qos = QoS(p95_latency_ms=25)
    good = _record(ModuleSpec(name="counter", model="vc", qos=qos, drift=DRIFT))
    broken = dataclasses.replace(good, module="old", spec_json='{"name": 1}')
    lifecycle = LifecycleTracking()
    drift = Service()
    lifecycle.drift = drift  # type: ignore[assignment]

    assert lifecycle.resume([broken, good]) == {"counter": ["drift"]}
    assert drift.calls == [("counter", {"version": "v2"})]
    assert "module old: its recorded spec does not parse" in caplog.text


def test_no_service_no_tracking() -> None:
    qos = QoS(p95_latency_ms=25)
    record = _record(ModuleSpec(name="counter", model="vc", qos=qos, drift=DRIFT))
    assert LifecycleTracking().resume([record, record]) == {}


def test_a_module_a_service_refuses_is_skipped_and_the_rest_resume(caplog: Any) -> None:
    class Refusing(Service):
        def track(self, spec: ModuleSpec, **options: Any) -> None:
            if spec.name == "gone":
                raise ValueError("no version v2 of 'gone'")
            super().track(spec, **options)

    qos = QoS(p95_latency_ms=25)
    records = [
        _record(ModuleSpec(name=name, model=name, qos=qos, drift=DRIFT)) for name in ("gone", "ok")
    ]
    lifecycle = LifecycleTracking()
    drift = Refusing()
    lifecycle.drift = drift  # type: ignore[assignment]
    assert lifecycle.resume(records) == {"ok": ["drift"]}
    assert "module gone: not tracked again after the restart: no version v2" in caplog.text
