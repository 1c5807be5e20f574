"""The adaptive signal controller and the actuator's safety rules, without SUMO."""

from __future__ import annotations

import collections
import itertools
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from functions.traffic.control import (
    ControllerConfig,
    ControllerState,
    Decision,
    JunctionLayout,
    Observation,
    SignalController,
    SignalReport,
    decide,
    initial_state,
)
from functions.traffic.exits import exit_room
from functions.traffic.occupancy import APPROACHES, ApproachState, count_visible
from functions.traffic.signals import camera_frames, plans_for_window, still_frame
from functions.traffic.sim.actuator import SignalActuator, transition_state

NS, EW = 0, 1
# Counts are (north, east, south, west); segments per approach are cumulative
# counts within 15, 30, 60 and 120 m of the stop line.
EMPTY = (0.0, 0.0, 0.0, 0.0)


def seg(*rows: tuple[float, float, float, float]) -> list[list[float]]:
    return [list(r) for r in rows]


def near(n: float) -> tuple[float, float, float, float]:
    """``n`` vehicles within 15 m of the stop line."""
    return (n, n, n, n)


def controller(**options: float) -> SignalController:
    return SignalController(JunctionLayout.two_phase(), ControllerConfig(**options))  # type: ignore[arg-type]


def test_no_switch_before_the_minimum_green() -> None:
    ctl = controller(min_green_s=7.0)
    for t in range(7):
        decision = ctl.step(Observation(t=float(t), counts=(0, 5, 0, 5)))
        assert decision.phase == NS and decision.reason == "min-green"
    decision = ctl.step(Observation(t=7.0, counts=(0, 5, 0, 5)))
    assert decision.phase == EW and decision.switch and decision.reason == "empty-green"


def test_the_default_minimum_green_is_four_seconds() -> None:
    # The queue clearance (not a fixed floor) lengthens greens, so the floor is 4 s.
    ctl = controller()
    assert ctl.step(Observation(t=3.0, counts=(0, 5, 0, 5))).reason == "min-green"
    decision = ctl.step(Observation(t=4.0, counts=(0, 5, 0, 5)))
    assert decision.switch and decision.reason == "empty-green"


def test_a_switch_passes_through_yellow_and_never_reverts() -> None:
    ctl = controller(min_green_s=5.0, yellow_s=3.0)
    assert ctl.step(Observation(t=5.0, counts=(0, 4, 0, 0))).switch
    # Demand flips back during the yellow: the controller keeps the switch it began.
    for t in (6.0, 7.0):
        decision = ctl.step(Observation(t=t, counts=(9, 0, 9, 0)))
        assert decision.phase == EW and decision.reason == "switching"
        assert ctl.state.stage == "yellow"
    decision = ctl.step(Observation(t=8.0, counts=(9, 0, 9, 0)))
    assert ctl.state.stage == "green" and ctl.state.phase == EW
    assert decision.reason == "min-green"  # a fresh green, however strong the other side


def test_a_pending_switch_survives_the_plan_latency() -> None:
    # The junction still reports the old green for a second after the plan was sent.
    ctl = controller(min_green_s=5.0)
    assert ctl.step(
        Observation(t=10.0, counts=(0, 3, 0, 3), signal=SignalReport(NS, "green", 10.0))
    ).switch
    late = ctl.step(
        Observation(t=11.0, counts=(8, 0, 8, 0), signal=SignalReport(NS, "green", 11.0))
    )
    assert late.phase == EW and late.reason == "switching"
    shown = ctl.step(
        Observation(t=12.0, counts=(8, 0, 8, 0), signal=SignalReport(NS, "yellow", 0.0, EW))
    )
    assert shown.phase == EW


def test_missing_counts_hold_the_last_ones() -> None:
    ctl = controller(min_green_s=5.0)
    ctl.step(Observation(t=0.0, counts=(2, 6, 1, 4)))
    ctl.step(Observation(t=1.0, counts=(None, None, 3, None)))
    assert ctl.state.counts == (2.0, 6.0, 3.0, 4.0)
    assert ctl.state.counts_at_s == 0.0  # the last complete observation
    ctl.step(Observation(t=2.0, counts=(None, float("nan"), None, None)))
    assert ctl.state.counts == (2.0, 6.0, 3.0, 4.0)


