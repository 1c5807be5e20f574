"""The traffic bench's cameras: impaired frames in, the count error per approach out.

``bench/traffic.py`` renders each junction's camera frame through the cameras'
impairments (:func:`functions.traffic.sim.camera.camera_view`: occlusion,
missed and ghost detections, jitter, limited reach; the defaults of
:class:`functions.traffic.impairments.Impairments` unless ``--no-impairments``),
trains its counter on frames impaired the same way (:func:`counter_cache_name`
keeps one cached counter per setting), and scores the counter's counts against
SUMO's exact ones per approach (:class:`functions.traffic.sim.count_error.CountError`);
:func:`count_error_by_level` and :func:`print_count_error` report them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from functions.traffic.impairments import Impairments
from functions.traffic.occupancy import DEFAULT_CELLS, DEFAULT_LANE_LENGTH_M, count_visible
from functions.traffic.sim.camera import camera_view
from functions.traffic.sim.count_error import describe_summary, merge_summaries

__all__ = [
    "count_error_by_level",
    "counter_cache_name",
    "ensure_counter",
    "impaired_frames",
    "print_count_error",
]


def impaired_frames(
    approaches: Sequence[Any],
    impairments: Impairments,
    rng: np.random.Generator,
    *,
    segments_m: Sequence[float],
    noise_std: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """What the camera sees (``[1 + K, A, lanes, cells]``) and the exact counts ``[1 + K, A]``.

    The exact counts are ``camera_frames``' (segments cut at whole cells); with
    :meth:`Impairments.none` both are exactly ``camera_frames``' output.
    """
    frames = camera_view(approaches, impairments, rng, segments_m=segments_m, noise_std=noise_std)
    cell_m = DEFAULT_LANE_LENGTH_M / DEFAULT_CELLS
    reaches = [DEFAULT_LANE_LENGTH_M] + [max(1, round(m / cell_m)) * cell_m for m in segments_m]
    exact = np.asarray(
        [[count_visible(a.positions_m, r) for a in approaches] for r in reaches], dtype=np.float32
    )
    return frames, exact


def counter_cache_name(impairments: Impairments) -> str:
    """The cached counter's file name: one per impairment setting (``counter.onnx`` for none).

    Example:
        >>> counter_cache_name(Impairments.none())
        'counter.onnx'
    """
    if impairments.is_none:
        return "counter.onnx"
    digest = hashlib.sha256(json.dumps(impairments.as_dict(), sort_keys=True).encode())
    return f"counter-impaired-{digest.hexdigest()[:10]}.onnx"


def ensure_counter(workdir: Path, impairments: Impairments) -> str:
    """A trained counter ONNX in the work directory (trained once, ~1 minute, then reused).

    Bigger than ``train_counter``'s defaults: a counter that reads an empty
    approach as half a vehicle makes phantom demand on every empty road. It
    trains on frames with the cameras' ``impairments``; one file per setting.
    """
    target = workdir / counter_cache_name(impairments)
    if target.is_file():
        return str(target)
    from functions.traffic.app import train_counter

    print(f"training a vehicle counter (cached as {target}) ...", flush=True)
    ref = train_counter(
        out_dir=str(workdir / "exports"),
        epochs=12,
        train_size=8192,
        val_size=512,
        seed=0,
        impairments=impairments.as_dict(),
    )
    Path(ref["onnx_path"]).replace(target)
    print(f"  counter val_mae={ref['metrics']['val_mae']:.2f}", flush=True)
    return str(target)


def count_error_by_level(
    rows: Sequence[Mapping[str, Any]], levels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The adaptive runs' count error of each level, merged over seeds (frame weighted)."""
    out: dict[str, dict[str, Any]] = {}
    for level in levels:
        runs = [
            r["count_error"]
            for r in rows
            if r["level"] == level and r["controller"] == "adaptive" and "count_error" in r
        ]
        if runs:
            out[level] = merge_summaries(runs)
    return out


def print_count_error(by_level: Mapping[str, Mapping[str, Any]], grid: str) -> None:
    """One line per level: the count MAE per approach, by approach, and the bias."""
    for level, summary in by_level.items():
        print(f"{grid} {level:<12}{describe_summary(summary)}")
