"""Device faults under steady load: the agent's disk full, its outbox corrupt (issue 15, item 6).

Both faults hit what the agent stores (``--cache-dir``: ``state.json``, the
modules, ``outbox.db``), not its process: it must keep serving the edge module
and every request must be answered within its deadline. A damaged outbox is
moved aside (``edge_agent/_quarantine.py``) and reported in the heartbeat,
which the control plane receives over the broker and ``mesh agents list``
shows in its ``faults`` column (the REST API does not show it yet).

The mesh runs no event source here, so the full disk is not written to while it
is full: these tests hold the agent to serving through it and coming out of it
with no thread failed; the outbox's own disk-full path (events held in memory,
stored again) is covered by tests/unit/test_outbox*.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import ChaosMesh, Load
from tests.support.chaos_faults import FaultUnavailableError, fault_under_load

#: Load before and after the fault, seconds.
CALM_S = 2.0
#: A request sent while the agent restarts waits in its MQTT session until it is back:
#: 2-5 s on a 2-core host under load (measured), past the 2 s a request gets elsewhere.
RESTART_DEADLINE_S = 10.0


def _check(tallies: dict[str, Any], what: str) -> None:
    for module, tally in tallies.items():
        assert tally["sent"] > 0, module
        assert tally["failed"] == 0, f"after {what}, {module}: {tally}"
        assert tally["unavailable"] == 0, f"after {what}, {module}: {tally}"
        assert tally["answered"] == tally["sent"], tally


def test_a_full_disk_neither_stops_the_agent_nor_loses_a_request(chaos_mesh: ChaosMesh) -> None:
    faults = chaos_mesh.faults
    try:
        faults.mount_disk()  # the agent is started again on its tmpfs
    except FaultUnavailableError as exc:
        pytest.skip(str(exc))
    chaos_mesh.wait_serving(Load(chaos_mesh.gateway, chaos_mesh.token, [chaos_mesh.EDGE]))
    agent = chaos_mesh.agent_pid
    tallies, what = fault_under_load(chaos_mesh, "disk_full")
    _check(tallies, what)
    assert chaos_mesh.agent_pid == agent, "the agent exited while its disk was full"
    assert faults.disk_free_bytes() > 0
    beat = faults.agent_heartbeat(lambda _beat: True)  # heartbeats are not retained: a new one
    assert beat.faults.thread_failures == {}, beat.faults
    assert not beat.outbox.full and beat.outbox.dropped == 0, beat.outbox


def test_an_agent_restarted_on_a_full_disk_starts_and_serves(chaos_mesh: ChaosMesh) -> None:
    faults = chaos_mesh.faults
    try:
        faults.mount_disk()
    except FaultUnavailableError as exc:
        pytest.skip(str(exc))
    load = Load(chaos_mesh.gateway, chaos_mesh.token, [chaos_mesh.EDGE],
                deadline_s=RESTART_DEADLINE_S).start()  # fmt: skip
    served_full: list[float] = []

    def reboot() -> None:  # a device that restarts with its disk full
        faults.restart_agent()
        served_full.append(chaos_mesh.wait_serving(load))  # the disk still full

    try:
        time.sleep(CALM_S)
        what = faults.fill_disk(while_full=reboot)
        chaos_mesh.wait_serving(load)
        time.sleep(CALM_S)
    finally:
        load.stop()
    _check(load.snapshot(), f"{what}, the agent restarted meanwhile")
    assert served_full, what
    beat = faults.agent_heartbeat(lambda _beat: True)
    assert not beat.outbox.full, beat.outbox


def test_a_corrupt_outbox_is_moved_aside_reported_and_the_agent_serves(
    chaos_mesh: ChaosMesh,
) -> None:
    faults = chaos_mesh.faults
    # Its requests wait in the agent's MQTT session while it restarts (as above).
    tallies, what = fault_under_load(chaos_mesh, "outbox_corrupt", deadline_s=RESTART_DEADLINE_S)
    _check(tallies, what)
    moved = faults.quarantined_files()
    assert len(moved) == 1, f"after {what}: {sorted(faults.agent_cache.iterdir())}"
    assert (faults.agent_cache / "outbox.db").is_file()  # a fresh one
    beat = faults.agent_heartbeat(lambda b: bool(b.faults.quarantined))
    assert [Path(p).name for p in beat.faults.quarantined] == [moved[0].name], beat.faults
