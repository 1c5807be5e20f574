"""Cluster faults under steady load: a control plane killed mid-migration, a fog raylet killed.

``mid_migration`` pins the fog module to the other fog node and kills the
control plane at the first unfinished phase it sees; the restarted one (with a
new embedded Ray cluster, as a host's restart gives) must resolve the migration
(rolled back: its target node is gone with the old cluster), serve the module,
and leave no replica process it does not list. Requests sent while the gateway
was down are counted apart (``unavailable``); none other may fail.

``raylet`` kills the raylet of the fog node serving the fog module (a fog
machine lost): its standby on the other fog node takes over, and the embedded
cluster does not re-add a node, so the module must end up served on the
remaining fog node only, the killed node's workers gone. Runs after
``mid_migration``, whose restart gave the cluster its two fog nodes back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.chaos import ChaosMesh
from tests.support.chaos_faults import fault_under_load

#: How long the killed raylet's workers may take to notice and exit.
ORPHAN_LIMIT_S = 60.0


def _check(tallies: dict[str, Any], what: str) -> None:
    for module, tally in tallies.items():
        assert tally["sent"] > 0, module
        assert tally["failed"] == 0, f"after {what}, {module}: {tally}"
        assert tally["answered"] + tally["unavailable"] == tally["sent"], tally


@pytest.mark.timeout(600)  # the mesh's start and a restart of it: two `mesh up`s
def test_a_control_plane_killed_mid_migration_resolves_it_and_orphans_nothing(
    chaos_mesh: ChaosMesh,
) -> None:
    faults = chaos_mesh.faults
    tallies, what = fault_under_load(chaos_mesh, "mid_migration")
    _check(tallies, what)
    cut, ended = faults.migration, faults.migration_ended()
    assert ended["status"] == "rolled_back", (cut, ended)
    faults.replicas_settled()
    serving = [r for r in faults.replicas(chaos_mesh.FOG) if r["state"] == "serving"]
    assert serving, faults.replicas(chaos_mesh.FOG)


def test_a_killed_fog_raylet_leaves_the_module_served_on_the_other_fog_node(
    chaos_mesh: ChaosMesh,
) -> None:
    faults = chaos_mesh.faults
    tallies, what = fault_under_load(chaos_mesh, "raylet")
    _check(tallies, what)
    assert tallies[chaos_mesh.FOG]["unavailable"] == 0, tallies
    faults.replicas_settled()
    serving = [r for r in faults.replicas(chaos_mesh.FOG) if r["state"] == "serving"]
    assert serving and {r["node"] for r in serving} <= set(faults.fog_raylets()), serving
    deadline = time.monotonic() + ORPHAN_LIMIT_S
    while alive := faults.live_orphans():
        assert time.monotonic() < deadline, f"{what}: its workers {alive} live on"
        time.sleep(0.5)
