"""``kill -9`` of one part under steady load: every request is answered, no event is lost.

Before issue 15 a killed replica's requests failed until the supervisor noticed,
and a restarted control plane served nothing it had before. The only requests
allowed to go unanswered are those sent while the gateway itself was down
(counted apart as ``unavailable``: no replica could answer them).

The agent's pipeline runs throughout (:mod:`tests.support.chaos_events`): every
frame a broker took must come back as an event (duplicates are allowed and
counted); frames no broker took (the embedded broker down with the control
plane) are counted apart as ``unavailable``. The embedded broker keeps the
agent's persistent session across its restart (``<data>/mqtt/sessions.db``), so
frames it takes before the agent is back on it wait for the agent: none may be
counted ``broker_outage``. Before that store, one control-plane kill (broker
down 49 s, the agent back 12 s after it) lost 59 frames that way.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.support.chaos import ChaosMesh, Load, run_rounds
from tests.support.chaos_events import EventProbe

#: Load before and after the fault, seconds.
CALM_S = 2.0


def _fault(mesh: ChaosMesh, kind: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The requests' tallies, what was killed, and the events' figures."""
    probe = EventProbe.for_mesh(mesh).start()
    try:
        load = Load(mesh.gateway, mesh.token, [mesh.FOG, mesh.EDGE], rate_hz=10.0).start()
        try:
            time.sleep(CALM_S)
            probe.mark(kind)
            if mesh.kills_broker(kind):
                probe.outage_began()
            what = mesh.inject(kind, load, random.Random(kind))
            mesh.wait_serving(load)
            probe.outage_ended()
            time.sleep(CALM_S)
        finally:
            load.stop()
    finally:
        events = probe.stop()
    print(f"{kind}: requests {load.snapshot()}; events {events}")  # shown with -s or on failure
    return load.snapshot(), what, events


def _check(tallies: dict[str, Any], what: str) -> None:
    for module, tally in tallies.items():
        assert tally["sent"] > 0, module
        assert tally["failed"] == 0, f"after killing {what}, {module}: {tally}"
        assert tally["answered"] + tally["unavailable"] == tally["sent"], tally


def _check_events(events: dict[str, Any], what: str) -> None:
    assert events["delivered"] > 0, events
    assert events["lost"] == 0, f"after killing {what}, events lost: {events}"
    counted = events["delivered"] + events["broker_outage"] + events["unavailable"]
    assert counted == events["frames"], events


def test_a_killed_replica_process_loses_no_request(chaos_mesh: ChaosMesh) -> None:
    tallies, what, events = _fault(chaos_mesh, "replica")
    _check(tallies, what)
    assert tallies[chaos_mesh.FOG]["unavailable"] == 0
    _check_events(events, what)
    assert events["unavailable"] == 0, events


def test_a_killed_agent_loses_no_request_and_no_event(chaos_mesh: ChaosMesh) -> None:
    tallies, what, events = _fault(chaos_mesh, "agent")
    _check(tallies, what)
    assert tallies[chaos_mesh.EDGE]["unavailable"] == 0
    # The broker kept the agent's session: every frame was taken, and each event came.
    _check_events(events, what)
    assert events["unavailable"] == 0, events


def test_a_killed_control_plane_comes_back_serving_with_its_old_token(
    chaos_mesh: ChaosMesh,
) -> None:
    token = chaos_mesh.token  # minted before the crash; the load keeps using it
    tallies, what, events = _fault(chaos_mesh, "control_plane")
    assert chaos_mesh.token == token
    _check(tallies, what)
    _check_events(events, what)
    assert events["broker_outage"] == 0, events  # the restarted broker kept the session
    for tally in tallies.values():
        assert tally["answered"] > 0  # served again after the restart, with the old token


def test_a_soak_round_reports_the_pipelines_events(chaos_mesh: ChaosMesh) -> None:
    figures = run_rounds(chaos_mesh, 1, kinds=("agent",), calm_s=(1.0, 2.0))
    events = figures["events"]
    assert events["measured"] is True and events["marks"][0][1] == "agent", events
    _check_events(events, "the agent")
    assert events["sent"] == events["delivered"] > 0, events
