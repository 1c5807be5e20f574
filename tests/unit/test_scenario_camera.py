"""Camera events: tallied by route and SLO by the mesh's harness, counts relayed by the traffic plugin."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import Event, Tensor, json_tensor
from functions.traffic.occupancy import APPROACHES
from functions.traffic.sim.camera import CameraRelay
from mesh.scenario._events import EventTally, ModuleEvents
from mesh.scenario._report import ModuleLatency

CAMERA_STREAM = "counts"

SEGMENTS = (10.0, 30.0)


def _event(
    site: str,
    seq: int,
    route: str,
    ms: float,
    rows: int = len(SEGMENTS) + 2,
    age_s: float = 0.0,
) -> Event:
    """Answers frame ``seq`` (captured at 1000 + seq), ``ms`` after its arrival, ``age_s`` late."""
    counts = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return Event(
        agent=f"j-{site}",
        site=site,
        stream=CAMERA_STREAM,
        module="counter",
        route=route,
        seq=seq,
        source_ts=1000.0 + seq,
        ts=1000.0 + seq + ms / 1e3 + age_s,
        latency_ms=ms,
        outputs={"counts": json_tensor(Tensor.from_numpy("counts", counts))},
    )


class _Both:
    """The harness's tally of the counter's events, then the plugin's relay (as a run wires them)."""

    def __init__(self, events: ModuleEvents, relay: CameraRelay) -> None:
        self.events = events
        self.relay = relay

    def on_event(self, event: Event) -> None:
        self.events.on_event(event)
        self.relay.on_event(event)


def _relay(**kwargs: Any) -> tuple[_Both, EventTally, list[tuple[str, bytes]], list[Any]]:
    latency = ModuleLatency(slo_ms=25.0)
    events = ModuleEvents("counter", CAMERA_STREAM, latency, lambda ts: ts - 1000.0)
    sent: list[tuple[str, bytes]] = []
    relay = CameraRelay(
        junctions={"A0": {"E": "A1"}},
        segments_m=SEGMENTS,
        publish=lambda topic, payload: sent.append((topic, payload)),
        output="traffic/{site}/counts",
        stream=CAMERA_STREAM,
        sim_time_at=lambda ts: ts - 1000.0,
        **kwargs,
    )
    return _Both(events, relay), events.tally, sent, latency.samples


def test_events_are_tallied_by_sender_route_and_slo() -> None:
    relay, tally, _, samples = _relay()
    relay.on_event(_event("A0", 1, "local", 3.0))
    relay.on_event(_event("A0", 3, "local", 30.0))  # seq 2 never arrived
    # A replica holding the source numbers its own events from 1: no gap with the agent's.
    relay.on_event(_event("A0", 1, "remote:counter-v1-abc", 4.0))
    relay.on_event(_event("A0", 2, "remote:counter-v1-abc", 26.0))
    relay.on_event(Event(stream="other", agent="j-A0", route="local", latency_ms=99.0))
    assert tally.received == 4 and tally.lost() == 1
    assert tally.by_route == {"local": 2, "remote": 2}
    assert tally.over_slo == {"local": 1, "remote": 1}
    assert samples == [(1.0, 3.0), (3.0, 30.0), (1.0, 4.0), (2.0, 26.0)]
    assert tally.stale == 0


def test_a_frame_answered_long_after_its_capture_is_over_the_slo_by_its_age() -> None:
    relay, tally, _, samples = _relay()
    # Queued in the broker for 10 s while its agent restarted, then run in 3 ms.
    relay.on_event(_event("A0", 1, "local", 3.0, age_s=10.0))
    relay.on_event(_event("A0", 2, "local", 3.0, age_s=0.5))  # late, but not stale
    assert tally.stale == 1 and tally.over_slo == {"local": 1}
    assert samples[0][1] == pytest.approx(10_003.0) and samples[1] == (2.0, 3.0)


def test_counts_are_relayed_with_the_forecast_and_the_neighbours() -> None:
    seen: list[tuple[str, float, list[float]]] = []

    def forecast(site: str, t: float, counts: list[float]) -> dict[str, float]:
        seen.append((site, t, counts))
        return {"N": 4.0}

    relay, _, sent, _ = _relay(forecast=forecast)
    relay.on_event(_event("A0", 5, "local", 3.0))
    [(topic, payload)] = sent
    message = json.loads(payload)
    assert topic == "traffic/A0/counts"
    assert message["counts"] == dict(zip(APPROACHES, [0.0, 1.0, 2.0, 3.0], strict=True))
    assert message["segments"][APPROACHES[0]] == [4.0, 8.0]
    assert message["queued"] == dict(zip(APPROACHES, [12.0, 13.0, 14.0, 15.0], strict=True))
    assert message["neighbours"] == {"E": "A1"} and message["forecast"] == {"N": 4.0}
    assert message["t"] == pytest.approx(5.0) and message["route"] == "local"
    assert seen == [("A0", 5.0, [0.0, 1.0, 2.0, 3.0])]


def test_a_counts_tensor_of_the_wrong_shape_is_counted_but_not_relayed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay, tally, sent, _ = _relay()
    relay.on_event(_event("A0", 1, "local", 3.0, rows=3))
    assert tally.received == 1 and sent == []
    assert "has 3 rows" in caplog.text


def test_every_frame_sent_must_be_answered_once() -> None:
    relay, tally, _, _ = _relay()
    for seq in (1, 2, 3):
        tally.sent("A0", 1000.0 + seq)
    relay.on_event(_event("A0", 1, "local", 3.0))
    # Frame 2 ran on both sides around a hand-over: a duplicate, not a loss.
    relay.on_event(_event("A0", 2, "local", 3.0))
    relay.on_event(_event("A0", 2, "remote:counter-v1-abc", 3.0))
    assert tally.gaps() == 0 and tally.unanswered() == 1 and tally.lost() == 1
    assert tally.unanswered_by_site() == {"A0": [1003.0]}
    relay.on_event(_event("A0", 3, "local", 3.0))
    assert tally.lost() == 0
