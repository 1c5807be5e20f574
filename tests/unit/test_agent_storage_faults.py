"""Storage faults on a device: a damaged outbox or cache state is moved aside and the
agent's stores start afresh; a full disk holds events in memory (oldest dropped,
counted) and storing resumes when space returns; background loops are restarted."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent._cache import ModuleCache
from edge_agent._outbox import Outbox, OutboxItem
from edge_agent._supervisor import Supervisor
from edge_agent._transport import PublishHandle


def wait(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def _filled_outbox(path: Path, n: int = 300) -> None:
    box = Outbox(path)
    for i in range(n):
        box.put("t", b"%04d" % i + os.urandom(400))
    box.close()


def _moved_aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-"))


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: b"this is not an SQLite file at all" * 40, id="garbage"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated-half"),
        pytest.param(lambda raw: raw[: len(raw) * 9 // 10], id="truncated-tail"),
        pytest.param(lambda raw: raw[:100], id="truncated-header"),
    ],
)
def test_a_damaged_outbox_is_moved_aside_and_a_fresh_one_starts(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "outbox.db"
    _filled_outbox(path)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)

    box = Outbox(path)  # the code before raised sqlite3.DatabaseError here: a crash loop
    try:
        assert box.quarantined == _moved_aside(path) and len(box.quarantined) == 1
        assert box.quarantined[0].read_bytes() == damaged  # kept as it was, for inspection
        assert box.stats().depth == 0
        assert box.put("t", b"after") >= 1
        assert [i.payload for i in box.peek(10)] == [b"after"]
    finally:
        box.close()
    reopened = Outbox(path)  # the fresh file is sound: nothing more is moved aside
    assert reopened.quarantined == [] and reopened.stats().depth == 1
    reopened.close()


def test_a_file_the_agent_cannot_open_is_not_mistaken_for_damage(tmp_path: Path) -> None:
    # A folder where the file should be: not damage, so nothing is moved and the error stands.
    (tmp_path / "outbox.db").mkdir()
    with pytest.raises(Exception, match="unable to open"):
        Outbox(tmp_path / "outbox.db")
    assert _moved_aside(tmp_path / "outbox.db") == []


@pytest.mark.parametrize("content", [b'{"desired": {"trunc', b"[1, 2]", b"\x00\xff\x00"])
def test_a_damaged_cache_state_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    cache = ModuleCache(tmp_path, public_key=None, require_signature=False)
    cache.state_path.write_bytes(content)
    state = cache.load_state()
    assert state.desired is None and state.installed == {}
    assert cache.quarantined == _moved_aside(cache.state_path) and len(cache.quarantined) == 1
    assert cache.quarantined[0].read_bytes() == content
    assert not cache.state_path.exists()
    cache.save_state(None, {})  # and it writes afresh
    assert json.loads(cache.state_path.read_bytes())["installed"] == {}


# ------------------------------------------------------------------ disk full


def _page_limit(box: Outbox, pages: int | None = None) -> int:
    """SQLite's page cap of the outbox's file: a full disk without a file system."""
    db = box._db
    if pages is None:
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    return int(db.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0])


def test_a_full_database_holds_events_in_memory_and_resumes_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_events=100_000)
    for i in range(20):
        box.put("t", b"disk-%d" % i)
    limit = _page_limit(box)
    for i in range(3000):  # more than the 1024 held in memory at most
        box.put("t", b"mem-%d-" % i + b"x" * 200)  # never raises
    stats = box.stats()
    assert stats.full and stats.in_memory == 1024
    on_disk = stats.depth - stats.in_memory  # the last pages' free room took a few more
    assert 20 <= on_disk < 100 and stats.dropped == 3020 - stats.depth  # every event counted
    items = box.peek(5000)
    # The oldest held in memory went; the disk's events and the newest are kept, in order.
    assert [i.payload for i in items[:20]] == [b"disk-%d" % i for i in range(20)]
    assert items[on_disk].payload.startswith(b"mem-%d-" % (3000 - 1024))
    assert [i.seq for i in items] == sorted(i.seq for i in items)

    _page_limit(box, limit * 1000)  # space is back
    box.put("t", b"later")
    stats = box.stats()
    assert not stats.full and stats.in_memory == 0 and stats.depth == len(items) + 1
    box.close()
    reopened = Outbox(tmp_path / "o.db", max_events=100_000)  # all of it is on disk now
    assert reopened.stats().depth == len(items) + 1
    assert reopened.peek(5000)[-1].payload == b"later"
    reopened.close()


class FakeLink:
    """Publishes into a list and acknowledges at once; can fail a number of times."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[OutboxItem] = []
        self.failures = failures
        self.lock = threading.Lock()

    def publish(self, item: OutboxItem) -> PublishHandle | None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("the MQTT client failed")
            h = PublishHandle(len(self.sent))
            h.published = True
            self.sent.append(item)
            return h


