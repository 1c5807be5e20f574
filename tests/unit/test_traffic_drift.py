"""A drifting traffic camera: the change itself, its frames, the late truth, the error over time."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from functions.traffic.camera_drift import CameraDrift, drift_frames
from functions.traffic.impairments import Impairments
from functions.traffic.occupancy import ApproachState
from functions.traffic.sim.camera import CameraRelay
from functions.traffic.sim.count_error import ErrorSeries
from functions.traffic.sim.drift_report import drift_summary, error_over_time_parts
from functions.traffic.sim.truth import TruthFeed
from mesh.scenario import ReportSection
from mesh.scenario._report import ScenarioReport


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("gain", 0.0, "CameraDrift.gain: expected in (0, 1], got 0.0"),
        ("haze", 1.0, "CameraDrift.haze: expected in [0, 1), got 1.0"),
        ("shift_cells", -1, "CameraDrift.shift_cells: expected in [0, 64], got -1"),
        ("noise_std", 2.0, "CameraDrift.noise_std: expected in [0, 1], got 2.0"),
    ],
)
def test_a_change_no_camera_could_make_is_refused(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        CameraDrift(**{field: value})
    assert str(info.value) == expected


def test_severity_scales_the_change_from_none_to_full() -> None:
    assert CameraDrift.at(0.0).is_none
    assert CameraDrift.at(1.0) == CameraDrift()
    with pytest.raises(ValueError, match=r"severity: expected a number in \[0, 1\], got 1.5"):
        CameraDrift.at(1.5)


def test_drift_shifts_dims_and_hazes_only_the_cells_the_camera_sees() -> None:
    frames = np.zeros((2, 4, 2, 16), np.float32)
    frames[:, :, 0, 0] = 1.0  # a vehicle at the stop line on every approach
    out = drift_frames(
        frames,
        CameraDrift(gain=0.5, haze=0.25, shift_cells=2, noise_std=0.0),
        None,
        visible_cells=[8, 4],
    )
    assert out.shape == frames.shape and out.dtype == np.float32
    assert out[0, 0, 0, :3].tolist() == [0.25, 0.25, 0.75]  # moved two cells upstream
    assert np.all(out[0, :, :, 8:] == 0.0) and np.all(out[1, :, :, 4:] == 0.0)
    assert np.all(out[1, :, 1, :4] == 0.25)  # an empty lane now looks hazy
    assert frames[0, 0, 0, 0] == 1.0  # the input is untouched


def test_drift_noise_needs_a_generator_and_one_visible_count_per_row() -> None:
    frames = np.zeros((2, 4, 2, 16), np.float32)
    with pytest.raises(ValueError, match="needs rng="):
        drift_frames(frames, CameraDrift(), None)
    with pytest.raises(ValueError, match=r"one per frame row \(2\), got 1"):
        drift_frames(frames, CameraDrift(), np.random.default_rng(0), visible_cells=[8])
    assert np.array_equal(drift_frames(frames, CameraDrift.at(0.0), None), frames)


def _observation(junction: str = "A0") -> Any:
    cars = ApproachState(np.array([1.0, 9.0]), np.array([0, 1]), np.array([4.5, 4.5]))
    approaches = tuple(
        SimpleNamespace(positions_m=cars.positions_m, lanes=cars.lanes, lengths_m=cars.lengths_m)
        for _ in range(4)
    )
    return SimpleNamespace(
        junction=junction,
        time_s=10.0,
        approaches=approaches,
        phase=0,
        stage="green",
        stage_elapsed_s=3.0,
        target=0,
        counts=(2, 2, 2, 2),
    )


def _camera() -> CameraRelay:
    return CameraRelay(
        junctions={"A0": {}, "A1": {}},
        segments_m=(30.0,),
        publish=lambda topic, payload: None,
        output=None,
        stream="counts",
        sim_time_at=lambda ts: ts - 1000.0,
        impairments=Impairments.none(),
    )


def test_a_drifted_junction_renders_through_the_change_and_the_others_do_not() -> None:
    relay = _camera()
    before, counts = relay.render(_observation())
    relay.set_drift("A0", CameraDrift(noise_std=0.0))
    after, _ = relay.render(_observation())
    other, _ = relay.render(_observation("A1"))
    assert counts == (2, 2, 2, 2)  # the truth does not drift
    assert after.shape == before.shape
    assert after[0].mean() > before[0].mean()  # haze over the whole frame
    assert np.all(after[1, ..., 8:] == 0.0)  # the 30 m segment's cut stays empty
    assert np.array_equal(other, before)
    assert set(relay.drifted()) == {"A0"}
    relay.set_drift("A0", CameraDrift.at(0.0))
    assert relay.drifted() == {}


def test_truth_goes_out_late_in_order_as_the_drift_check_reads_it() -> None:
    sent: list[tuple[str, bytes]] = []
    feed = TruthFeed("traffic/{site}/truth", lambda t, p: sent.append((t, p)), delay_s=3.0)
    feed.add("A0", 1000.0, [1, 2, 3, 4], now=1000.0)
    feed.add("B1", 1001.0, [0, 0, 0, 5], now=1001.0)
    assert feed.flush(now=1002.9) == 0
    assert feed.flush(now=1003.5) == 1 and feed.flush(now=1010.0) == 1
    assert [t for t, _ in sent] == ["traffic/A0/truth", "traffic/B1/truth"]
    assert json.loads(sent[0][1]) == {"site": "A0", "ts": 1000.0, "values": [1.0, 2.0, 3.0, 4.0]}
    assert feed.published == 2
    with pytest.raises(ValueError, match="expected >= 0 seconds"):
        TruthFeed("t", lambda t, p: None, delay_s=-1)


def test_error_series_buckets_per_site_and_summarises_the_drift() -> None:
    series = ErrorSeries(bucket_s=10)
    for t, site, err in [(1, "A0", 1.0), (5, "A0", 3.0), (15, "A0", 8.0), (15, "B0", 1.0)]:
        series.add(site, t, err)
    assert series.series() == {"A0": [(5.0, 2.0), (15.0, 8.0)], "B0": [(15.0, 1.0)]}
    assert series.mean(sites=["A0"], since_s=10) == 8.0
    figures = drift_summary(series, [(10.0, "A0", 0.6)])
    assert figures == {
        "sites": ["A0"],
        "at_s": 10.0,
        "before": 2.0,
        "after": 8.0,
        "others_after": 1.0,
    }
    assert drift_summary(series, []) is None
    with pytest.raises(ValueError, match="bucket_s"):
        ErrorSeries(bucket_s=0)


def test_the_report_gets_the_error_chart_and_the_drift_figures() -> None:
    series = ErrorSeries(bucket_s=10)
    series.add("A0", 5, 1.0)
    series.add("A0", 25, 6.0)
    section = ReportSection(title="Traffic", html="<p>t</p>", summary={"x": 1})
    report = ScenarioReport(name="drift", sim_seconds=30.0)
    parts = error_over_time_parts(series, [(20.0, "A0", 1.0)], report, section)
    assert parts["summary"]["x"] == 1
    assert parts["summary"]["count_error_over_time"] == {"A0": [[5.0, 1.0], [25.0, 6.0]]}
    assert parts["summary"]["count_error_bucket_s"] == 10.0  # a point is its bucket's middle
    assert parts["summary"]["count_error_drift"]["after"] == 6.0
    assert "data-chart" in parts["html"] and "drift A0" in parts["html"]
    assert "count error 1.00 -> 6.00" in parts["headline"][-1]


def test_a_reference_counter_scores_what_a_drifted_camera_would_have_shown() -> None:
    relay = _camera()
    seen: list[np.ndarray[Any, Any]] = []

    def reference(batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        seen.append(batch.copy())
        # counts every approach as 1 vehicle off the truth (2): error 1 per approach
        return np.full((len(batch), 4), 3.0, np.float32)

    clean, _ = relay.render(_observation())
    relay.set_reference(reference)
    relay.render(_observation("A1"))  # not drifted: nothing to score
    assert seen == [] and relay.undrifted_series.series() == {}
    relay.set_drift("A0", CameraDrift(noise_std=0.0))
    drifted, _ = relay.render(_observation())
    [batch] = seen
    assert np.array_equal(batch[:-1], clean[:-1])  # the frame without the change
    assert not np.array_equal(drifted[:-1], clean[:-1])
    assert relay.undrifted_series.series() == {"A0": [(15.0, 1.0)]}


def test_a_failing_reference_is_dropped_and_the_frames_go_on() -> None:
    relay = _camera()
    calls = 0

    def broken(batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        nonlocal calls
        calls += 1
        raise RuntimeError("no session")

    relay.set_reference(broken)
    relay.set_drift("A0", CameraDrift(noise_std=0.0))
    relay.render(_observation())
    frames, _ = relay.render(_observation())
    assert calls == 1 and frames.shape[0] == 3
    assert relay.undrifted_series.series() == {}


def test_the_drift_figures_take_the_undrifted_level_beside_the_after() -> None:
    series, undrifted = ErrorSeries(bucket_s=10), ErrorSeries(bucket_s=10)
    series.add("A0", 5, 1.0)
    series.add("A0", 25, 2.2)
    undrifted.add("A0", 25, 2.0)
    figures = drift_summary(series, [(20.0, "A0", 1.0)], undrifted)
    assert figures is not None and figures["undrifted"] == 2.0
    section = ReportSection(title="Traffic")
    report = ScenarioReport(name="drift", sim_seconds=30.0)
    parts = error_over_time_parts(series, [(20.0, "A0", 1.0)], report, section, undrifted=undrifted)
    assert parts["summary"]["count_error_undrifted_over_time"] == {"A0": [[25.0, 2.0]]}
    assert "without the change 2.00" in parts["headline"][-1]
