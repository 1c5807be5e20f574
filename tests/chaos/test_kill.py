"""``kill -9`` of one part under steady load: every request is answered within its deadline.

Before issue 15 a killed replica's requests failed until the supervisor noticed,
and a restarted control plane served nothing it had before. The only requests
allowed to go unanswered are those sent while the gateway itself was down
(counted apart as ``unavailable``: no replica could answer them).
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.support.chaos import ChaosMesh, Load

#: Load before and after the fault, seconds.
CALM_S = 2.0


def _fault(mesh: ChaosMesh, kind: str) -> tuple[dict[str, Any], str]:
    load = Load(mesh.gateway, mesh.token, [mesh.FOG, mesh.EDGE], rate_hz=10.0).start()
    try:
        time.sleep(CALM_S)
        what = mesh.inject(kind, load, random.Random(kind))
        mesh.wait_serving(load)
        time.sleep(CALM_S)
    finally:
        load.stop()
    return load.snapshot(), what


def _check(tallies: dict[str, Any], what: str) -> None:
    for module, tally in tallies.items():
        assert tally["sent"] > 0, module
        assert tally["failed"] == 0, f"after killing {what}, {module}: {tally}"
        assert tally["answered"] + tally["unavailable"] == tally["sent"], tally


def test_a_killed_replica_process_loses_no_request(chaos_mesh: ChaosMesh) -> None:
    tallies, what = _fault(chaos_mesh, "replica")
    _check(tallies, what)
    assert tallies[chaos_mesh.FOG]["unavailable"] == 0


def test_a_killed_agent_loses_no_request(chaos_mesh: ChaosMesh) -> None:
    tallies, what = _fault(chaos_mesh, "agent")
    _check(tallies, what)
    assert tallies[chaos_mesh.EDGE]["unavailable"] == 0


def test_a_killed_control_plane_comes_back_serving_with_its_old_token(
    chaos_mesh: ChaosMesh,
) -> None:
    token = chaos_mesh.token  # minted before the crash; the load keeps using it
    tallies, what = _fault(chaos_mesh, "control_plane")
    assert chaos_mesh.token == token
    _check(tallies, what)
    for tally in tallies.values():
        assert tally["answered"] > 0  # served again after the restart, with the old token