def test_events_flow_while_the_disk_is_full(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.put("t", b"disk-%d" % i)
    limit = _page_limit(box)
    link = FakeLink()
    box.start_pump(link.publish, window=4)
    box.set_online(True)
    for i in range(50):
        box.put("t", b"mem-%d-" % i + b"x" * 2000)
    assert box.stats().full
    assert wait(lambda: len(link.sent) == 55)
    assert [i.payload[:8] for i in link.sent[:6]] == [
        *(b"disk-%d" % i for i in range(5)),
        b"mem-0-xx",
    ]
    assert wait(lambda: box.stats().in_memory == 0)  # delivered from memory
    _page_limit(box, limit * 1000)  # space is back: the next event is stored, "full" is over
    box.put("t", b"later")
    assert not box.stats().full
    box.close()


def test_a_pump_that_fails_is_restarted_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(10):
        box.put("t", b"%d" % i)
    link = FakeLink(failures=2)
    sup = Supervisor(min_backoff_s=0.01)
    box.start_pump(link.publish, window=4, supervisor=sup)
    box.set_online(True)
    assert wait(lambda: box.stats().depth == 0)  # the code before: the pump died, 10 stayed
    assert [i.payload for i in link.sent] == [b"%d" % i for i in range(10)]
    assert sup.failures() == {"outbox-pump": 2}
    box.close()


def test_supervisor_backs_off_and_stops_restarting_when_stopped() -> None:
    runs: list[float] = []

    def always_fails() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("boom")

    sup = Supervisor(min_backoff_s=0.01, max_backoff_s=0.04)
    thread = sup.spawn("broken", always_fails)
    assert wait(lambda: len(runs) >= 5)
    sup.stop()
    thread.join(5)
    assert not thread.is_alive()
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert all(g >= 0.005 for g in gaps)  # never a hot loop: it waits between runs
    assert sup.failures()["broken"] == len(runs)
    with pytest.raises(ValueError, match="min_backoff_s"):
        Supervisor(min_backoff_s=0)


# ------------------------------------------------------------------ a real full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for the test (root only): a file system that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(10_000):  # 40 MiB at most: far more than the disk
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return filler


def test_a_real_full_disk_holds_events_and_storing_resumes(tiny_disk: Path) -> None:
    box = Outbox(tiny_disk / "outbox.db")
    box.put("t", b"before")
    filler = _fill(tiny_disk)
    assert os.statvfs(tiny_disk).f_bavail == 0
    for i in range(1500):
        box.put("t", b"full-%d-" % i + b"x" * 500)
    stats = box.stats()
    assert stats.full and stats.in_memory > 0 and stats.dropped > 0
    assert stats.in_memory + stats.dropped + (stats.depth - stats.in_memory) == 1501

    filler.unlink()  # space comes back
    box.put("t", b"after")
    stats = box.stats()
    assert not stats.full and stats.in_memory == 0
    items = box.peek(5000)
    assert items[0].payload == b"before" and items[-1].payload == b"after"
    assert [i.seq for i in items] == sorted(i.seq for i in items)
    box.close()
    reopened = Outbox(tiny_disk / "outbox.db")
    assert reopened.stats().depth == len(items)
    reopened.close()


def test_an_outbox_alone_on_a_tiny_disk_never_fills_it_for_good(tiny_disk: Path) -> None:
    # Its write-ahead log alone could fill a small disk before a checkpoint came.
    box = Outbox(tiny_disk / "outbox.db")
    link = FakeLink()
    box.start_pump(link.publish, window=8)
    box.set_online(True)
    for i in range(3000):
        box.put("t", b"%d-" % i + b"x" * 400)
        if i % 100 == 99:  # the broker keeps up: what is sent is deleted
            assert wait(lambda: box.stats().depth == 0)
    assert wait(lambda: len(link.sent) == 3000)
    assert box.stats().dropped == 0
    box.close()