def test_a_dropped_frame_does_not_empty_the_road() -> None:
    # East-west has a queue; its frames drop: a zero would hand the green away.
    ctl = controller(min_green_s=5.0)
    ctl.step(Observation(t=0.0, counts=(1, 6, 0, 6)))
    decisions = [ctl.step(Observation(t=float(t), counts=(1, None, 0, None))) for t in range(1, 12)]
    assert any(d.switch and d.phase == EW for d in decisions)
    assert ctl.state.phase == EW


def test_empty_phases_are_skipped() -> None:
    layout = JunctionLayout(
        phases=tuple(frozenset({a}) for a in ("north", "east", "south", "west"))
    )
    ctl = SignalController(layout, ControllerConfig(min_green_s=5.0))
    decision = ctl.step(Observation(t=6.0, counts=(0, 0, 0, 3)))
    assert decision.switch and decision.phase == 3  # straight to the west, not round the ring


def test_no_demand_elsewhere_keeps_the_green() -> None:
    ctl = controller(min_green_s=5.0)
    for t in range(5, 100, 5):
        decision = ctl.step(Observation(t=float(t), counts=(0, 0, 0, 0)))
        assert decision.phase == NS and not decision.switch
    assert decision.reason == "no-demand-elsewhere"


def test_counter_noise_below_half_a_vehicle_is_no_vehicle() -> None:
    ctl = controller(min_green_s=5.0)
    decision = ctl.step(Observation(t=6.0, counts=(0.0, 0.4, 0.0, 0.45)))
    assert not decision.switch and decision.reason == "no-demand-elsewhere"


def test_gap_out_when_nobody_is_about_to_cross() -> None:
    ctl = controller(min_green_s=5.0)
    # Two vehicles far up the green approaches, five standing on the red side.
    decision = ctl.step(
        Observation(
            t=8.0,
            counts=(1, 5, 1, 0),
            segments=seg(EMPTY, near(5), EMPTY, EMPTY),
            queued=(0, 5, 0, 0),
        )
    )
    assert decision.switch and decision.reason == "gap-out"


def test_the_green_extends_for_vehicles_about_to_cross() -> None:
    ctl = controller(min_green_s=5.0)
    # A platoon of six within 30-60 m on green; one vehicle waits on the red side.
    decision = ctl.step(
        Observation(
            t=8.0,
            counts=(6, 1, 0, 0),
            segments=seg((0, 0, 6, 6), near(1), EMPTY, EMPTY),
            queued=(0, 1, 0, 0),
        )
    )
    assert not decision.switch and decision.reason == "extend"


def test_a_standing_queue_on_the_green_is_cleared_before_the_gap_out() -> None:
    # Ten vehicles stand within 15 m on north-south's green (they look as if they
    # crossed at once), five stand on the red side: the gap-out alone cuts the green.
    obs = Observation(
        t=8.0,
        counts=(10, 5, 0, 0),
        segments=seg((10, 10, 10, 10), near(5), EMPTY, EMPTY),
        queued=(10, 5, 0, 0),
    )
    assert controller(clear_queue_veh=1e9).step(obs).reason == "gap-out"
    decision = controller().step(obs)
    assert not decision.switch and decision.reason == "clearing"
    # A small queue (a left turner waiting for a gap) does not hold the green.
    small = replace(obs, counts=(3, 5, 0, 0), segments=seg((3, 3, 3, 3), near(5), EMPTY, EMPTY))
    assert controller().step(replace(small, queued=(3, 5, 0, 0))).reason == "gap-out"
    # Nor does a queue whose exit is held: it cannot discharge.
    held = replace(obs, downstream=(48, 0, 0, 0))
    assert controller().step(held).reason != "clearing"


def test_pressure_cuts_a_long_green_at_saturation() -> None:
    ctl = controller(min_green_s=5.0, pressure_margin=10.0)
    full = (4, 8, 16, 30)
    decision = ctl.step(
        Observation(t=20.0, counts=(8, 30, 8, 30), segments=seg(full, full, full, full))
    )
    assert decision.switch and decision.reason == "pressure"


