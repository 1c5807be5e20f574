"""The embedded broker's session store: what it keeps, its bounds, expiry, a damaged file."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from amqtt.broker import Broker

from mesh.edge.broker._amqtt_persistence import check_persistence_hooks
from mesh.edge.broker._broker import BrokerStartError
from mesh.edge.broker._session_store import SessionLimits, SessionStore


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "mqtt" / "sessions.db"


def test_subscriptions_and_queued_messages_survive_a_reopen(path: Path) -> None:
    store = SessionStore(path)
    store.subscribe("cam-1", "mesh/cam-1/#", 1)
    store.subscribe("cam-1", "mesh/all", 0)
    store.subscribe("cam-1", "mesh/all", 1)  # resubscribing replaces the QoS
    store.disconnected("cam-1")
    first, _ = store.enqueue("cam-1", "mesh/cam-1/frames", b"f1", 1)
    second, _ = store.enqueue("cam-1", "mesh/cam-1/frames", b"f2", 1)
    store.close()

    [session] = SessionStore(path).load()
    assert session.client_id == "cam-1"
    assert session.subscriptions == (("mesh/all", 1), ("mesh/cam-1/#", 1))
    assert [(m.row, m.data) for m in session.queued] == [(first.row, b"f1"), (second.row, b"f2")]


def test_the_file_and_its_folder_are_owner_only(path: Path) -> None:
    SessionStore(path).subscribe("cam-1", "t", 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_delivered_messages_are_gone_and_no_longer_count(path: Path) -> None:
    store = SessionStore(path, SessionLimits(max_messages=2))
    store.subscribe("cam-1", "t", 1)
    rows = [store.enqueue("cam-1", "t", b"x", 1)[0].row for _ in range(2)]
    store.delivered("cam-1", tuple(rows))
    assert store.load()[0].queued == ()
    _, dropped = store.enqueue("cam-1", "t", b"y", 1)
    assert dropped == ()


def test_a_full_queue_drops_its_oldest_and_warns_once(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SessionStore(path, SessionLimits(max_messages=3))
    store.subscribe("cam-1", "t", 1)
    rows = []
    with caplog.at_level(logging.WARNING, logger="mesh.edge.broker._session_store"):
        for i in range(5):
            queued, dropped = store.enqueue("cam-1", "t", f"m{i}".encode(), 1)
            rows.append((queued.row, dropped))
    assert [d for _, d in rows] == [(), (), (), (rows[0][0],), (rows[1][0],)]
    assert [m.data for m in store.load()[0].queued] == [b"m2", b"m3", b"m4"]
    assert store.dropped == {"cam-1": 2}
    warnings = [r for r in caplog.records if "cam-1" in r.getMessage()]
    assert len(warnings) == 1 and "dropped (1 so far)" in warnings[0].getMessage()


def test_the_byte_bound_drops_oldest_and_a_too_large_message_itself(path: Path) -> None:
    store = SessionStore(path, SessionLimits(max_bytes=10))
    store.subscribe("cam-1", "t", 1)
    a, _ = store.enqueue("cam-1", "t", b"aaaa", 1)
    b, _ = store.enqueue("cam-1", "t", b"bbbb", 1)
    c, dropped = store.enqueue("cam-1", "t", b"cccc", 1)
    assert dropped == (a.row,)
    huge, dropped = store.enqueue("cam-1", "t", b"z" * 11, 1)
    assert dropped == (b.row, c.row, huge.row)
    assert store.load()[0].queued == ()


def test_the_bounds_hold_across_a_reopen(path: Path) -> None:
    limits = SessionLimits(max_messages=2)
    store = SessionStore(path, limits)
    store.subscribe("cam-1", "t", 1)
    first, _ = store.enqueue("cam-1", "t", b"1", 1)
    store.enqueue("cam-1", "t", b"2", 1)
    store.close()
    _, dropped = SessionStore(path, limits).enqueue("cam-1", "t", b"3", 1)
    assert dropped == (first.row,)


def test_a_session_away_longer_than_the_expiry_is_forgotten(path: Path) -> None:
    clock = _Clock()
    store = SessionStore(path, SessionLimits(expiry_s=100), clock=clock)
    store.subscribe("gone", "t", 1)
    store.enqueue("gone", "t", b"old", 1)
    store.disconnected("gone")
    store.subscribe("back", "t", 1)
    store.disconnected("back")
    clock.now += 60
    store.connected("back")  # came back: no expiry while connected
    store.subscribe("new", "t", 1)
    store.disconnected("new")
    clock.now += 60  # "gone" away 120 s, "new" 60 s
    assert [s.client_id for s in store.load()] == ["back", "new"]
    assert store.load()[0].queued == ()


def test_a_session_connected_when_the_broker_died_counts_as_away_from_the_restart(
    path: Path,
) -> None:
    clock = _Clock()
    store = SessionStore(path, SessionLimits(expiry_s=100), clock=clock)
    store.subscribe("cam-1", "t", 1)  # connected, then the process died
    clock.now += 1000
    [session] = store.load()
    assert session.disconnected_at == clock.now
    clock.now += 101
    assert store.load() == []


def test_a_clean_connect_forgets_everything(path: Path) -> None:
    store = SessionStore(path)
    store.subscribe("cam-1", "t", 1)
    store.enqueue("cam-1", "t", b"x", 1)
    store.forget("cam-1")
    assert store.load() == []


def test_unsubscribe_drops_only_those_filters(path: Path) -> None:
    store = SessionStore(path)
    for f in ("a", "b", "c"):
        store.subscribe("cam-1", f, 1)
    store.unsubscribe("cam-1", "a", "c")
    assert store.load()[0].subscriptions == (("b", 1),)


def test_a_damaged_file_is_moved_aside_with_a_warning(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="mesh.edge.broker._session_store"):
        store = SessionStore(path)
    assert store.load() == []
    store.subscribe("cam-1", "t", 1)  # and it works
    aside = list(path.parent.glob("sessions.db.damaged-*"))
    assert [p.read_bytes()[:22] for p in aside] == [b"this is not a database"]
    assert any("moved aside" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "limits",
    [{"max_messages": 0}, {"max_bytes": -1}, {"expiry_s": 0.5}],
)
def test_limits_below_one_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        SessionLimits(**limits)  # type: ignore[arg-type]


def test_an_amqtt_without_a_persistence_hook_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    check_persistence_hooks()
    monkeypatch.delattr(Broker, "_retain_broadcast_message")
    with pytest.raises(BrokerStartError, match=r"has no Broker\._retain_broadcast_message"):
        check_persistence_hooks()
