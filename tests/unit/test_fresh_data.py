"""The fresh-data store: samples and labels joined on (site, ts to the ms), bounds, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.protocol import Tensor
from mesh.core._settings import MeshSettings
from mesh.models import DataSnapshot, FreshData, FreshDataError, InvalidSampleError, fresh_data


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def frame(value: float, shape: tuple[int, ...] = (1, 2, 3), dtype: str = "float32") -> Tensor:
    return Tensor.from_numpy("x", np.full(shape, value, dtype=dtype))


@pytest.fixture
def store(tmp_path: Path) -> FreshData:
    return FreshData(tmp_path / "datasets", max_samples=50, max_labels=80, clock=Clock())


def test_labels_join_samples_on_site_and_ts_to_the_millisecond(store: FreshData) -> None:
    for i in range(6):
        store.add_sample("counter", "j1", 100.0 + i / 10, "v1", [frame(float(i))])
    store.add_sample("counter", "j2", 100.0, "v2", [frame(9.0)])
    # Labels come late, in any order, with ts as JSON carried it (float noise below 1 ms).
    store.add_label("counter", "j1", 100.30000000001, [3.0, 30.0])
    store.add_label("counter", "j1", 100.1, [1.0, 10.0])
    store.add_label("counter", "j2", 100.0004, [9.0, 90.0])
    store.add_label("counter", "j1", 250.0, [0.0, 0.0])  # a frame never sampled
    store.add_label("counter", "j3", 100.0, [5.0, 5.0])  # another site's frame
    snap = store.snapshot("counter")
    assert isinstance(snap, DataSnapshot) and snap.module == "counter"
    assert (snap.rows, snap.sites, snap.skipped) == (3, ("j1", "j2"), 0)
    assert snap.path.is_file() and snap.path.suffix == ".npz"
    with np.load(snap.path) as data:  # no pickle needed
        assert data["inputs"].shape == (3, 2, 3) and data["inputs"].dtype == np.float32
        assert data["labels"].dtype == np.float32
        np.testing.assert_allclose(data["ts"], [100.0, 100.1, 100.3])
        assert list(data["sites"]) == ["j2", "j1", "j1"]
        assert list(data["versions"]) == ["v2", "v1", "v1"]
        for x, y in zip(data["inputs"], data["labels"], strict=True):
            assert float(x[0, 0]) * 10 == pytest.approx(float(y[1]))
    inputs, labels = snap.arrays()
    assert inputs.shape == (3, 2, 3) and labels.shape == (3, 2)
    stats = store.stats("counter")
    assert (stats.samples, stats.labels, stats.labelled) == (7, 5, 3)


def test_max_rows_and_since_take_the_newest(store: FreshData) -> None:
    for i in range(10):
        store.add_sample("counter", "j1", float(i), "v1", [frame(float(i))])
        store.add_label("counter", "j1", float(i), [float(i)])
    snap = store.snapshot("counter", max_rows=4)
    np.testing.assert_allclose(snap.arrays()[1][:, 0], [6, 7, 8, 9])
    snap = store.snapshot("counter", since=8.0)
    np.testing.assert_allclose(snap.arrays()[1][:, 0], [8, 9])
    with pytest.raises(FreshDataError, match=r"no labelled samples .* since 20"):
        store.snapshot("counter", since=20.0)


def test_rows_unlike_the_newest_are_left_out(store: FreshData) -> None:
    store.add_sample("counter", "j1", 1.0, "v1", [frame(1.0, shape=(1, 4))])  # old camera
    store.add_sample("counter", "j1", 2.0, "v1", [frame(2.0, dtype="float64")])
    store.add_sample("counter", "j1", 3.0, "v1", [frame(3.0)])
    store.add_sample("counter", "j1", 4.0, "v1", [frame(4.0)])
    for ts, n in ((1.0, 2), (2.0, 2), (3.0, 3), (4.0, 2)):  # 3.0's label is longer
        store.add_label("counter", "j1", ts, [1.0] * n)
    snap = store.snapshot("counter")
    assert (snap.rows, snap.skipped) == (1, 3)
    assert float(snap.arrays()[0][0, 0, 0]) == 4.0


def test_the_stores_are_bounded_oldest_first(store: FreshData) -> None:
    for i in range(120):
        store.add_sample("counter", "j1", float(i), "v1", [frame(float(i))])
        store.add_label("counter", "j1", float(i), [float(i)])
    stats = store.stats("counter")
    assert (stats.samples, stats.labels) == (50, 80)
    assert (stats.samples_dropped, stats.labels_dropped) == (70, 40)
    snap = store.snapshot("counter", max_rows=1000)
    np.testing.assert_allclose(snap.arrays()[1][:, 0], np.arange(70, 120))


def test_a_duplicate_replaces_and_a_reopened_store_keeps_its_rows(tmp_path: Path) -> None:
    store = FreshData(tmp_path, max_samples=5)
    for _ in range(3):  # QoS 1 may deliver twice
        store.add_sample("counter", "j1", 1.0, "v1", [frame(1.0)])
    store.add_label("counter", "j1", 1.0, [1.0])
    store.add_label("counter", "j1", 1.0, [2.0])  # a corrected label
    store.close()
    again = FreshData(tmp_path, max_samples=5)
    assert again.stats("counter").samples == 1
    snap = again.snapshot("counter")
    assert snap.rows == 1 and float(snap.arrays()[1][0, 0]) == 2.0
    for i in range(10):
        again.add_sample("counter", "j1", 10.0 + i, "v1", [frame(1.0)])
    assert again.stats("counter").samples == 5  # the bound counts the rows already there
    assert again.modules() == ["counter"]


def test_snapshots_are_new_each_call_and_only_the_newest_are_kept(store: FreshData) -> None:
    store.add_sample("counter", "j1", 1.0, "v1", [frame(1.0)])
    store.add_label("counter", "j1", 1.0, [1.0])
    snaps = [store.snapshot("counter") for _ in range(12)]
    assert len({s.id for s in snaps}) == 12
    files = sorted(p.name for p in (store.root / "counter" / "snapshots").iterdir())
    assert len(files) == 8 and snaps[-1].path.name in files and snaps[0].path.name not in files


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.add_sample("../x", "j1", 1.0, "v1", [frame(1.0)]), "module: expected"),
        (lambda s: s.add_sample("counter", "j/1", 1.0, "v1", [frame(1.0)]), "site: expected"),
        (lambda s: s.add_sample("counter", "j1", float("nan"), "v1", [frame(1.0)]), "ts: exp"),
        (lambda s: s.add_sample("counter", "j1", "1", "v1", [frame(1.0)]), "ts: expected"),
        (lambda s: s.add_sample("counter", "j1", 1.0, "", [frame(1.0)]), "version: expected"),
        (lambda s: s.add_sample("counter", "j1", 1.0, "v1", []), "tensors: expected"),
        (
            lambda s: s.add_sample("counter", "j1", 1.0, "v1", [Tensor("x", "float32", (2,), b"")]),
            "tensors: tensor 'x'",
        ),
        (lambda s: s.add_label("counter", "j1", 1.0, []), "values: expected"),
        (lambda s: s.add_label("counter", "j1", 1.0, "12"), "values: expected"),
        (lambda s: s.add_label("counter", "j1", 1.0, [1.0, float("inf")]), "values: expected"),
        (lambda s: s.add_label("counter", "j1", 1.0, [True]), "values: expected"),
        (lambda s: s.snapshot("counter", max_rows=0), "max_rows: expected"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    store: FreshData, call: object, message: str
) -> None:
    with pytest.raises(InvalidSampleError, match=message):
        call(store)  # type: ignore[operator]
    assert store.modules() in ([], ["counter"])
    if store.modules():
        stats = store.stats("counter")
        assert (stats.samples, stats.labels) == (0, 0)


def test_no_labelled_samples_says_what_there_is(store: FreshData) -> None:
    store.add_sample("counter", "j1", 1.0, "v1", [frame(1.0)])
    store.add_label("counter", "j1", 1.5, [1.0])
    with pytest.raises(FreshDataError, match=r"1 samples, 1 labels") as info:
        store.snapshot("counter")
    assert info.value.http_status == 404
    assert not (store.root / "counter" / "snapshots").exists()


def test_fresh_data_reads_the_mesh_data_dir(tmp_path: Path) -> None:
    settings = MeshSettings(data_dir=tmp_path)
    store = FreshData.open(settings)
    store.add_sample("counter", "j1", 5.0, "v1", [frame(5.0, shape=(1, 1, 4, 4), dtype="uint8")])
    store.add_label("counter", "j1", 5.0, [2.0, 1.0])
    snap = fresh_data("counter", settings=settings)
    assert snap.path.is_relative_to(tmp_path / "datasets" / "counter")
    inputs, labels = snap.arrays()
    assert inputs.shape == (1, 1, 4, 4) and inputs.dtype == np.uint8
    assert json.dumps(labels.tolist()) == "[[2.0, 1.0]]"