def test_max_green_bounds_the_wait() -> None:
    ctl = controller(min_green_s=5.0, max_green_s=40.0, pressure_margin=100.0)
    stream = (4, 8, 16, 30)
    for t in range(5, 40):
        assert not ctl.step(
            Observation(
                t=float(t), counts=(30, 1, 30, 0), segments=seg(stream, near(1), stream, EMPTY)
            )
        ).switch
    decision = ctl.step(
        Observation(t=40.0, counts=(30, 1, 30, 0), segments=seg(stream, near(1), stream, EMPTY))
    )
    assert decision.switch and decision.reason == "max-green"


def test_a_green_whose_exits_are_full_is_given_up() -> None:
    ctl = controller(min_green_s=5.0)
    stream = (4, 8, 16, 30)
    decision = ctl.step(
        Observation(
            t=10.0,
            counts=(30, 2, 30, 0),
            segments=seg(stream, near(2), stream, EMPTY),
            downstream=(47, 0, 47, 0),
        )
    )
    assert decision.switch and decision.reason == "spillback"


# -- oversaturation: full and filling exits, gridlock, throughput -------------------------


def _platoon_on_green(t: float, exit_count: float) -> Observation:
    """Six vehicles 30-60 m out on north (about to cross), one waiting east; north's exit as given."""
    return Observation(
        t=t,
        counts=(6, 1, 0, 0),
        segments=seg((0, 0, 6, 6), near(1), EMPTY, EMPTY),
        queued=(0, 1, 0, 0),
        downstream=(exit_count, 0, 0, 0),
    )


def _first_switch(ctl: SignalController, observations: list[Observation]) -> Decision | None:
    return next((d for d in map(ctl.step, observations) if d.switch), None)


def test_no_green_is_extended_into_a_filling_exit() -> None:
    # The same platoon: a steady exit at 34 of 48 lets the green run on; an exit rising
    # 3 vehicles a second towards it (full within 10 s) does not.
    steady = controller(min_green_s=5.0, downstream_weight=0.0)
    assert _first_switch(steady, [_platoon_on_green(float(t), 34.0) for t in range(12)]) is None
    assert steady.step(_platoon_on_green(12.0, 34.0)).reason == "extend"
    filling = controller(min_green_s=5.0, downstream_weight=0.0)
    rising = [_platoon_on_green(float(t), min(34.0, 10.0 + 3.0 * t)) for t in range(12)]
    decision = _first_switch(filling, rising)
    assert decision is not None and decision.reason == "spillback"
    assert filling.state.exit_rate[0] > 1.0


def test_an_exit_s_trend_is_smoothed_over_exit_trend_s() -> None:
    ctl = controller(exit_trend_s=10.0)
    ctl.step(Observation(t=0.0, counts=EMPTY, downstream=(0, 0, 0, 0)))
    ctl.step(Observation(t=1.0, counts=EMPTY, downstream=(11, 0, 0, 0)))
    # One second's rise of 11 vehicles, weighted 1 / (1 + 10): 1 vehicle a second.
    assert ctl.state.exit_rate[0] == pytest.approx(1.0)
    ctl.step(Observation(t=2.0, counts=EMPTY))  # no exit counts: the trend is held
    assert ctl.state.exit_rate[0] == pytest.approx(1.0)


def test_a_blocked_junction_yields_to_the_phase_that_can_move() -> None:
    # North-south has queues, but one exit is full and the other fills fast (to 38, short
    # of full):
    # the green yields to east-west, whose exits are free.
    ctl = controller(min_green_s=5.0, downstream_weight=0.0)
    stream = (4, 8, 16, 20)
    observations = [
        Observation(
            t=float(t),
            counts=(20, 3, 20, 0),
            segments=seg(stream, near(3), stream, EMPTY),
            downstream=(47, 0, min(38.0, 10 + 3.0 * t), 0),  # never full by count
        )
        for t in range(20)
    ]
    decision = _first_switch(ctl, observations)
    assert decision is not None and decision.reason == "spillback" and decision.phase == EW
    # With the south exit steady (room left), north-south keeps its green.
    steady = controller(min_green_s=5.0, downstream_weight=0.0)
    assert (
        _first_switch(steady, [replace(o, downstream=(47, 0, 10, 0)) for o in observations]) is None
    )


