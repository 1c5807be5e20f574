"""What makes a traffic camera imperfect: occlusion, misses, ghosts, jitter, limited reach.

The occupancy renderer (:mod:`functions.traffic.occupancy`) draws vehicles
where the simulator put them; a real detector does worse. :class:`Impairments`
says how much worse, and :func:`impair_vehicles` / :func:`cut_reach` apply it
to one approach, in this order:

1. **occlusion** — seen from the stop line, a vehicle at least
   ``occluder_length_m`` long (a van, a truck, a bus) hides every vehicle of its
   lane whose front bumper lies within ``occlusion_m`` behind its rear;
2. **missed detections** — each vehicle left is dropped with probability ``miss_rate``;
3. **position jitter** — each detected vehicle moves by N(0, ``jitter_m``) metres;
4. **ghost detections** — Poisson(``ghost_rate``) car-sized false vehicles per
   approach frame, on a random lane, anywhere the camera sees;
5. **reach** — the camera sees the first ``reach_m`` metres from the stop line,
   rounded to whole cells; the cells past it stay empty.

The defaults (:class:`Impairments`) are on in the bench and the demo, and the
counter trains through them; :meth:`Impairments.none` turns them all off and
then nothing is drawn from the random generator, so frames are exactly what
the renderer made before impairments existed. Counts stay the simulator's: the
counter learns what the camera should report, not what it sees.

Pure numpy; randomness only from the ``numpy.random.Generator`` passed in
(seed it for reproducible runs).

Example:
    >>> rng = np.random.default_rng(0)
    >>> pos, lanes, lengths = impair_vehicles(
    ...     np.array([0.5, 14.0, 25.0]), np.array([0, 0, 0]), np.array([12.0, 5.0, 5.0]),
    ...     Impairments(miss_rate=0.0, ghost_rate=0.0, jitter_m=0.0), rng,
    ...     lane_length_m=240.0, num_lanes=1)
    >>> pos.tolist()  # the 12 m truck hides the car right behind it (14 m < 12.5 + 10)
    [0.5, 25.0]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Impairments", "cut_reach", "impair_vehicles", "reach_cells"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Lengths of the false vehicles a detector reports: car-sized blobs.
_GHOST_LENGTH_M = (3.8, 5.2)


@dataclass(frozen=True, slots=True)
class Impairments:
    """How a camera errs; see the module docstring for what each does and in which order.

    Attributes:
        miss_rate: chance that a vehicle in view is not detected, per vehicle and frame.
        ghost_rate: false vehicles per approach frame, on average (Poisson).
        jitter_m: standard deviation of a detected vehicle's position error, metres.
        occluder_length_m: vehicles at least this long hide the ones behind them.
        occlusion_m: metres behind an occluder's rear within which vehicles are hidden.
        reach_m: metres from the stop line the camera sees; None = the whole frame.
    """

    miss_rate: float = 0.05
    ghost_rate: float = 0.3
    jitter_m: float = 1.0
    occluder_length_m: float = 7.0
    occlusion_m: float = 10.0
    reach_m: float | None = 150.0

    def __post_init__(self) -> None:
        """Refuse values no camera could have, naming the field."""
        checks = {
            "miss_rate": (0.0 <= self.miss_rate < 1.0, "in [0, 1)"),
            "ghost_rate": (0.0 <= self.ghost_rate <= 100.0, "in [0, 100]"),
            "jitter_m": (0.0 <= self.jitter_m <= 50.0, "in [0, 50] metres"),
            "occluder_length_m": (self.occluder_length_m > 0.0, "> 0 metres"),
            "occlusion_m": (0.0 <= self.occlusion_m <= 100.0, "in [0, 100] metres"),
            "reach_m": (self.reach_m is None or self.reach_m > 0.0, "> 0 metres, or None"),
        }
        for name, (ok, expected) in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not np.isfinite(value)):
                raise ValueError(f"Impairments.{name}: expected {expected}, got {value!r}")

    @classmethod
    def none(cls) -> Impairments:
        """A perfect camera: no occlusion, misses, ghosts or jitter, and the whole frame seen."""
        return cls(miss_rate=0.0, ghost_rate=0.0, jitter_m=0.0, occlusion_m=0.0, reach_m=None)

    @classmethod
    def parse(cls, value: Impairments | Mapping[str, Any] | str | None) -> Impairments:
        """Impairments from a trainer's argument: the defaults, ``"none"``, JSON or a mapping.

        Example:
            >>> Impairments.parse('{"miss_rate": 0.1}').miss_rate
            0.1
            >>> Impairments.parse("none") == Impairments.none()
            True
        """
        if value is None:
            return cls()
        if isinstance(value, Impairments):
            return value
        if isinstance(value, str):
            if value.strip().lower() in ("none", "off", "null"):
                return cls.none()
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(
                    f"impairments: expected 'none' or a JSON object, got {value!r}"
                ) from exc
            if value is None:
                return cls.none()
        if not isinstance(value, Mapping):
            raise ValueError(f"impairments: expected a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"impairments: unknown field(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}"
            )
        settings: dict[str, Any] = {}
        for key, item in value.items():
            try:
                settings[key] = None if item is None else float(item)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"impairments.{key}: expected a number, got {item!r}") from exc
        return cls(**settings)

    def as_dict(self) -> dict[str, float | None]:
        """The settings, for lineage and JSON."""
        return dataclasses.asdict(self)

    @property
    def is_none(self) -> bool:
        """True when the camera is perfect (nothing to apply, nothing drawn)."""
        return (
            self.miss_rate == 0.0
            and self.ghost_rate == 0.0
            and self.jitter_m == 0.0
            and self.occlusion_m == 0.0
            and self.reach_m is None
        )


def _occluded(positions: F64, lanes: I64, lengths: F64, imp: Impairments) -> npt.NDArray[np.bool_]:
    """Which vehicles an occluder of their lane hides (fronts within its shadow)."""
    hidden = np.zeros(positions.size, dtype=bool)
    if imp.occlusion_m <= 0.0 or positions.size < 2:
        return hidden
    occluders = np.flatnonzero(lengths >= imp.occluder_length_m)
    if occluders.size == 0:
        return hidden
    rear = positions[occluders] + lengths[occluders]
    same_lane = lanes[None, :] == lanes[occluders][:, None]
    behind = positions[None, :] > positions[occluders][:, None]
    shadowed = positions[None, :] < (rear + imp.occlusion_m)[:, None]
    hidden = np.any(same_lane & behind & shadowed, axis=0)
    return np.asarray(hidden, dtype=bool)


def impair_vehicles(
    positions_m: F64,
    lanes: I64,
    lengths_m: F64,
    impairments: Impairments,
    rng: np.random.Generator | None,
    *,
    lane_length_m: float,
    num_lanes: int,
) -> tuple[F64, I64, F64]:
    """The vehicles a camera detects on one approach (steps 1-4 of the module docstring).

    Args:
        positions_m: front bumpers' distances to the stop line.
        lanes: lane of each vehicle.
        lengths_m: length of each vehicle.
        impairments: what to apply.
        rng: the source of misses, jitter and ghosts; may be None only when
            ``impairments`` draws nothing (no misses, ghosts or jitter).
        lane_length_m: metres of road the frame covers (where ghosts may appear).
        num_lanes: lanes of the approach (where ghosts may appear).

    Returns:
        Detected ``(positions_m, lanes, lengths_m)``; unchanged when nothing applies.

    Raises:
        ValueError: a random impairment without ``rng``.
    """
    imp = impairments
    if imp.is_none:
        return positions_m, lanes, lengths_m
    random = imp.miss_rate > 0.0 or imp.ghost_rate > 0.0 or imp.jitter_m > 0.0
    if random and rng is None:
        raise ValueError("camera impairments need rng= (a numpy Generator) for reproducibility")
    keep = ~_occluded(positions_m, lanes, lengths_m, imp)
    if imp.miss_rate > 0.0:
        assert rng is not None
        keep &= rng.random(positions_m.size) >= imp.miss_rate
    positions, lane_idx, lengths = positions_m[keep], lanes[keep], lengths_m[keep]
    if imp.jitter_m > 0.0:
        assert rng is not None
        positions = positions + rng.normal(0.0, imp.jitter_m, positions.size)
    if imp.ghost_rate > 0.0:
        assert rng is not None
        ghosts = int(rng.poisson(imp.ghost_rate))
        seen_m = lane_length_m if imp.reach_m is None else min(lane_length_m, imp.reach_m)
        positions = np.concatenate([positions, rng.uniform(0.0, seen_m, ghosts)])
        lane_idx = np.concatenate([lane_idx, rng.integers(0, num_lanes, ghosts)])
        lengths = np.concatenate([lengths, rng.uniform(*_GHOST_LENGTH_M, ghosts)])
    return positions, lane_idx.astype(np.int64), lengths


def reach_cells(impairments: Impairments, lane_length_m: float, cells: int) -> int:
    """Cells from the stop line the camera sees (all of them without a reach).

    Example:
        >>> reach_cells(Impairments(reach_m=150.0), 240.0, 64)
        40
    """
    if impairments.reach_m is None:
        return cells
    return min(cells, max(1, round(impairments.reach_m / (lane_length_m / cells))))


def cut_reach(
    image: npt.NDArray[np.float32], impairments: Impairments, lane_length_m: float
) -> npt.NDArray[np.float32]:
    """Empty the cells past the camera's reach (step 5); the last axis is the cells.

    Returns the image itself when the camera sees all of it, else a copy.
    """
    cells = image.shape[-1]
    keep = reach_cells(impairments, lane_length_m, cells)
    if keep >= cells:
        return image
    cut = image.copy()
    cut[..., keep:] = 0.0
    return cut
