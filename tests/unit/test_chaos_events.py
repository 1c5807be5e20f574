"""The chaos suite's event accounting (tests/support/chaos_events.py), without a broker."""

from __future__ import annotations

import json

import pytest

from edge_agent._settings import load_settings
from edge_agent.protocol import Topics
from mesh.core._topics import topic_matches
from tests.support.chaos_events import EventLedger, EventProbe, pipeline_env


def test_each_frame_ends_delivered_lost_or_unavailable_with_duplicates_counted() -> None:
    ledger = EventLedger()
    for frame_id in (1.0, 2.0, 3.0):
        ledger.handed(frame_id, frame_id, lambda: True)
    ledger.handed(4.0, 4.0, lambda: False)  # no broker acknowledged it
    ledger.not_handed(5.0, 5.0, "broker down: not connected")
    ledger.delivered(1.0, "e1")
    ledger.delivered(1.0, "e1")  # the outbox replayed the same event
    ledger.delivered(1.0, "e9")  # the frame ran again: a new event
    ledger.delivered(2.0, None)
    ledger.delivered(7.0, "e7")  # not a frame of this ledger's

    f = ledger.figures()

    assert (f["frames"], f["sent"], f["delivered"], f["lost"], f["unavailable"]) == (5, 3, 2, 1, 2)
    assert (f["duplicates"], f["replayed"], f["foreign"]) == (2, 1, 1)
    assert f["lost_at_s"] == [3.0]
    assert f["reasons"] == {
        "broker down: not connected": 1,
        "no broker acknowledged it (PUBACK)": 1,
    }
    assert f["measured"] is True


def test_a_frame_not_acknowledged_but_answered_counts_as_delivered() -> None:
    ledger = EventLedger()
    ledger.handed(1.0, 0.0, lambda: False)  # the PUBACK was lost with the connection
    assert ledger.pending() == 1
    ledger.delivered(1.0, "e1")
    f = ledger.figures()
    assert (f["sent"], f["delivered"], f["unavailable"], ledger.pending()) == (1, 1, 0, 0)


def test_the_pipeline_reads_and_writes_only_what_an_enrolled_agent_may() -> None:
    env = {"EDGE_AGENT_BROKER": "mqtt://127.0.0.1:1883", "EDGE_AGENT_ID": "a1",
           **pipeline_env("edge-mod", "s1")}  # fmt: skip
    (spec,) = load_settings([], env=env).pipelines
    topics = Topics()
    event_topic = topics.events("s1", spec.stream_name)

    assert spec.module == "edge-mod" and spec.qos == 1
    assert spec.source.topic is not None
    assert any(topic_matches(f, spec.source.topic) for f in topics.agent_subscriptions("a1", "s1"))
    assert any(topic_matches(f, event_topic) for f in topics.agent_publications("a1", "s1"))
    assert json.loads(pipeline_env("m", "s1")["EDGE_AGENT_PIPELINES"])[0]["source"]["options"]


@pytest.mark.parametrize(
    ("url", "rate_hz", "expected"),
    [("http://127.0.0.1:1883", 5.0, "mqtt://host:port"), ("mqtt://127.0.0.1:1", 0.0, "positive")],
)
def test_a_probe_with_a_bad_broker_url_or_rate_says_what_it_expected(
    url: str, rate_hz: float, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        EventProbe(url, username="u", password="p", frames_topic="f", events_topic="e",
                   rate_hz=rate_hz)  # fmt: skip


def test_frames_a_restarting_broker_took_are_counted_apart_only_within_the_outage() -> None:
    ledger = EventLedger()
    for at_s in (1.0, 5.0, 9.0, 12.0):
        ledger.handed(at_s, at_s, lambda: True)  # each taken by a broker, none answered
    ledger.outage_began(4.0)
    ledger.outage_ended(10.0)
    ledger.outage_began(11.5)  # still open: counts up to now

    f = ledger.figures()

    assert (f["lost"], f["broker_outage"], f["sent"]) == (1, 3, 4)
    assert f["lost_at_s"] == [1.0]
    assert f["outages_s"] == [[4.0, 10.0], [11.5, None]]
    assert f["reasons"] == {"taken by a broker restarting, before the agent was back": 3}