def test_a_phase_whose_exits_are_held_gets_no_green() -> None:
    # East-west waits, but both its exits are full: the north-south green stays.
    ctl = controller(min_green_s=5.0)
    decision = ctl.step(
        Observation(t=10.0, counts=(0, 9, 0, 9), downstream=(0, 45, 0, 45)),
    )
    assert not decision.switch and decision.reason == "no-demand-elsewhere"


def test_pressure_counts_only_vehicles_that_fit_in_their_exit() -> None:
    # Both phases equally queued; north-south's exits have room for 2 each, east-west's are free:
    # north-south's pressure is what it can discharge, so the pressure rule serves east-west.
    ctl = controller(min_green_s=5.0, downstream_weight=0.0)
    full = (4, 8, 16, 30)
    obs = Observation(
        t=20.0,
        counts=(30, 30, 30, 30),
        segments=seg(full, full, full, full),
        downstream=(38.8, 0, 38.8, 0),
    )
    decision = ctl.step(obs)
    assert decision.pressures[NS] == pytest.approx(4.0) and decision.pressures[EW] == 60.0
    assert decision.switch and decision.reason == "pressure" and decision.phase == EW
    # With free exits on both the two tie and the green holds.
    tie = controller(min_green_s=5.0, downstream_weight=0.0)
    assert not tie.step(replace(obs, downstream=EMPTY)).switch


def test_when_queues_cannot_clear_a_green_runs_longer() -> None:
    # Both phases hold 20 standing vehicles: the pressure (margin 0) would cut the green
    # at 10 s; saturated, it lasts saturated_green_s (fewer yellows, more carried).
    full = (4, 8, 16, 20)
    obs = Observation(
        t=10.0,
        counts=(20, 24, 20, 24),
        segments=seg(full, full, full, full),
        queued=(20, 24, 20, 24),
    )
    unsaturated = controller(pressure_margin=0.0, pressure_ratio=0.0, saturation_veh=1e9)
    assert unsaturated.step(obs).reason == "pressure"
    assert controller(pressure_margin=0.0, pressure_ratio=0.0).step(obs).reason == "saturated"
    saturated = controller(pressure_margin=0.0, pressure_ratio=0.0, saturation_veh=16.0)
    assert saturated.step(replace(obs, queued=(10, 24, 10, 24))).reason == "saturated"
    # Below the threshold on either side, the rules of an unsaturated junction apply.
    light = controller(pressure_margin=0.0, pressure_ratio=0.0, saturation_veh=16.0)
    assert light.step(replace(obs, queued=(5, 24, 5, 24))).reason == "pressure"
    late = controller(pressure_margin=0.0, pressure_ratio=0.0, saturated_green_s=8.0)
    assert late.step(obs).reason == "pressure"


def test_exit_room_counts_the_trend_ahead() -> None:
    room = exit_room((0, 20, 20, 39), (0, 0, 1, -2), limit_veh=34.0, lookahead_s=10.0)
    # 34 is full (0.85 of 40); a rising exit is judged 10 s ahead, a falling one as it is.
    assert room == pytest.approx((34.0, 14.0, 4.0, 0.0))


def test_decisions_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    observations = [
        Observation(t=float(t), counts=tuple(float(x) for x in rng.integers(0, 12, 4)))
        for t in range(300)
    ]
    runs = []
    for _ in range(2):
        ctl = controller()
        runs.append([(d.phase, d.reason) for d in map(ctl.step, observations)])
    assert runs[0] == runs[1]
    assert len({p for p, _ in runs[0]}) == 2


def test_state_round_trips_through_a_message() -> None:
    layout = JunctionLayout.two_phase()
    config = ControllerConfig()
    state, _ = decide(
        layout, config, initial_state(layout, config), Observation(t=1.0, counts=(1, 2, 3, 4))
    )
    assert ControllerState.from_dict(state.as_dict()) == state


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="max_green_s"):
        ControllerConfig(min_green_s=10.0, max_green_s=5.0)
    with pytest.raises(ValueError, match="segments_m"):
        ControllerConfig(segments_m=(30.0, 15.0))
    with pytest.raises(ValueError, match="exit_trend_s"):
        ControllerConfig(exit_trend_s=0.0)
    with pytest.raises(ValueError, match="saturated_green_s"):
        ControllerConfig(saturated_green_s=-1.0)
    with pytest.raises(ValueError, match="clear_queue_veh"):
        ControllerConfig(clear_queue_veh=-1.0)
    with pytest.raises(ValueError, match="unknown approaches"):
        JunctionLayout(phases=(frozenset({"up"}),))


