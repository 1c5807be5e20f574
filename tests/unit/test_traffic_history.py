"""The traffic history as training data: CSVs -> per-junction series -> forecaster windows."""

from __future__ import annotations

import csv
import inspect
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from functions.traffic.app import train_forecaster
from functions.traffic.forecast_data import CountSeries, history_windows, read_history
from functions.traffic.occupancy import APPROACHES
from functions.traffic.sim.history import history_days

ROOT = Path(__file__).resolve().parents[2]


def value(site: int, day: int, minute: int, approach: int) -> float:
    """A count that says where it came from: site, day, minute and approach."""
    return 1000.0 * site + 100.0 * day + minute + approach / 10.0


def minute(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The minute a :func:`value` came from."""
    return np.round(np.asarray(v, np.float64) % 100.0)


def origin(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The site and day a :func:`value` came from."""
    return np.floor(np.asarray(v, np.float64) / 100.0)


def write_history(
    directory: Path, sites: int = 2, days: int = 2, minutes: int = 10, *, with_day: bool = True
) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(sites):
        with (directory / f"counts-J{s}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["site", *(["day"] if with_day else []), "minute", "approach", "count"])
            for d in range(days):
                for m in range(minutes):
                    for k, a in enumerate(APPROACHES):
                        day = [d] if with_day else []
                        writer.writerow([f"J{s}", *day, m, a, value(s, d, m, k)])
    return str(directory / "counts-*.csv")


def test_each_site_and_day_is_one_series_in_approach_order(tmp_path: Path) -> None:
    series = read_history(write_history(tmp_path))
    assert [(s.site, s.day) for s in series] == [("J0", 0), ("J0", 1), ("J1", 0), ("J1", 1)]
    for s in series:
        site = int(s.site[1:])
        assert s.counts.shape == (10, 4) and s.counts.dtype == np.float32
        assert s.first_minute == 0 and s.source.endswith(f"counts-{s.site}.csv")
        assert s.counts[7, 2] == pytest.approx(value(site, s.day, 7, 2))


def test_a_history_without_days_is_one_day(tmp_path: Path) -> None:
    series = read_history(write_history(tmp_path, days=1, with_day=False))
    assert [(s.site, s.day, s.counts.shape) for s in series] == [
        ("J0", 0, (10, 4)),
        ("J1", 0, (10, 4)),
    ]


def test_windows_hold_out_the_later_part_of_every_series(tmp_path: Path) -> None:
    series = read_history(write_history(tmp_path))
    x_train, y_train, x_val, y_val = history_windows(series, lags=4)
    # Each series: 10 - 4 = 6 windows; the last ceil(6 / 4) = 2 held out.
    assert x_train.shape == (16, 4, 4) and y_train.shape == (16, 4)
    assert x_val.shape == (8, 4, 4) and y_val.shape == (8, 4)
    # Windows are oldest first and predict the minute after their last.
    assert (minute(x_train[:, 0, 1:]) - minute(x_train[:, 0, :-1]) == 1).all()
    assert (minute(y_train[:, 0]) == minute(x_train[:, 0, -1]) + 1).all()
    # Approaches on the second axis, in order.
    assert np.allclose(x_train[0, :, 0] % 1.0, [0.0, 0.1, 0.2, 0.3], atol=1e-3)
    # Held out: targets 8 and 9 of every series, never seen as a training target.
    assert sorted(set(minute(y_val[:, 0]).tolist())) == [8.0, 9.0]
    assert minute(y_train[:, 0]).max() == 7.0
    # Every (site, day) contributes; no window mixes two series.
    assert len(set(origin(y_val[:, 0]).tolist())) == 4
    assert (origin(x_train) == origin(y_train)[:, :, None]).all()


def test_short_series_are_skipped_and_too_little_history_is_an_error(tmp_path: Path) -> None:
    long = read_history(write_history(tmp_path))
    short = CountSeries("short.csv", "J9", 0, 0, np.ones((3, 4), np.float32))
    x_train, _, x_val, _ = history_windows([*long, short], lags=4)
    assert len(x_train) == 16 and len(x_val) == 8  # the short one gave nothing
    with pytest.raises(ValueError, match=r"more than 5 minutes .* 4 lags; the longest of 1 has 3"):
        history_windows([short], lags=4)
    with pytest.raises(ValueError, match="holdout"):
        history_windows(long, lags=4, holdout=1.0)


def test_no_matching_file_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing-*.csv")
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        read_history(pattern)


@pytest.mark.parametrize(
    ("header", "row", "problem"),
    [
        ("site,minute,count", None, "missing column(s) approach"),
        ("site,minute,approach,count", "J0,zero,north,1.0", ":2: not a number"),
        ("site,minute,approach,count", "J0,0,up,1.0", ":2: unknown approach 'up'"),
        ("site,minute,approach,count", "J0,0,north,-1", ":2: count must be finite and >= 0"),
        ("site,minute,approach,count", "J0,0,north,nan", ":2: count must be finite"),
        ("site,minute,approach,count", "J0,0,north,1.0", "site J0 day 0 has no east count for"),
    ],
)
def test_a_bad_file_is_named_with_the_problem(
    tmp_path: Path, header: str, row: str | None, problem: str
) -> None:
    write_history(tmp_path, sites=1)  # a good file next to the bad one
    bad = tmp_path / "counts-bad.csv"
    bad.write_text(header + "\n" + (row + "\n" if row else ""))
    with pytest.raises(ValueError, match=re.escape(f"{bad}") + ".*" + re.escape(problem)):
        read_history(str(tmp_path / "counts-*.csv"))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        train_forecaster(out_dir=str(tmp_path / "out"), history=str(bad), epochs=1)


def test_train_forecaster_learns_the_history_and_reports_persistence(tmp_path: Path) -> None:
    # A steady climb per approach: persistence is always a minute behind.
    for s in range(3):
        with (tmp_path / f"counts-J{s}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["site", "day", "minute", "approach", "count"])
            for d in range(4):
                for m in range(16):
                    for k, a in enumerate(APPROACHES):
                        writer.writerow([f"J{s}", d, m, a, 2.0 + (k + 1) * 0.5 * m + d])
    ref = train_forecaster(
        out_dir=str(tmp_path / "out"),
        history=str(tmp_path / "counts-*.csv"),
        lags=3,
        epochs=60,
        lr=1e-2,
        hidden=16,
    )
    metrics = ref["metrics"]
    # 12 series of 16 minutes: 13 windows each, the last 4 held out.
    assert metrics["train_windows"] == 12 * 9 and metrics["val_windows"] == 12 * 4
    assert metrics["persistence_mae"] == pytest.approx(1.25, abs=1e-4)  # mean step (k+1)/2
    assert metrics["val_mae"] < metrics["persistence_mae"]
    assert ref["data_id"].startswith("traffic-history-")
    assert ref["hyperparameters"]["lags"] == 3 and ref["hyperparameters"]["series"] == 12
    assert Path(ref["onnx_path"]).is_file() and ref["max_abs_error"] < 1e-3


def test_the_traffic_scenario_trains_the_forecaster_on_its_history() -> None:
    doc = yaml.safe_load((ROOT / "scenarios" / "traffic.yaml").read_text())
    module = next(m for m in doc["modules"] if m["name"] == "forecaster")
    assert module["model"]["train"] == "functions.traffic.app:train_forecaster"
    args = module["model"]["args"]
    assert args["history"] == "{history}/counts-*.csv"
    inspect.signature(train_forecaster).bind(**args)  # every argument is one it takes


def test_history_days_cover_two_hours_within_bounds() -> None:
    assert history_days(600.0) == 12
    assert history_days(3600.0) == 2
    assert history_days(120.0) == 12  # capped
    assert history_days(86_400.0) == 1
    with pytest.raises(ValueError, match="horizon_s"):
        history_days(0.0)
