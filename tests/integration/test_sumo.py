"""The traffic scenario's SUMO side on real SUMO: network, demand, sensor and actuator bridges.

Without SUMO (the ``sim`` extra: ``eclipse-sumo`` and ``libsumo``) these tests
skip with the reason, unless ``MESH_REQUIRE_SERVICES=1``, in which case they
fail. libsumo runs one simulation per process, so sessions here run one after
another.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.traffic.control import (
    ControllerConfig,
    JunctionLayout,
    Observation,
    SignalController,
    SignalReport,
)
from functions.traffic.occupancy import count_visible
from functions.traffic.signals import camera_frames
from functions.traffic.sim.network import (
    CONTROL_TYPES,
    GridNetwork,
    SimulationError,
    build_grid,
    find_sumo_binary,
    make_demand,
)
from functions.traffic.sim.session import SumoSession


def require_sumo() -> None:
    """Skip (or fail under MESH_REQUIRE_SERVICES=1) without SUMO's binaries and libsumo."""
    reason = None
    try:
        find_sumo_binary("sumo")
        find_sumo_binary("netgenerate")
    except SimulationError as exc:
        reason = str(exc)
    if reason is None and importlib.util.find_spec("libsumo") is None:
        reason = "libsumo is not installed: pip install 'fogmesh[sim]'"
    if reason is not None:
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridNetwork:
    require_sumo()
    return build_grid(tmp_path_factory.mktemp("sumo-net"), rows=2, cols=2)