# -- the stream function ------------------------------------------------------------


def message(
    site: str, t: float, counts: dict[str, float | None], **extra: object
) -> dict[str, object]:
    return {"site": site, "t": t, "counts": counts, **extra}


def test_the_stream_function_plans_each_junction_and_keeps_state() -> None:
    states: dict[str, ControllerState] = {}
    window = [
        message(
            "A0", 6.0, {"north": 0, "east": 3, "south": 0, "west": 2}, neighbours={"east": "B0"}
        ),
        message(
            "B0", 6.0, {"north": 4, "east": 0, "south": 4, "west": 7}, neighbours={"west": "A0"}
        ),
    ]
    plans = plans_for_window(window, states)
    assert [p["site"] for p in plans] == ["A0", "B0"]
    a0 = plans[0]
    assert a0["phase"] == EW and a0["switch"] and a0["schema_version"] == 1
    assert set(states) == {"A0", "B0"}
    # A0's west approach feeds B0's west arm: its count is A0's east-bound downstream.
    assert states["A0"].downstream[3] == 7.0
    assert states["A0"].downstream[1] == 0.0  # a border exit
    assert states["B0"].downstream[1] == 3.0  # B0's east arm drains into A0's east arm


def test_the_stream_function_holds_counts_across_messages_and_windows() -> None:
    states: dict[str, ControllerState] = {}
    plans_for_window([message("J", 0.0, {"north": 5, "east": 1, "south": 2, "west": 0})], states)
    window = [
        message("J", 1.0, {"north": None, "east": 2, "south": None, "west": 0}),
        message("J", 2.0, {"north": None, "east": None, "south": None, "west": 1}),
    ]
    plans_for_window(window, states)
    assert states["J"].counts == (5.0, 2.0, 2.0, 1.0)
    queued = {"north": 3, "east": 1, "south": 0, "west": None}
    plans_for_window(
        [message("J", 3.0, {"north": 5, "east": 2, "south": 2, "west": 1}, queued=queued)], states
    )
    assert states["J"].queued == (3.0, 1.0, 0.0, 0.0)


def test_signal_plan_is_a_registered_fog_stream() -> None:
    from functions.traffic.signals import app

    spec = app.functions["signal_plan"].spec
    assert spec.kind.value == "stream" and spec.tier == "fog"


# -- the camera ------------------------------------------------------------------------


def test_camera_segments_count_what_lies_within_reach() -> None:
    state = ApproachState(
        np.array([1.0, 20.0, 50.0, 100.0, 170.0]), np.array([0, 1, 0, 1, 0]), np.full(5, 5.0)
    )
    frames, exact = camera_frames([state] * 4, segments_m=(15.0, 30.0, 60.0, 120.0))
    assert frames.shape == (5, 4, 2, 64)
    assert exact[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]
    assert exact[0, 0] == count_visible(state.positions_m, 240.0)
    assert frames[1, :, :, 4:].sum() == 0.0  # 15 m is 4 cells of 3.75 m


def test_a_still_frame_keeps_standing_vehicles_only() -> None:
    standing = ApproachState(np.array([1.0]), np.array([0]), np.array([5.0]))
    before, _ = camera_frames(
        [standing, ApproachState(np.array([60.0]), np.array([0]), np.array([5.0]))] * 2
    )
    after, _ = camera_frames(
        [standing, ApproachState(np.array([46.0]), np.array([0]), np.array([5.0]))] * 2
    )
    still = still_frame(after[0], before[0])
    assert still[0].sum() == pytest.approx(after[0][0].sum())
    assert still[1].sum() == 0.0
    first = after[0]
    assert still_frame(first, None) is first


# -- the actuator (functions.traffic.sim.actuator, pure) ---------------------------------------------


