from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from functions.traffic import models  # noqa: E402
from functions.traffic.app import (  # noqa: E402
    ModelRef,
    VehicleCounter,
    app,
    counter_trial,
    train_counter,
    train_forecaster,
)
from functions.traffic.forecast_data import lagged_windows, synthetic_flows  # noqa: E402
from functions.traffic.impairments import Impairments  # noqa: E402
from functions.traffic.occupancy import synthetic_dataset  # noqa: E402
from mesh.models._artifacts import sha256_file  # noqa: E402
from mesh.models._export import export_onnx  # noqa: E402
from mesh.models._registry import ModelRegistry  # noqa: E402
from mesh.sdk import FunctionKind, TuneSpec  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mesh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MESH_DATA_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def counter_ref(data_dir: Path) -> ModelRef:
    return train_counter(epochs=4, train_size=768, val_size=128, register=True, run_id="run-7")


def test_train_counter_reaches_a_sane_mae(counter_ref: ModelRef) -> None:
    # Predicting the mean count scores ~17 vehicles per approach; four tiny epochs do far better.
    assert counter_ref["metrics"]["val_mae"] < 4.0
    assert 100_000 <= counter_ref["num_parameters"] <= 400_000
    assert counter_ref["device"] == "cpu"
    assert counter_ref["hyperparameters"]["epochs"] == 4
    # It trained on frames impaired as the cameras are by default (it learns through them).
    assert counter_ref["hyperparameters"]["impairments"] == Impairments().as_dict()
    assert counter_ref["code_version"].startswith("traffic-")
    assert counter_ref["data_id"].startswith("synthetic-occupancy-")


def test_exported_counter_matches_the_ref_and_counts(counter_ref: ModelRef) -> None:
    path = Path(counter_ref["onnx_path"])
    assert path.is_file() and sha256_file(path) == counter_ref["sha256"]
    assert counter_ref["opset"] == 18 and counter_ref["max_abs_error"] < 1e-3
    # Frames as its cameras see them (the default impairments it trained on).
    held_out = synthetic_dataset(64, seed=424242, impairments=Impairments())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [counts] = session.run(None, {"occupancy": held_out.images})
    assert counts.shape == (64, 4)
    assert float(np.abs(counts - held_out.counts).mean()) < 5.0


def test_train_counter_registered_a_candidate(counter_ref: ModelRef, data_dir: Path) -> None:
    assert counter_ref["registered_version"] == "v1"
    registry = ModelRegistry.open()
    try:
        version = registry.get("vehicle-counter", "v1")
    finally:
        registry.close()
    assert version.sha256 == counter_ref["sha256"] and version.stage == "candidate"
    assert version.metric is not None and version.metric.name == "val_mae"
    assert version.lineage.run_id == "run-7"
    assert version.lineage.data_id == counter_ref["data_id"]
    assert version.signature.inputs[0].shape == ("batch", 4, 2, 64)


def test_counter_onnx_output_matches_torch(tmp_path: Path) -> None:
    fit, data = counter_trial({"epochs": 1, "train_size": 64, "val_size": 16, "width": 16})
    x = torch.from_numpy(data["val"].images)
    report = export_onnx(
        fit.model,
        x[:2],
        tmp_path / "c.onnx",
        input_names=["occupancy"],
        parity_inputs=[x[:1], x[1:]],
        tolerance=1e-3,
    )
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    batch7 = x[:7]
    [got] = session.run(None, {"occupancy": batch7.numpy()})
    with torch.no_grad():
        expected = fit.model(batch7).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert report.max_abs_error <= 1e-3


def test_trial_reports_every_epoch_for_asha() -> None:
    reports: list[tuple[int, Mapping[str, float]]] = []
    fit, _ = counter_trial(
        {"epochs": 2, "train_size": 32, "val_size": 8, "width": 16},
        on_epoch=lambda e, m: reports.append((e, dict(m))),
    )
    assert [e for e, _ in reports] == [1, 2]
    assert all({"val_mae", "train_loss"} <= set(m) for _, m in reports)
    assert fit.val_mae == min(m["val_mae"] for _, m in reports)


def test_tune_counter_is_declared_for_asha_by_val_mae() -> None:
    spec = app.functions["tune_counter"].spec
    assert isinstance(spec, TuneSpec) and spec.kind is FunctionKind.TUNE
    assert (spec.metric, spec.mode, spec.scheduler, spec.tier) == (
        "val_mae",
        "min",
        "asha",
        "cloud",
    )
    epochs = spec.search_space["epochs"]  # a constant, not a Domain
    assert isinstance(epochs, int) and spec.max_iterations >= epochs
    assert app.functions["train_counter"].spec.tier == "cloud"
    module = app.modules["VehicleCounter"].spec
    assert module.model == "vehicle-counter" and module.qos.p95_latency_ms == 20


def test_train_forecaster_beats_persistence(tmp_path: Path) -> None:
    ref = train_forecaster(out_dir=str(tmp_path), minutes=960, epochs=8)
    assert Path(ref["onnx_path"]).parent == tmp_path
    assert ref["metrics"]["val_mae"] < ref["metrics"]["persistence_mae"]
    assert ref["max_abs_error"] < 1e-3 and ref["registered_version"] is None


def test_flow_windows_line_up() -> None:
    series = synthetic_flows(30, seed=1)
    assert series.shape == (30, 4) and (series >= 0).all()
    assert (synthetic_flows(30, seed=1) == series).all()
    x, y = lagged_windows(series, 8)
    assert x.shape == (22, 4, 8) and y.shape == (22, 4)
    assert (x[0, :, -1] == series[7]).all() and (y[0] == series[8]).all()
    with pytest.raises(ValueError, match="more than 8 minutes"):
        lagged_windows(series[:8], 8)


def test_vehicle_counter_module_pre_and_postprocess() -> None:
    module = VehicleCounter()
    frame = synthetic_dataset(1, seed=2).images[0]
    feeds = module.preprocess(frame)
    assert feeds["occupancy"].shape == (1, 4, 2, 64) and feeds["occupancy"].dtype == np.float32
    assert module.preprocess({"occupancy": frame.tolist()})["occupancy"].shape == (1, 4, 2, 64)
    with pytest.raises(ValueError, match=r"expected an occupancy frame of shape \[4, 2, 64\]"):
        module.preprocess(np.zeros((4, 64)))
    outputs = [np.array([[3.4, -0.2, 11.6, 0.5]], dtype=np.float32)]
    assert module.postprocess(outputs) == [{"north": 3, "east": 0, "south": 12, "west": 1}]
    assert module.postprocess({"counts": outputs[0]}) == module.postprocess(outputs[0])


def test_models_have_the_documented_sizes() -> None:
    assert 200_000 < models.count_parameters(models.vehicle_counter()) < 400_000
    assert 100_000 < models.count_parameters(models.vehicle_counter(width=16)) < 200_000
    model = models.flow_forecaster()
    assert model(torch.zeros(3, 4, 8)).shape == (3, 4)
