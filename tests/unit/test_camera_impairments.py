"""Camera impairments: each pinned on the renderer, the scenario field, and the count error."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import Event, Tensor, json_tensor
from functions.traffic.impairments import Impairments, impair_vehicles
from functions.traffic.occupancy import (
    ApproachState,
    render_approach,
    synthetic_approach,
    synthetic_dataset,
)
from functions.traffic.signals import camera_frames
from functions.traffic.sim.camera import CameraRelay, camera_view
from functions.traffic.sim.config import TrafficConfig
from functions.traffic.sim.count_error import CountError, merge_summaries
from functions.traffic.sim.kpis import camera_section_parts
from mesh.scenario import ReportSection
from mesh.scenario._load import ScenarioError, load_scenario

#: Only the impairment under test: the others off.
OFF = {"miss_rate": 0.0, "ghost_rate": 0.0, "jitter_m": 0.0, "occlusion_m": 0.0, "reach_m": None}


def only(**kwargs: Any) -> Impairments:
    return Impairments(**{**OFF, **kwargs})


def rendered(positions: list[float], lengths: list[float], lanes: list[int], **kw: Any) -> Any:
    return render_approach(positions, 240.0, lanes=lanes, lengths_m=lengths, num_lanes=2, **kw)


# -- each impairment ------------------------------------------------------------------


def test_a_long_vehicle_hides_the_ones_just_behind_it_in_its_lane() -> None:
    # A 12 m truck at the stop line (rear at 12.5 m), 10 m of shadow: 14 m is
    # hidden, 25 m is past the shadow, and lane 1's car at 14 m is in another lane.
    positions, lengths, lanes = [0.5, 14.0, 25.0, 14.0], [12.0, 5.0, 5.0, 5.0], [0, 0, 0, 1]
    seen = rendered(positions, lengths, lanes, impairments=only(occlusion_m=10.0))
    expected = rendered([0.5, 25.0, 14.0], [12.0, 5.0, 5.0], [0, 0, 1])
    assert (seen == expected).all()
    assert not (seen == rendered(positions, lengths, lanes)).all()
    # A car (shorter than occluder_length_m) hides nothing.
    cars = rendered([0.5, 8.0], [5.0, 5.0], [0, 0], impairments=only(occlusion_m=10.0))
    assert (cars == rendered([0.5, 8.0], [5.0, 5.0], [0, 0])).all()


def test_reach_empties_the_far_cells_and_keeps_the_near_ones() -> None:
    positions, lengths, lanes = [2.0, 50.0, 100.0, 200.0], [5.0] * 4, [0, 1, 0, 1]
    full = rendered(positions, lengths, lanes)
    near = rendered(positions, lengths, lanes, impairments=only(reach_m=60.0))
    assert (near[:, :16] == full[:, :16]).all()  # 60 m = 16 cells of 3.75 m
    assert near[:, 16:].sum() == 0.0 and full[:, 16:].sum() > 0.0


def test_miss_and_ghost_rates_hold_on_a_seeded_generator() -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    positions = np.linspace(0.0, 239.0, n)
    lanes = np.zeros(n, dtype=np.int64)
    lengths = np.full(n, 5.0)
    kept, _, _ = impair_vehicles(
        positions, lanes, lengths, only(miss_rate=0.2), rng, lane_length_m=240.0, num_lanes=2
    )
    assert 0.78 <= kept.size / n <= 0.82
    empty = np.zeros(0)
    ghosts = [
        impair_vehicles(
            empty,
            empty.astype(np.int64),
            empty,
            only(ghost_rate=0.5, reach_m=100.0),
            rng,
            lane_length_m=240.0,
            num_lanes=2,
        )
        for _ in range(4000)
    ]
    assert 0.45 <= np.mean([g[0].size for g in ghosts]) <= 0.55
    placed = np.concatenate([g[0] for g in ghosts])
    assert placed.min() >= 0.0 and placed.max() < 100.0  # only where the camera sees
    assert set(np.concatenate([g[1] for g in ghosts]).tolist()) == {0, 1}


def test_jitter_moves_each_vehicle_by_about_its_deviation() -> None:
    positions = np.linspace(10.0, 200.0, 5000)
    moved, _, _ = impair_vehicles(
        positions,
        np.zeros(positions.size, dtype=np.int64),
        np.full(positions.size, 5.0),
        only(jitter_m=1.5),
        np.random.default_rng(2),
        lane_length_m=240.0,
        num_lanes=1,
    )
    assert np.std(moved - positions) == pytest.approx(1.5, rel=0.05)


def test_none_reproduces_the_unimpaired_frames_exactly() -> None:
    plain = synthetic_dataset(24, seed=5)
    none = synthetic_dataset(24, seed=5, impairments=Impairments.none())
    assert (plain.images == none.images).all() and plain.data_id == none.data_id
    rng = np.random.default_rng(4)
    states = [synthetic_approach(rng) for _ in range(4)]
    expected, _ = camera_frames(
        states, segments_m=(30.0, 60.0), noise_std=0.03, rng=np.random.default_rng(9)
    )
    seen = camera_view(
        states,
        Impairments.none(),
        np.random.default_rng(9),
        segments_m=(30.0, 60.0),
        noise_std=0.03,
    )
    assert (seen == expected).all()


def test_impaired_data_is_reproducible_by_seed_and_keeps_exact_counts() -> None:
    a = synthetic_dataset(24, seed=5, impairments=Impairments())
    b = synthetic_dataset(24, seed=5, impairments=Impairments())
    plain = synthetic_dataset(24, seed=5)
    assert (a.images == b.images).all() and a.data_id == b.data_id
    assert a.data_id != plain.data_id and a.params["impairments"]["reach_m"] == 150.0
    assert not (a.images == plain.images).all()
    assert a.images[..., 40:].max() == 0.0  # 150 m reach: 40 cells
    # The counts are what the camera should report (every vehicle within its
    # reach, occluded, missed or not), not what it saw.
    rng = np.random.default_rng(5)
    first = [synthetic_approach(rng) for _ in range(4)]
    assert a.counts[0].tolist() == [float(s.count(150.0)) for s in first]
    assert plain.counts[0].tolist() == [float(s.count()) for s in first]


# -- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"miss_rate": 1.0}, r"Impairments.miss_rate: expected in \[0, 1\), got 1.0"),
        ({"ghost_rate": -0.1}, "Impairments.ghost_rate: expected in"),
        ({"reach_m": 0.0}, "Impairments.reach_m: expected > 0 metres, or None"),
        ({"jitter_m": float("nan")}, "Impairments.jitter_m"),
    ],
)
def test_impossible_settings_are_refused_naming_the_field(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Impairments(**kwargs)


def test_a_trainer_argument_parses_to_impairments() -> None:
    assert Impairments.parse(None) == Impairments()
    assert Impairments.parse("none") == Impairments.none()
    assert Impairments.parse('{"miss_rate": 0.1, "reach_m": null}') == Impairments(
        miss_rate=0.1, reach_m=None
    )
    assert Impairments.parse(Impairments().as_dict()) == Impairments()
    with pytest.raises(ValueError, match="unknown field.*blur"):
        Impairments.parse({"blur": 1.0})
    with pytest.raises(ValueError, match="impairments.jitter_m: expected a number, got 'lots'"):
        Impairments.parse({"jitter_m": "lots"})
    with pytest.raises(ValueError, match="expected 'none' or a JSON object"):
        Impairments.parse("fuzzy")
    with pytest.raises(ValueError, match="random impairments need rng|impairments need rng"):
        render_approach([1.0], impairments=Impairments())


def test_the_scenario_field_defaults_on_and_null_turns_it_off() -> None:
    grid = {"network": {"grid": {"rows": 1, "cols": 1}}}
    assert TrafficConfig.model_validate(grid).cameras is not None
    cams = TrafficConfig.model_validate(grid).cameras
    assert cams is not None and cams.camera_impairments() == Impairments()
    off = TrafficConfig.model_validate({**grid, "cameras": {"impairments": None}}).cameras
    assert off is not None and off.camera_impairments() == Impairments.none()
    some = TrafficConfig.model_validate(
        {**grid, "cameras": {"impairments": {"miss_rate": 0.2, "reach_m": None}}}
    ).cameras
    assert some is not None
    assert some.camera_impairments() == Impairments(miss_rate=0.2, reach_m=None)


def test_a_bad_impairment_in_a_scenario_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent(
            """\
            name: bad
            simulation:
              plugin: functions.traffic.sim:plugin
              network: {grid: {rows: 1, cols: 2}}
              cameras:
                module: counter
                impairments: {miss_rate: 1.5, blur: 2}
            """
        )
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario("bad.yaml")
    assert info.value.messages == [
        "bad.yaml:7: simulation.cameras.impairments.miss_rate: expected a number >= 0 and < 1, "
        "got 1.5",
        "bad.yaml:7: simulation.cameras.impairments.blur: unknown field; expected one of: "
        "miss_rate, ghost_rate, jitter_m, occluder_length_m, occlusion_m, reach_m",
    ]


# -- the count error --------------------------------------------------------------------


def test_count_error_is_the_mean_absolute_error_per_approach() -> None:
    err = CountError()
    err.add([3.0, 0.0, 5.0, 1.0], [4, 0, 5, 1])
    err.add([2.0, 1.0, 5.0, 1.0], [2, 0, 5, 3])
    s = err.summary()
    assert s["frames"] == 2 and s["mae"] == pytest.approx(0.5)
    assert s["by_approach"] == {"north": 0.5, "east": 0.5, "south": 0.0, "west": 1.0}
    assert s["bias"] == pytest.approx(-0.25)
    assert "0.50 vehicles per approach" in err.describe()
    with pytest.raises(ValueError, match="expected 4 counts per frame"):
        err.add([1.0], [1])
    merged = merge_summaries([s, CountError().summary(), s])
    assert merged["frames"] == 4 and merged["mae"] == pytest.approx(0.5)


def _event(source_ts: float, counts: list[float]) -> Event:
    rows = np.asarray(
        [counts, counts, counts, counts], dtype=np.float32
    )  # whole, 2 segments, still
    return Event(
        agent="j-A0",
        site="A0",
        stream="counts",
        module="counter",
        route="local",
        seq=1,
        source_ts=source_ts,
        ts=source_ts + 0.01,
        latency_ms=3.0,
        outputs={"counts": json_tensor(Tensor.from_numpy("counts", rows))},
    )


def test_the_relay_scores_each_answer_against_its_own_frame() -> None:
    sent: list[tuple[str, bytes]] = []
    relay = CameraRelay(
        junctions={"A0": {}},
        segments_m=(10.0, 30.0),
        publish=lambda topic, payload: sent.append((topic, payload)),
        output="traffic/{site}/counts",
        stream="counts",
        sim_time_at=lambda ts: ts - 1000.0,
    )
    relay.expect("A0", 1001.0, (2, 0, 1, 0))
    relay.expect("A0", 1002.0, (9, 9, 9, 9))
    relay.on_event(_event(1001.0, [3.0, 0.0, 1.0, 0.0]))  # answers the first frame only
    relay.on_event(_event(1005.0, [0.0, 0.0, 0.0, 0.0]))  # no frame of ours: not scored
    s = relay.count_error.summary()
    assert s["frames"] == 1 and s["by_approach"]["north"] == 1.0 and s["mae"] == 0.25
    assert len(sent) == 2  # both relayed to the controller all the same


def test_the_report_section_gains_the_count_error() -> None:
    err = CountError()
    err.add([3.0, 0.0, 5.0, 1.0], [4, 0, 5, 1])
    section = ReportSection(title="Traffic", html="<table/>", headline=("waits",), summary={"a": 1})
    parts = camera_section_parts(err.summary(), Impairments(), section)
    assert parts["summary"]["a"] == 1
    assert parts["summary"]["camera_count_error"]["mae"] == 0.25
    assert parts["summary"]["camera_count_error"]["impairments"]["reach_m"] == 150.0
    assert parts["headline"][0] == "waits" and "camera count error" in parts["headline"][1]
    assert parts["html"].startswith("<table/>") and "north" in parts["html"]


def test_an_empty_frame_stays_empty_without_ghosts() -> None:
    state = ApproachState(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0))
    frame = camera_view([state] * 4, only(miss_rate=0.3, jitter_m=1.0), np.random.default_rng(0))
    assert frame.shape == (1, 4, 2, 64) and frame.sum() == 0.0


# -- the bench's side -------------------------------------------------------------------


def test_the_bench_sees_through_the_same_cameras_and_merges_the_error_over_seeds() -> None:
    from bench._camera_error import count_error_by_level, counter_cache_name, impaired_frames

    rng = np.random.default_rng(8)
    states = [synthetic_approach(rng) for _ in range(4)]
    frames, exact = impaired_frames(
        states, Impairments.none(), np.random.default_rng(1), segments_m=(30.0,), noise_std=0.03
    )
    want_frames, want_exact = camera_frames(
        states, segments_m=(30.0,), noise_std=0.03, rng=np.random.default_rng(1)
    )
    assert (frames == want_frames).all() and (exact == want_exact).all()
    seen, _ = impaired_frames(
        states, Impairments(), np.random.default_rng(1), segments_m=(30.0,), noise_std=0.03
    )
    assert seen[..., 40:].max() == 0.0 and not (seen == want_frames).all()
    assert counter_cache_name(Impairments()) != counter_cache_name(Impairments(miss_rate=0.1))

    one = {"frames": 10, "mae": 1.0, "by_approach": dict.fromkeys(("n", "e"), 1.0), "bias": 0.5,
           "mean_true": 3.0}  # fmt: skip
    other = {**one, "frames": 30, "mae": 0.0, "by_approach": dict.fromkeys(("n", "e"), 0.0)}
    rows = [
        {"level": "peak", "controller": "adaptive", "count_error": one},
        {"level": "peak", "controller": "adaptive", "count_error": other},
        {"level": "peak", "controller": "fixed"},
    ]
    merged = count_error_by_level(rows, ["peak", "light"])
    assert list(merged) == ["peak"] and merged["peak"]["frames"] == 40
    assert merged["peak"]["mae"] == pytest.approx(0.25)