def test_transition_state_turns_lost_greens_yellow() -> None:
    assert transition_state("GGgrrr", "rrrGGg") == "yyyrrr"
    # Greens kept stay green; new greens wait for the yellow to end.
    assert transition_state("GGrr", "GrGG") == "Gyrr"
    with pytest.raises(ValueError):
        transition_state("Gr", "G")


def _assert_safe(
    history: list[tuple[float, str]], yellow_s: float, min_green_s: float, greens: tuple[str, ...]
) -> None:
    for (t0, s0), (t1, s1) in itertools.pairwise(history):
        for a, b in zip(s0, s1, strict=True):
            assert not (a in "Gg" and b == "r"), f"{s0} -> {s1} at {t1} skips yellow"
        if "y" in s0:
            assert t1 - t0 >= yellow_s
        if s0 in greens:
            assert t1 - t0 >= min_green_s


def test_the_actuator_enforces_yellow_and_minimum_green_whatever_it_is_asked() -> None:
    greens = ("GGgrrrGGgrrr", "rrrGGgrrrGGg")
    act = SignalActuator(greens, yellow_s=3.0, min_green_s=5.0)
    rng = np.random.default_rng(0)
    for t in range(400):
        act.request(int(rng.integers(0, 2)), float(t))
        act.tick(float(t))
    assert act.switches > 10
    _assert_safe(act.history, 3.0, 5.0, greens)


def test_the_actuator_holds_the_last_plan_then_falls_back() -> None:
    greens = ("GGrr", "rrGG")
    act = SignalActuator(
        greens, yellow_s=3.0, min_green_s=5.0, fallback_after_s=30.0, fallback_green_s=20.0
    )
    act.request(1, 0.0)
    states = [act.tick(float(t)) for t in range(200)]
    assert states[10] == "rrGG"
    assert act.switches >= 3  # no plans after t=0: it rotated on its own
    _assert_safe(act.history, 3.0, 5.0, greens)
    with pytest.raises(ValueError):
        act.request(2, 1.0)