@pytest.fixture(scope="module")
def routes(grid: GridNetwork, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demand(
        tmp_path_factory.mktemp("sumo-routes"), grid, level="medium", seed=1, horizon_s=300.0
    ).path


@pytest.fixture
def session(grid: GridNetwork, routes: Path) -> Iterator[SumoSession]:
    sim = SumoSession(grid, routes, control="external", seed=1, end_s=900.0)
    sim.start()
    try:
        yield sim
    finally:
        if sim.kpis is None:
            sim.close()


def test_every_junction_is_signalised_in_every_program(grid: GridNetwork) -> None:
    assert sorted(grid.junctions) == ["A0", "A1", "B0", "B1"]
    for control in CONTROL_TYPES:
        root = ET.parse(grid.net(control)).getroot()
        kinds = {j.get("id"): j.get("type") for j in root.iter("junction")}
        assert all(kinds[j] == "traffic_light" for j in grid.junctions)
        programs = {t.get("id"): t.get("type") for t in root.iter("tlLogic")}
        assert programs == dict.fromkeys(grid.junctions, control)
    for arms in grid.junctions.values():
        assert [a.name for a in arms] == ["north", "east", "south", "west"]
        # The camera's 240 m covers the whole lane, so it sees every queued vehicle.
        assert all(a.length_m < 240.0 and a.lanes == 2 for a in arms)


def test_demand_is_deterministic_per_seed(grid: GridNetwork, tmp_path: Path) -> None:
    one = make_demand(tmp_path / "a", grid, level="peak", seed=4, horizon_s=600.0)
    again = make_demand(tmp_path / "b", grid, level="peak", seed=4, horizon_s=600.0)
    other = make_demand(tmp_path / "c", grid, level="peak", seed=5, horizon_s=600.0)
    assert one.path.read_bytes() == again.path.read_bytes()
    assert one.path.read_bytes() != other.path.read_bytes()
    light = make_demand(tmp_path / "d", grid, level="light", seed=4, horizon_s=600.0)
    assert 0 < light.vehicles < one.vehicles
    with pytest.raises(ValueError, match="unknown demand level"):
        make_demand(tmp_path, grid, level="rush", seed=0)


@pytest.mark.parametrize("control", ["static", "actuated", "delay_based"])
def test_sumo_programs_run_to_completion(grid: GridNetwork, routes: Path, control: str) -> None:
    with SumoSession(grid, routes, control=control, seed=1, end_s=900.0) as sim:  # type: ignore[arg-type]
        observed = sim.observe("A0")
        assert observed.stage in ("green", "yellow")
        kpis = sim.run()
    assert kpis.arrivals > 0 and kpis.teleports == 0
    assert kpis.arrivals + kpis.unfinished == kpis.vehicles
    assert kpis.mean_time_loss_s >= kpis.mean_wait_s >= 0.0


def test_the_adaptive_controller_runs_to_completion_safely(session: SumoSession) -> None:
    config = ControllerConfig(latency_s=0.0)
    controllers = {
        j: SignalController(JunctionLayout(phases=session.phases(j)), config)
        for j in session.junctions
    }
    while not session.done:
        for j, obs in session.observe_all().items():
            counts = [float(c) for c in obs.counts]
            segments = [
                [float(count_visible(a.positions_m, m)) for m in config.segments_m]
                for a in obs.approaches
            ]
            decision = controllers[j].step(
                Observation(
                    t=obs.time_s,
                    counts=counts,
                    segments=segments,
                    queued=[float(a.halting) for a in obs.approaches],
                    signal=SignalReport(obs.phase, obs.stage, obs.stage_elapsed_s, obs.target),
                )
            )
            session.request_phase(j, decision.phase)
        session.step()
    switches = {j: session.actuator(j).switches for j in session.junctions}
    histories = {j: session.signal_history(j) for j in session.junctions}
    kpis = session.close()
    assert kpis.arrivals > 0 and kpis.teleports == 0 and kpis.unfinished == 0
    assert sum(switches.values()) > 0
    for j, history in histories.items():
        _assert_no_switch_without_yellow(history, yellow_s=session.yellow_s(j), min_green_s=5.0)


def _assert_no_switch_without_yellow(
    history: list[tuple[float, str]], *, yellow_s: float, min_green_s: float
) -> None:
    for (t0, before), (t1, after) in itertools.pairwise(history):
        for a, b in zip(before, after, strict=True):
            assert not (a in "Gg" and b == "r"), f"{before} -> {after} at {t1}: no yellow"
        if "y" in before:
            assert t1 - t0 >= yellow_s, f"yellow of {t1 - t0} s at {t0}"
        elif t0 > 0:
            assert t1 - t0 >= min_green_s, f"green of {t1 - t0} s at {t0}"


def test_the_actuator_never_switches_without_yellow(session: SumoSession) -> None:
    # A hostile plan: ask for the other phase every second.
    while session.time_s < 240.0:
        for j in session.junctions:
            act = session.actuator(j)
            session.request_phase(j, (act.phase + 1) % len(act.greens))
        session.step()
    for j in session.junctions:
        history = session.signal_history(j)
        assert len(history) > 20
        _assert_no_switch_without_yellow(history, yellow_s=session.yellow_s(j), min_green_s=5.0)
        # What SUMO shows is what the actuator set.
        assert session._sumo.trafficlight.getRedYellowGreenState(j) == history[-1][1]


def test_the_sensor_bridge_counts_what_sumo_counts(session: SumoSession) -> None:
    sumo = session._sumo
    checked = 0
    while session.time_s < 200.0:
        session.step()
        if int(session.time_s) % 20:
            continue
        for j, obs in session.observe_all().items():
            frames, exact = camera_frames(obs.approaches)
            for arm, approach, count in zip(
                session.grid.junctions[j], obs.approaches, exact[0], strict=True
            ):
                lanes = [f"{arm.incoming}_{i}" for i in range(arm.lanes)]
                in_sumo = sum(sumo.lane.getLastStepVehicleNumber(lane) for lane in lanes)
                halting = sum(sumo.lane.getLastStepHaltingNumber(lane) for lane in lanes)
                assert approach.count == in_sumo == int(count)
                assert approach.halting == halting
                assert (approach.positions_m >= 0).all()
                assert (approach.positions_m <= arm.length_m).all()
                checked += in_sumo
            assert frames.shape == (1, 4, 2, 64)
    assert checked > 0


def test_a_second_session_in_the_process_is_refused(session: SumoSession, routes: Path) -> None:
    with pytest.raises(SimulationError, match="singleton"):
        SumoSession(session.grid, routes).start()
