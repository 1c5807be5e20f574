"""When a traffic camera changes: re-aimed, re-exposed, hazy — the counter's data drifts.

A camera that is knocked or re-mounted, whose exposure changes, or that looks
through rain sees the same vehicles differently from the frames the counter
learnt on. :class:`CameraDrift` is such a change, applied to a rendered frame
(:func:`drift_frames`) in this order:

1. **shift** — the view slides ``shift_cells`` cells upstream (the camera is
   re-aimed: the stop line is no longer in the first cell);
2. **exposure** — every seen cell becomes ``gain * value + haze`` (a dimmer
   image over a bright background: glare, rain, a dirty lens);
3. **noise** — Gaussian noise of ``noise_std`` on every seen cell.

Cells the camera does not see (past its reach, past a segment's cut) stay
empty. The change is systematic: the information is all still in the frame, so
a counter trained on frames from the changed camera counts well again, while
the counter trained on the old ones misreads the haze as vehicles.
:meth:`CameraDrift.at` scales a change by a severity in ``[0, 1]``; the
traffic scenario's ``drift`` fault uses it. Counts (the truth) never change.

Example:
    >>> frame = np.zeros((1, 1, 1, 8), np.float32); frame[..., 0] = 1.0
    >>> drift = CameraDrift(gain=0.5, haze=0.2, shift_cells=1, noise_std=0.0)
    >>> drift_frames(frame, drift, None, visible_cells=[4])[0, 0, 0].astype(float).round(2).tolist()
    [0.2, 0.7, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CameraDrift", "drift_frames"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CameraDrift:
    """How a camera's view changed; see the module docstring for each step.

    Attributes:
        gain: factor on every seen cell's value (exposure), in ``(0, 1]``.
        haze: value added to every seen cell (a bright background), in ``[0, 1)``.
        shift_cells: cells the view slides upstream (re-aimed), ``>= 0``.
        noise_std: Gaussian noise on every seen cell, ``>= 0``.
    """

    gain: float = 0.55
    haze: float = 0.3
    shift_cells: int = 4
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        """Refuse what no camera could do, naming the field."""
        checks = {
            "gain": (0.0 < self.gain <= 1.0, "in (0, 1]"),
            "haze": (0.0 <= self.haze < 1.0, "in [0, 1)"),
            "shift_cells": (0 <= self.shift_cells <= 64, "in [0, 64]"),
            "noise_std": (0.0 <= self.noise_std <= 1.0, "in [0, 1]"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f"CameraDrift.{name}: expected {expected}, got {getattr(self, name)!r}"
                )

    @classmethod
    def at(cls, severity: float) -> CameraDrift:
        """The default change scaled by ``severity`` (0: none, 1: the full change).

        Example:
            >>> CameraDrift.at(0.5)
            CameraDrift(gain=0.775, haze=0.15, shift_cells=2, noise_std=0.025)

        Raises:
            ValueError: ``severity`` outside ``[0, 1]``.
        """
        if not 0.0 <= severity <= 1.0:
            raise ValueError(f"drift severity: expected a number in [0, 1], got {severity!r}")
        full = cls()
        return cls(
            gain=round(1.0 - (1.0 - full.gain) * severity, 6),
            haze=round(full.haze * severity, 6),
            shift_cells=round(full.shift_cells * severity),
            noise_std=round(full.noise_std * severity, 6),
        )

    @property
    def is_none(self) -> bool:
        """True when the view is unchanged (nothing applied, nothing drawn)."""
        return (
            self.gain == 1.0
            and self.haze == 0.0
            and self.shift_cells == 0
            and self.noise_std == 0.0
        )

    def as_dict(self) -> dict[str, float]:
        """The settings, for lineage and JSON."""
        return {k: float(v) for k, v in asdict(self).items()}


def drift_frames(
    frames: F32,
    drift: CameraDrift,
    rng: np.random.Generator | None,
    *,
    visible_cells: Sequence[int] | None = None,
) -> F32:
    """``frames [R, A, lanes, cells]`` as the changed camera sees them (a new array).

    Args:
        frames: rendered frames; the last axis is the cells from the stop line.
        drift: the change.
        rng: the noise's source; may be None when ``drift.noise_std`` is 0.
        visible_cells: per row of ``frames``, how many cells from the stop line
            the camera sees (the rest stay empty); None = all of them.

    Raises:
        ValueError: noise without ``rng``, or not one visible count per row.
    """
    out = np.array(frames, dtype=np.float32, copy=True)
    if drift.is_none:
        return out
    rows, cells = out.shape[0], out.shape[-1]
    visible = (
        [cells] * rows if visible_cells is None else [min(cells, int(v)) for v in visible_cells]
    )
    if len(visible) != rows:
        raise ValueError(f"visible_cells: expected one per frame row ({rows}), got {len(visible)}")
    if drift.noise_std > 0.0 and rng is None:
        raise ValueError("camera drift noise needs rng= (a numpy Generator) for reproducibility")
    shift = min(drift.shift_cells, cells)
    if shift:
        out[..., shift:] = out[..., : cells - shift].copy()
        out[..., :shift] = 0.0
    seen = np.arange(cells)[None, :] < np.asarray(visible)[:, None]  # [R, cells]
    mask = seen[:, None, None, :]
    changed = drift.gain * out + drift.haze
    if drift.noise_std > 0.0:
        assert rng is not None
        changed = changed + rng.normal(0.0, drift.noise_std, out.shape)
    return np.where(mask, np.clip(changed, 0.0, 1.0), 0.0).astype(np.float32)