def test_importing_the_mesh_never_imports_libsumo() -> None:
    code = (
        "import sys, mesh, functions.traffic.sim.session, functions.traffic.sim.network, functions.traffic.signals;"
        "print('libsumo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- forecasts ------------------------------------------------------------------------


def _busy_observations(seed: int = 11, steps: int = 600) -> list[Observation]:
    """A junction under random demand, with segments, queues and exits."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        counts = tuple(float(x) for x in rng.integers(0, 14, 4))
        segments = [sorted(float(min(c, x)) for x in rng.integers(0, 8, 4)) for c in counts]
        queued = tuple(float(min(c, q)) for c, q in zip(counts, rng.integers(0, 6, 4), strict=True))
        downstream = tuple(float(x) for x in rng.integers(0, 30, 4))
        out.append(
            Observation(
                t=float(t), counts=counts, segments=segments, queued=queued, downstream=downstream
            )
        )
    return out


def _decisions(observations: list[Observation], **options: float) -> list[tuple[int, str]]:
    ctl = controller(**options)
    return [(d.phase, d.reason) for d in map(ctl.step, observations)]


def test_without_a_forecast_decisions_are_as_recorded() -> None:
    observations = _busy_observations()
    plain = _decisions(observations)
    # Recorded without forecasts (same observations), with the exit rules of issue 20,
    # the queue clearance and the 4 s minimum green.
    reasons = collections.Counter(r for _, r in plain)
    assert reasons == {
        "min-green": 252,
        "extend": 155,
        "clearing": 5,
        "switching": 124,
        "pressure": 42,
        "gap-out": 16,
        "no-demand-elsewhere": 2,
        "spillback": 3,
        "empty-green": 1,
    }
    switching = ("pressure", "gap-out", "empty-green", "spillback")
    switches = [t for t, (_, r) in enumerate(plain) if r in switching]
    assert switches[:12] == [7, 18, 28, 39, 46, 67, 78, 89, 100, 110, 117, 125]
    assert len(switches) == 62 and switches[-1] == 593
    # Without the queue clearance and with the old 5 s minimum green: as recorded before.
    before = _decisions(observations, min_green_s=5.0, clear_queue_veh=1e9)
    assert collections.Counter(r for _, r in before) == {
        "min-green": 274,
        "extend": 162,
        "switching": 108,
        "pressure": 41,
        "gap-out": 11,
        "no-demand-elsewhere": 2,
        "spillback": 1,
        "empty-green": 1,
    }
    assert [t for t, (_, r) in enumerate(before) if r in switching][:12] == [
        7,
        18,
        28,
        39,
        50,
        67,
        78,
        89,
        100,
        110,
        118,
        133,
    ]
    # A forecast at or below the counts, a forecast of nothing, or a zero weight: the same.
    below = [replace(o, forecast=[c * 0.5 for c in o.counts]) for o in observations]  # type: ignore[operator]
    unknown = [replace(o, forecast=[None] * 4) for o in observations]
    high = [replace(o, forecast=[50.0] * 4) for o in observations]
    assert _decisions(below) == plain
    assert _decisions(unknown) == plain
    assert _decisions(high, forecast_weight=0.0) == plain
    assert _decisions(high) != plain  # the forecast does reach the rule


def _tie_segments(counts: tuple[float, ...]) -> list[list[float]]:
    """North-south's vehicles 30-60 m out (about to cross: the gap-out extends); the rest queued."""
    n, e, s, w = counts
    return seg((0, 0, n, n), near(e), (0, 0, s, s), near(w))


def _near_tie(forecast: tuple[float, float, float, float] | None, counts: tuple[float, ...]) -> str:
    # North-south green for 20 s, its vehicles about to cross: only the pressure cuts it.
    ctl = controller(min_green_s=5.0)
    obs = Observation(t=20.0, counts=counts, segments=_tie_segments(counts), forecast=forecast)
    return ctl.step(obs).reason


def test_a_rising_forecast_tips_a_near_tie_toward_its_phase() -> None:
    counts = (6.0, 12.0, 6.0, 12.0)  # pressures 12 vs 24: 12 short of the margin (15.4)
    assert _near_tie(None, counts) == "extend"
    # East will hold 24 vehicles over the next minute, not 12: east-west's pressure rises.
    assert _near_tie((6.0, 24.0, 6.0, 12.0), counts) == "pressure"
    # A falling forecast is no reason: the camera's count stands.
    assert _near_tie((6.0, 5.0, 6.0, 5.0), counts) == "extend"


def test_a_rising_forecast_on_the_green_holds_it() -> None:
    counts = (6.0, 15.0, 6.0, 15.0)  # pressures 12 vs 30: over the margin (16.3)
    assert _near_tie(None, counts) == "pressure"
    # North fills up over the next minute: the green's pressure rises, the tie holds.
    assert _near_tie((10.0, 15.0, 6.0, 15.0), counts) == "extend"


def test_a_forecast_alone_never_calls_a_green_for_an_empty_road() -> None:
    ctl = controller(min_green_s=5.0)
    decision = ctl.step(Observation(t=20.0, counts=(3, 0, 3, 0), forecast=(3, 9, 3, 9)))
    assert not decision.switch and decision.reason == "no-demand-elsewhere"


def test_the_stream_function_reads_forecasts_per_approach() -> None:
    signal = {"phase": NS, "stage": "green", "elapsed_s": 20.0}
    values = (6.0, 12.0, 6.0, 12.0)
    counts: dict[str, float | None] = dict(zip(APPROACHES, values, strict=True))
    segments = dict(zip(APPROACHES, _tie_segments(values), strict=True))
    plain = plans_for_window([message("J", 20.0, counts, signal=signal, segments=segments)], {})
    assert plain[0]["reason"] == "extend"
    # Only east forecast: the other approaches have none (not zero).
    window = [message("J", 20.0, counts, signal=signal, segments=segments, forecast={"east": 24.0})]
    tipped = plans_for_window(window, {})
    assert tipped[0]["reason"] == "pressure" and tipped[0]["phase"] == EW


def test_a_negative_forecast_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="forecast_weight"):
        ControllerConfig(forecast_weight=-0.5)
    with pytest.raises(ValueError, match="4 forecast values"):
        controller().step(Observation(t=1.0, counts=(1, 1, 1, 1), forecast=(1.0, 2.0)))
