"""The traffic scenario on a random (non-grid) SUMO network: three-, four- and five-arm junctions.

Skips without SUMO as ``test_sumo`` does (fails under ``MESH_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from functions.traffic.control import JunctionLayout, Observation, SignalController, SignalReport
from functions.traffic.sim.network import CONTROL_TYPES
from functions.traffic.sim.random_net import RandomNetwork, build_random, make_random_demand
from functions.traffic.sim.session import SumoSession
from tests.integration.test_sumo import require_sumo


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> RandomNetwork:
    require_sumo()
    return build_random(tmp_path_factory.mktemp("sumo-rand"))


def test_every_junction_of_three_or_more_arms_is_signalised_in_every_program(
    net: RandomNetwork,
) -> None:
    arms = net.arm_counts()
    assert 9 <= len(net.junctions) <= 12
    assert arms.get(3) and arms.get(4) and arms.get(5), arms
    for control in CONTROL_TYPES:
        root = ET.parse(net.net(control)).getroot()
        lights = {t.get("id") for t in root.iter("tlLogic")}
        assert lights == set(net.junctions), control
        types = {t.get("type") for t in root.iter("tlLogic")}
        assert types == {control}


def test_every_incoming_road_has_exactly_one_slot(net: RandomNetwork) -> None:
    root = ET.parse(net.net("static")).getroot()
    for jid, arms in net.junctions.items():
        incoming = {
            e.get("id", "")
            for e in root.iter("edge")
            if e.get("function") != "internal" and e.get("to") == jid
        }
        roads = [edge for a in arms for edge, _, _ in a.roads]
        assert sorted(roads) == sorted(incoming), jid
        assert [a.name for a in arms] == ["north", "east", "south", "west"]


def test_the_adaptive_controller_runs_a_random_net_on_its_real_phases(
    net: RandomNetwork, tmp_path: Path
) -> None:
    demand = make_random_demand(tmp_path, net, level="medium", seed=1, horizon_s=300.0)
    assert demand.vehicles > 0
    with SumoSession(net, demand.path, control="external", seed=1, end_s=900.0) as sim:
        controllers = {}
        for j in sim.junctions:
            phases = sim.phases(j)
            assert len(phases) == len(sim.green_states(j))
            present = {a.name for a in net.junctions[j] if not a.empty}
            # Every road's slot has a phase; no phase names an empty slot.
            assert present <= set().union(*phases), j
            assert set().union(*phases) <= present, j
            controllers[j] = SignalController(JunctionLayout(phases=phases), t=sim.time_s)
        for _ in range(900):  # bounded: end_s steps at most
            if sim.done:
                break
            for j, obs in sim.observe_all().items():
                decision = controllers[j].step(
                    Observation(
                        t=sim.time_s,
                        counts=obs.counts,
                        signal=SignalReport(obs.phase, obs.stage, obs.stage_elapsed_s, obs.target),
                    )
                )
                assert 0 <= decision.phase < len(sim.green_states(j))
                sim.request_phase(j, decision.phase)
            sim.step()
    kpis = sim.kpis
    assert kpis is not None
    assert kpis.arrivals == demand.vehicles
    assert kpis.teleports == 0
