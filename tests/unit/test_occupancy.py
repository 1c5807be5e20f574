from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from functions.traffic.occupancy import (
    ApproachState,
    count_visible,
    render_approach,
    render_junction,
    synthetic_approach,
    synthetic_dataset,
)


def test_a_car_covers_exactly_its_length() -> None:
    # 64 cells over 240 m: 3.75 m per cell; a 5 m car at the stop line.
    image = render_approach([0.0], 240.0, num_lanes=1, cells=64)
    assert image.shape == (1, 64) and image.dtype == np.float32
    assert image[0, 0] == pytest.approx(1.0)
    assert image[0, 1] == pytest.approx(1.25 / 3.75)
    assert image[0, 2:].sum() == 0.0


def test_covered_length_equals_the_visible_bodies() -> None:
    positions = np.array([0.5, 8.0, 15.7, 100.0, 237.0, 300.0])
    lengths = np.array([4.5, 5.0, 12.0, 4.0, 6.0, 5.0])
    lanes = np.array([0, 0, 0, 1, 1, 1])
    image = render_approach(positions, 240.0, lanes=lanes, lengths_m=lengths, num_lanes=2)
    visible = np.clip(np.minimum(positions + lengths, 240.0) - positions, 0.0, None)
    assert image.sum() * (240.0 / 64) == pytest.approx(visible.sum(), rel=1e-5)
    assert image[0].sum() * 3.75 == pytest.approx(4.5 + 5.0 + 12.0, rel=1e-5)
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_count_is_exact_at_the_boundaries() -> None:
    assert count_visible([0.0, 239.999, 240.0, -0.1, 120.0], 240.0) == 3
    assert count_visible([], 240.0) == 0


def test_noise_needs_a_seeded_rng_and_stays_in_range() -> None:
    with pytest.raises(ValueError, match="needs rng"):
        render_approach([1.0], noise_std=0.1)
    a = render_approach([1.0], noise_std=0.1, rng=np.random.default_rng(3))
    b = render_approach([1.0], noise_std=0.1, rng=np.random.default_rng(3))
    assert (a == b).all() and a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": [2]}, "lane indices"),
        ({"lanes": [0, 0]}, "lanes has 2 entries"),
        ({"lengths_m": [-1.0]}, "lengths must be > 0"),
        ({"cells": 0}, "cells >= 1"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_approach([1.0], 240.0, num_lanes=2, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        render_approach([float("nan")], 240.0)


def test_synthetic_queues_never_overlap_and_counts_are_exact() -> None:
    rng = np.random.default_rng(11)
    for regime in ("free", "moderate", "saturated"):
        for _ in range(20):
            state = synthetic_approach(rng, num_lanes=2, regime=regime)
            for lane in (0, 1):
                fronts = state.positions_m[state.lanes == lane]
                lengths = state.lengths_m[state.lanes == lane]
                assert (np.diff(fronts) >= lengths[:-1] + 1.5 - 1e-9).all()
            assert state.count(240.0) == int(
                ((state.positions_m >= 0) & (state.positions_m < 240.0)).sum()
            )
    with pytest.raises(ValueError, match="unknown regime"):
        synthetic_approach(rng, regime="gridlock")


def test_saturated_queues_fill_the_camera() -> None:
    rng = np.random.default_rng(5)
    counts = [synthetic_approach(rng, num_lanes=1, regime="saturated").count() for _ in range(30)]
    assert max(counts) >= 30  # the whole 240 m queue is seen, not the first 8 vehicles


def test_dataset_is_deterministic_by_seed() -> None:
    a = synthetic_dataset(16, seed=4)
    b = synthetic_dataset(16, seed=4)
    c = synthetic_dataset(16, seed=5)
    assert a.images.shape == (16, 4, 2, 64) and a.counts.shape == (16, 4)
    assert (a.images == b.images).all() and (a.counts == b.counts).all()
    assert a.data_id == b.data_id != c.data_id
    assert not (a.images == c.images).all()
    assert (a.counts == np.round(a.counts)).all() and a.counts.min() >= 0
    train, val = a.split(0.25)
    assert len(train) == 12 and len(val) == 4


def test_junction_frame_stacks_approaches_with_their_counts() -> None:
    states = [
        ApproachState(np.array([1.0, 9.0]), np.array([0, 1]), np.array([4.5, 4.5])),
        ApproachState(np.array([], dtype=float), np.array([], dtype=np.int64), np.array([])),
        ApproachState(np.array([250.0]), np.array([0]), np.array([5.0])),
        ApproachState(np.array([0.0, 6.5, 13.0]), np.array([0, 0, 0]), np.array([4.0] * 3)),
    ]
    frame, counts = render_junction(states)
    assert frame.shape == (4, 2, 64)
    assert counts.tolist() == [2.0, 0.0, 0.0, 3.0]
    assert frame[1].sum() == 0.0 and frame[2].sum() == 0.0


def test_importing_the_renderer_does_not_import_torch() -> None:
    code = "import sys, functions.traffic.occupancy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
