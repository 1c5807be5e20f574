"""The traffic "camera": occupancy images of a junction's approaches, with exact counts.

Each approach of a junction is seen as a ``lanes x cells`` float32 grid. Cell 0
touches the stop line; cell ``i`` covers ``[i * c, (i + 1) * c)`` metres upstream
of it, with ``c = lane_length_m / cells``. A cell's value is the fraction of its
length covered by vehicle bodies (so a 5 m car over 3.75 m cells lights one cell
fully and part of the next), plus optional sensor noise, clipped to ``[0, 1]``.
A junction frame stacks its approaches: ``[approaches, lanes, cells]``.

The image covers the whole queue (64 cells over 240 m by default): a camera that
sees only the first few vehicles is what breaks signal control near capacity.

Ground truth is exact: :func:`count_visible` counts the vehicles whose front
bumper lies in ``[0, lane_length_m)``. The same renderer takes simulator
positions, so the counter trains on synthetic data now and on SUMO later; with
libsumo, a vehicle on an incoming lane of length ``L`` is at
``positions_m = L - traci.vehicle.getLanePosition(vid)`` (its front bumper's
distance to the stop line) with ``lengths_m = traci.vehicle.getLength(vid)``.

Cameras err (:mod:`functions.traffic.impairments`): given ``impairments=``, the
renderer draws what the camera detects (occlusion, misses, jitter, ghosts) and
empties the cells past its reach, while the counts stay exact.

Pure numpy, deterministic by seed; importing this module never imports torch.

Example:
    >>> img = render_approach([0.5, 8.0], 240.0, lanes=[0, 1], num_lanes=2)
    >>> img.shape, img.dtype.name
    ((2, 64), 'float32')
    >>> count_visible([0.5, 8.0, 300.0], 240.0)
    2
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from functions.traffic.impairments import Impairments, cut_reach, impair_vehicles, reach_cells

__all__ = [
    "APPROACHES",
    "DEFAULT_CELLS",
    "DEFAULT_LANES",
    "DEFAULT_LANE_LENGTH_M",
    "DEFAULT_VEHICLE_LENGTH_M",
    "ApproachState",
    "OccupancyDataset",
    "count_visible",
    "render_approach",
    "render_junction",
    "synthetic_approach",
    "synthetic_dataset",
]

#: Approaches of a four-arm junction, in the order of a frame's first axis.
APPROACHES: tuple[str, ...] = ("north", "east", "south", "west")
DEFAULT_CELLS = 64
DEFAULT_LANES = 2
DEFAULT_LANE_LENGTH_M = 240.0
#: SUMO's default passenger car length.
DEFAULT_VEHICLE_LENGTH_M = 5.0
#: Bump when the generator's output changes, so data ids change with it.
GENERATOR_VERSION = 1

FloatArray = npt.NDArray[np.float32]


def _as_float_array(values: Any, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {array[~np.isfinite(array)][:3]}")
    return array


def count_visible(positions_m: Sequence[float] | npt.ArrayLike, lane_length_m: float) -> int:
    """The exact count the camera should report: vehicles with 0 <= position < lane length.

    Args:
        positions_m: distance from the stop line to each vehicle's front bumper, in metres.
        lane_length_m: the length of road the camera covers.
    """
    positions = _as_float_array(positions_m, "positions_m")
    return int(np.count_nonzero((positions >= 0.0) & (positions < lane_length_m)))


def render_approach(
    positions_m: Sequence[float] | npt.ArrayLike,
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    *,
    lanes: Sequence[int] | npt.ArrayLike | None = None,
    lengths_m: Sequence[float] | npt.ArrayLike | float | None = None,
    num_lanes: int = DEFAULT_LANES,
    cells: int = DEFAULT_CELLS,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
    impairments: Impairments | None = None,
) -> FloatArray:
    """Render one approach as a ``[num_lanes, cells]`` float32 occupancy grid.

    Args:
        positions_m: distance from the stop line to each vehicle's front bumper
            (metres, 0 = at the stop line, growing upstream).
        lane_length_m: metres of road the image covers.
        lanes: lane index of each vehicle (default: all in lane 0).
        lengths_m: vehicle lengths (one per vehicle, or one for all; default 5 m).
        num_lanes: rows of the image; lanes the approach has are ``0..num_lanes-1``.
        cells: columns of the image.
        noise_std: standard deviation of Gaussian sensor noise added to every cell.
        rng: source of the noise and the impairments; required when either draws.
        impairments: what the camera gets wrong (None: nothing); applied to the
            vehicles before they are drawn, the reach after the noise.

    Returns:
        Covered fraction of each cell, in ``[0, 1]``.

    Raises:
        ValueError: inconsistent lengths, a lane out of range, or noise or
            random impairments without ``rng``.

    Example:
        >>> render_approach([0.0], 20.0, cells=4, num_lanes=1).tolist()
        [[1.0, 0.0, 0.0, 0.0]]
    """
    if lane_length_m <= 0 or cells < 1 or num_lanes < 1:
        raise ValueError(
            f"need lane_length_m > 0, cells >= 1, num_lanes >= 1; got {lane_length_m}, "
            f"{cells}, {num_lanes}"
        )
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    positions = _as_float_array(positions_m, "positions_m")
    n = positions.size
    lane_idx = np.zeros(n, dtype=np.int64) if lanes is None else np.asarray(lanes).reshape(-1)
    if lane_idx.size != n:
        raise ValueError(f"lanes has {lane_idx.size} entries for {n} vehicles")
    if n and (lane_idx.min() < 0 or lane_idx.max() >= num_lanes):
        raise ValueError(f"lane indices must be in 0..{num_lanes - 1}, got {sorted(set(lane_idx))}")
    if lengths_m is None:
        lengths = np.full(n, DEFAULT_VEHICLE_LENGTH_M)
    else:
        lengths = np.broadcast_to(_as_float_array(lengths_m, "lengths_m"), (n,)).copy()
    if lengths.size != n:
        raise ValueError(f"lengths_m has {lengths.size} entries for {n} vehicles")
    if n and lengths.min() <= 0:
        raise ValueError("vehicle lengths must be > 0")
    if impairments is not None:
        positions, lane_idx, lengths = impair_vehicles(
            positions,
            lane_idx.astype(np.int64),
            lengths,
            impairments,
            rng,
            lane_length_m=lane_length_m,
            num_lanes=num_lanes,
        )
        n = positions.size

    cell_m = lane_length_m / cells
    edges = np.arange(cells + 1, dtype=np.float64) * cell_m
    image = np.zeros((num_lanes, cells), dtype=np.float64)
    if n:
        start = positions[:, None]
        end = (positions + lengths)[:, None]
        # Exact overlap of each body [front, front + length) with each cell.
        cover = (
            np.clip(
                np.minimum(end, edges[None, 1:]) - np.maximum(start, edges[None, :-1]), 0.0, None
            )
            / cell_m
        )
        np.add.at(image, lane_idx.astype(np.int64), cover)
    if noise_std > 0:
        if rng is None:
            raise ValueError("noise_std > 0 needs rng= (a numpy Generator) for reproducibility")
        image += rng.normal(0.0, noise_std, size=image.shape)
    out = np.clip(image, 0.0, 1.0).astype(np.float32)
    return out if impairments is None else cut_reach(out, impairments, lane_length_m)


@dataclass(frozen=True, slots=True)
class ApproachState:
    """Vehicles on one approach: front-bumper distance to the stop line, lane, length."""

    positions_m: npt.NDArray[np.float64]
    lanes: npt.NDArray[np.int64]
    lengths_m: npt.NDArray[np.float64]

    def count(self, lane_length_m: float = DEFAULT_LANE_LENGTH_M) -> int:
        """Vehicles the camera covering ``lane_length_m`` should count."""
        return count_visible(self.positions_m, lane_length_m)


def render_junction(
    approaches: Sequence[ApproachState],
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    *,
    num_lanes: int = DEFAULT_LANES,
    cells: int = DEFAULT_CELLS,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
    impairments: Impairments | None = None,
) -> tuple[FloatArray, npt.NDArray[np.float32]]:
    """Render a junction frame ``[approaches, lanes, cells]`` and its exact counts ``[approaches]``.

    ``impairments`` make each approach's image what the camera sees; the
    counts stay the exact ones (see :func:`render_approach`).

    Example:
        >>> state = ApproachState(np.array([1.0]), np.array([0]), np.array([4.5]))
        >>> frame, counts = render_junction([state] * 4)
        >>> frame.shape, counts.tolist()
        ((4, 2, 64), [1.0, 1.0, 1.0, 1.0])
    """
    frame = np.stack(
        [
            render_approach(
                a.positions_m,
                lane_length_m,
                lanes=a.lanes,
                lengths_m=a.lengths_m,
                num_lanes=num_lanes,
                cells=cells,
                noise_std=noise_std,
                rng=rng,
                impairments=impairments,
            )
            for a in approaches
        ]
    )
    counts = np.array([a.count(lane_length_m) for a in approaches], dtype=np.float32)
    return frame, counts


_REGIMES = ("free", "moderate", "saturated")


def _vehicle_lengths(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    kind = rng.random(n)
    cars = rng.uniform(3.8, 5.2, n)
    vans = rng.uniform(5.5, 7.5, n)
    heavy = rng.uniform(10.0, 16.5, n)  # trucks and buses
    return np.where(kind < 0.85, cars, np.where(kind < 0.95, vans, heavy))


def synthetic_approach(
    rng: np.random.Generator,
    *,
    num_lanes: int = DEFAULT_LANES,
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    regime: str | None = None,
) -> ApproachState:
    """Draw a realistic approach: a queue at the stop line, then moving platoons.

    Per lane: a standing queue (jam gaps of 1.5-3.5 m, SUMO's minGap is 2.5 m)
    whose length depends on the regime (``"free"``, ``"moderate"``,
    ``"saturated"``, drawn when None; saturated queues may run past the camera),
    then platoons at 8-30 m gaps separated by 40-160 m, up to 40 m beyond the
    image so vehicles enter it partially. Lengths mix cars, vans and heavy
    vehicles. Vehicles never overlap in a lane.
    """
    if regime is None:
        regime = str(rng.choice(_REGIMES, p=[0.3, 0.4, 0.3]))
    if regime not in _REGIMES:
        raise ValueError(f"unknown regime {regime!r}: expected one of {', '.join(_REGIMES)}")
    chunks: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]] = []
    jam_capacity = int(lane_length_m / 6.5) + 1
    limit = lane_length_m + 40.0
    most = int(limit / 5.3) + 2  # shortest car plus shortest jam gap
    for lane in range(num_lanes):
        if regime == "free":
            queued = int(rng.poisson(0.7))
            platoon_prob = 0.25
        elif regime == "moderate":
            queued = int(rng.integers(0, max(2, jam_capacity // 2)))
            platoon_prob = 0.55
        else:
            queued = int(rng.integers(jam_capacity // 2, jam_capacity + 8))
            platoon_prob = 0.8
        # No queue: the first vehicle is somewhere upstream, possibly out of view.
        first = rng.uniform(0.3, 3.0) if queued else rng.uniform(0.0, 1.2 * lane_length_m)
        lengths = _vehicle_lengths(rng, most)
        jam = rng.uniform(1.5, 3.5, most)
        platoon = rng.uniform(8.0, 30.0, most)
        between = rng.uniform(40.0, 160.0, most)
        in_platoon = rng.random(most) < platoon_prob
        in_queue = np.arange(1, most + 1) < queued
        gaps = np.where(in_queue, jam, np.where(in_platoon, platoon, between))
        fronts = first + np.concatenate(([0.0], np.cumsum(lengths + gaps)[:-1]))
        keep = fronts < limit
        chunks.append((fronts[keep], lengths[keep], lane))
    return ApproachState(
        positions_m=np.concatenate([c[0] for c in chunks]),
        lanes=np.concatenate([np.full(c[0].size, c[2], dtype=np.int64) for c in chunks]),
        lengths_m=np.concatenate([c[1] for c in chunks]),
    )


@dataclass(frozen=True, slots=True)
class OccupancyDataset:
    """Junction frames with exact per-approach counts.

    Attributes:
        images: float32 ``[n, approaches, lanes, cells]``.
        counts: float32 ``[n, approaches]``, exact integers.
        data_id: a digest of the generator's parameters and output (lineage).
        params: how the data was generated.
    """

    images: FloatArray
    counts: npt.NDArray[np.float32]
    data_id: str
    params: dict[str, Any]

    def __len__(self) -> int:
        """Number of frames."""
        return int(self.images.shape[0])

    def split(self, val_fraction: float) -> tuple[OccupancyDataset, OccupancyDataset]:
        """Split into (train, held-out) by position; the data is already shuffled."""
        cut = len(self) - max(1, round(len(self) * val_fraction))
        if cut < 1:
            raise ValueError(f"cannot hold out {val_fraction:.0%} of {len(self)} frames")
        return (
            OccupancyDataset(
                self.images[:cut], self.counts[:cut], self.data_id + ":train", self.params
            ),
            OccupancyDataset(
                self.images[cut:], self.counts[cut:], self.data_id + ":val", self.params
            ),
        )


def synthetic_dataset(
    n: int,
    *,
    seed: int = 0,
    approaches: int = len(APPROACHES),
    num_lanes: int = DEFAULT_LANES,
    cells: int = DEFAULT_CELLS,
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    noise_std: float = 0.03,
    impairments: Impairments | None = None,
) -> OccupancyDataset:
    """Draw ``n`` junction frames with exact counts, deterministic by ``seed``.

    With ``impairments`` every frame draws its own occlusions, misses, jitter
    and ghosts (the same generator, so still deterministic by ``seed``): a
    counter trained on them learns to count through them. The counts are then
    the vehicles within the camera's reach (whole cells): what it could see
    but for occlusion and misses. A counter taught the whole frame's count
    guesses the unseen rest from this generator's traffic (about two vehicles
    on an empty road), which a shorter real approach does not have; so the
    count error against a simulator's whole-approach count honestly includes
    what lies past the reach.

    Example:
        >>> data = synthetic_dataset(8, seed=1)
        >>> data.images.shape, data.counts.shape
        ((8, 4, 2, 64), (8, 4))
        >>> bool((synthetic_dataset(8, seed=1).images == data.images).all())
        True
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    seen_m = lane_length_m
    if impairments is not None:
        seen_m = reach_cells(impairments, lane_length_m, cells) * lane_length_m / cells
    images = np.empty((n, approaches, num_lanes, cells), dtype=np.float32)
    counts = np.empty((n, approaches), dtype=np.float32)
    for i in range(n):
        states = [
            synthetic_approach(rng, num_lanes=num_lanes, lane_length_m=lane_length_m)
            for _ in range(approaches)
        ]
        images[i], counts[i] = render_junction(
            states,
            lane_length_m,
            num_lanes=num_lanes,
            cells=cells,
            noise_std=noise_std,
            rng=rng,
            impairments=impairments,
        )
        if seen_m < lane_length_m:
            counts[i] = [s.count(seen_m) for s in states]
    params: dict[str, Any] = {
        "generator": "synthetic-occupancy",
        "generator_version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "approaches": approaches,
        "num_lanes": num_lanes,
        "cells": cells,
        "lane_length_m": lane_length_m,
        "noise_std": noise_std,
    }
    if impairments is not None and not impairments.is_none:
        params["impairments"] = impairments.as_dict()
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update(images.tobytes())
    digest.update(counts.tobytes())
    data_id = f"synthetic-occupancy-{digest.hexdigest()[:16]}"
    return OccupancyDataset(images=images, counts=counts, data_id=data_id, params=params)
