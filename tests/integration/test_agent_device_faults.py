"""A real agent process (``python -m edge_agent``) on a real Mosquitto, on a bad device.

- Its outbox and ``state.json`` are damaged before it starts and its clock runs
  5 s ahead of the control plane's: it starts (the damaged files moved aside and
  reported in its heartbeat), serves requests stamped by the slow clock, and
  answers one whose deadline did pass ``expired``.
- Its disk (a 2 MiB tmpfs, mounted here; root only) fills up while a pipeline
  publishes events: events keep arriving in order, it keeps serving, no thread
  dies, and it goes on once the space is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tests.support.agent_fixtures as af
from edge_agent._sources import write_replay
from edge_agent.protocol import ErrorCode, Event, Heartbeat, Topics, encode_frame
from mesh.edge.broker._broker import MosquittoBroker
from tests.security._edge import MODULE, RunningAgent, running_agent, wait, x
from tests.support.agent_fixtures import (
    AgentProcess,
    ArtifactServer,
    SigningKey,
    build_tiny_model,
    desired,
    module_spec,
)
from tests.support.brokers import mosquitto  # noqa: F401  (fixture)

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(240)]

T = Topics()


def heartbeats(running: RunningAgent) -> list[Heartbeat]:
    topic = T.heartbeat(running.agent)
    got = [p for t, p in list(running.requester.events) if t == topic]
    return [Heartbeat.model_validate_json(p) for p in got]


def last_beat(running: RunningAgent, cond: Callable[[Heartbeat], bool], what: str) -> Heartbeat:
    wait(lambda: any(cond(b) for b in heartbeats(running)), 30, what)
    return [b for b in heartbeats(running) if cond(b)][-1]


def test_damaged_storage_and_a_fast_clock(
    mosquitto: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "outbox.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    (cache / "state.json").write_bytes(b'{"desired": {"schema_version": 1, "ver')
    with running_agent(
        mosquitto, tmp_path, signing_key, artifact_server, agent_processes
    ) as running:  # the code before: the agent exited at start, again and again
        r = running.requester
        r.subscribe(T.heartbeat(running.agent))
        # Every request here is stamped by the control plane's clock, 5 s behind this device's.
        for _ in range(3):  # stamped by a control plane whose clock is 5 s behind
            cp_now = time.time() - 5.0
            reply, _ = r.infer(MODULE, running.agent, [x()], 30, ts=cp_now, deadline_ts=cp_now + 3)
            assert reply.ok, reply.error  # the code before: dropped as expired, no reply
        cp_now = time.time() - 5.0
        reply, _ = r.infer(MODULE, running.agent, [x()], 30, ts=cp_now, deadline_ts=cp_now - 1)
        assert reply.error is not None and reply.error.code == ErrorCode.EXPIRED, reply

        beat = last_beat(
            running,
            lambda b: MODULE in b.modules and b.modules[MODULE].expired >= 1,
            "expired counted",
        )
        moved = sorted(Path(p).name.split(".corrupt-")[0] for p in beat.faults.quarantined)
        assert moved == ["outbox.db", "state.json"]
        assert all(Path(p).exists() for p in beat.faults.quarantined)
        assert beat.faults.clock_offset_s <= -4.9
        assert beat.faults.thread_failures == {}
        assert "moved aside" in running.proc.log()
        assert running.still_connected()


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Iterator[Path]:
    """The agent's cache folder on a 2 MiB tmpfs (mounted for the test; root only)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


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


def test_a_full_disk_under_a_running_pipeline(
    mosquitto: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
    tiny_cache: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    replay = tmp_path / "replay.bin"
    write_replay(replay, [encode_frame({}, [x()]) for _ in range(5)])
    stream = T.events("sec", "counts")
    model = build_tiny_model(tmp_path / "tiny.onnx", scale=2.0, width=4).read_bytes()
    with running_agent(
        mosquitto, tmp_path, signing_key, artifact_server, agent_processes
    ) as running:
        r = running.requester
        r.subscribe(T.heartbeat(running.agent))
        r.subscribe(stream)
        pipeline = {
            "name": "count",
            "module": MODULE,
            "stream": "counts",
            "source": {"kind": "file", "path": str(replay), "rate_hz": 20, "loop": True},
        }
        spec = module_spec(artifact_server, signing_key, MODULE, "1", model)
        doc = desired(2, [spec], [pipeline])
        r.client.publish(T.desired(running.agent), json.dumps(doc), qos=1, retain=True)

        def events() -> list[Event]:
            return [Event.model_validate_json(p) for t, p in list(r.events) if t == stream]

        wait(lambda: len(events()) >= 5, 30, "pipeline events")
        filler = _fill(tiny_cache)
        assert os.statvfs(tiny_cache).f_bavail == 0
        seen = len(events())
        # The code before: the pump died on the first failed write; no event came after.
        wait(lambda: len(events()) >= seen + 40, 60, "events while the disk is full")
        assert running.answers()
        during = heartbeats(running)[-1].outbox  # full, or kept going by reclaiming its log
        filler.unlink()  # space is back
        seen = len(events())
        wait(lambda: len(events()) >= seen + 10, 60, "events once the space is back")

        seqs = [e.seq for e in events()]
        assert seqs == sorted(seqs), "events out of order"
        beat = last_beat(
            running, lambda b: not b.outbox.full and b.outbox.in_memory == 0, "storing again"
        )
        print(f"outbox while the disk was full: {during}; after: {beat.outbox}; {len(seqs)} events")
        assert beat.faults.thread_failures == {}
        assert running.answers() and running.still_connected()
        child = running.proc.proc
        assert child is not None and child.poll() is None  # still running
