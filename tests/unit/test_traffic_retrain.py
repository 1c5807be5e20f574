"""Retraining the counter on a drifted camera's fresh frames: better there, registered with lineage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from functions.traffic.app import ModelRef, retrain_counter, train_counter
from functions.traffic.camera_drift import CameraDrift, drift_frames
from functions.traffic.impairments import Impairments, reach_cells
from functions.traffic.occupancy import synthetic_dataset
from functions.traffic.retrain import drift_event, fresh_frames, parent_error
from mesh.models._registry import ModelRegistry

pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning"
)

EVENT = {
    "topic": "lifecycle/drift/counter",
    "payload": {
        "module": "counter",
        "model": "vehicle-counter",
        "version": "v1",
        "site": "A0",
        "score": 4.0,
    },
}


def _drifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames from a changed camera (the renderer's, impaired as by default) and their counts."""
    imp = Impairments()
    data = synthetic_dataset(n, seed=seed, impairments=imp)
    visible = [reach_cells(imp, 240.0, 64)] * n
    rng = np.random.default_rng(seed)
    return drift_frames(data.images, CameraDrift.at(0.8), rng, visible_cells=visible), data.counts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mesh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MESH_DATA_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def parent(data_dir: Path) -> ModelRef:
    return train_counter(epochs=4, train_size=1024, val_size=128, register=True, run_id="run-1")


@pytest.fixture(scope="module")
def fresh(data_dir: Path) -> Path:
    images, counts = _drifted(480, seed=31)
    # As the fresh-data store snapshots them: the camera's whole batch per sample.
    batches = np.stack([images, images], axis=1)
    path = data_dir / "fresh.npz"
    np.savez(path, inputs=batches, labels=np.concatenate([counts, counts], axis=1))
    return path


def test_a_counter_retrained_on_drifted_frames_counts_them_better(
    parent: ModelRef, fresh: Path
) -> None:
    ref = retrain_counter(message=EVENT, data=str(fresh), epochs=6, run_id="run-2")
    assert ref["registered_version"] == "v2"
    assert ref["metrics"]["val_mae"] < ref["metrics"]["parent_val_mae"]
    held_images, held_counts = _drifted(256, seed=77)  # frames neither has seen
    before = parent_error(parent["onnx_path"], held_images, held_counts)
    after = parent_error(ref["onnx_path"], held_images, held_counts)
    assert after < 0.6 * before, (before, after)
    registry = ModelRegistry.open()
    try:
        version = registry.get("vehicle-counter", "v2")
    finally:
        registry.close()
    assert version.stage == "candidate" and version.lineage.run_id == "run-2"
    assert version.lineage.data_id is not None and version.lineage.data_id.startswith("fresh-file-")
    extra = version.lineage.extra
    assert extra["parent"] == "v1" and extra["warm_start"] is True
    assert extra["drift"] == EVENT["payload"]
    assert extra["mix"]["fresh"] == 360 and extra["mix"]["synthetic"] == 360
    assert extra["mix"]["held_out"] == 120


def test_too_few_fresh_frames_or_another_models_drift_register_nothing(
    parent: ModelRef, fresh: Path
) -> None:
    with pytest.raises(ValueError, match="480 labelled fresh frames, need at least 1000"):
        retrain_counter(message=EVENT, data=str(fresh), min_rows=1000)
    other = {"payload": {**EVENT["payload"], "model": "flow-forecaster"}}
    with pytest.raises(ValueError, match="a drift event of model 'flow-forecaster'"):
        retrain_counter(message=other, data=str(fresh))
    registry = ModelRegistry.open()
    try:
        assert [v.version for v in registry.versions("vehicle-counter")] in (["v1"], ["v1", "v2"])
    finally:
        registry.close()


def test_fresh_frames_refuse_what_is_not_a_camera_snapshot(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((3, 4, 2, 64), np.float32))
    with pytest.raises(ValueError, match=r"bad.npz: no labels array"):
        fresh_frames(bad)
    np.savez(bad, inputs=np.zeros((3, 5, 2, 64), np.float32), labels=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"inputs: expected \[N, 4, lanes, cells\]"):
        fresh_frames(bad)
    np.savez(bad, inputs=np.zeros((3, 4, 2, 64), np.float32), labels=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"labels: expected \[3, >= 4\]"):
        fresh_frames(bad)
    np.savez(bad, inputs=np.full((1, 4, 2, 64), np.nan, np.float32), labels=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="must be finite"):
        fresh_frames(bad)


def test_the_drift_event_is_read_from_the_trigger_message() -> None:
    assert drift_event(EVENT) == EVENT["payload"]
    assert drift_event(EVENT["payload"]) == EVENT["payload"]
    assert drift_event("nonsense") == {}


def test_the_frames_the_parent_misses_weigh_more_and_symmetric_copies_are_added() -> None:
    from functions.traffic.retrain import RetrainPlan

    rng = np.random.default_rng(0)
    images = rng.random((20, 4, 2, 16), dtype=np.float32)
    counts = rng.integers(0, 5, (20, 4)).astype(np.float32)
    errors = np.zeros(20, np.float32)
    errors[:4] = 9.0  # four drifted frames: three trained on, the last held out
    plan = RetrainPlan((images, counts), "d", None, {}, synthetic_ratio=0.0, parent_errors=errors)
    (x, y), (x_held, _), mix = plan.split()
    assert mix["fresh"] == 15 and mix["hard"] == 3 and mix["fresh_rows"] == (15 + 3 * 3) * 8
    assert len(x) == len(y) == mix["fresh_rows"] and len(x_held) == 5
    assert np.array_equal(x_held[0], images[3])  # the last drifted frame is among the held out
    # every copy keeps its counts: a lane swap changes none, a rotation moves them with the arms
    assert sorted(y[:, 0].tolist()) == sorted(np.roll(y, 1, axis=1)[:, 0].tolist())
    plain = RetrainPlan((images, counts), "d", None, {}, synthetic_ratio=0.0, symmetric=False)
    assert len(plain.split()[0][0]) == 15  # no parent errors, no symmetry: as sent
