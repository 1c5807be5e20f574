"""The traffic app: train, tune, export and serve the junction models.

* ``train_counter`` / ``train_forecaster`` (cloud): fit (the counter on
  synthetic frames; the forecaster on a scenario's recorded history or on
  synthetic flows, see :mod:`functions.traffic.forecast_data`), export ONNX with a parity
  check, optionally register the result as a candidate version; they return a
  :class:`ModelRef` (a JSON-able dict).
* ``tune_counter`` (cloud): Ray Tune with ASHA over the counter's learning rate
  and width, selecting by ``val_mae``.
* ``retrain_counter`` (cloud): fired by a drift event of the counter, retrain
  it on the fresh frames its cameras sent, warm-started from the served
  version, and register the result as a candidate when it errs less
  (:mod:`functions.traffic.retrain`).
* ``VehicleCounter``: the inference module serving ``vehicle-counter`` with a
  20 ms p95 target; the placement engine decides where. Its drift check
  compares its counts with the ground truth on ``traffic/{site}/truth``; a
  candidate is tried on a quarter of the sites before it replaces production.

Sizes are parameters and the defaults are small, so a run takes seconds on a
CPU; training uses CUDA when the node has a GPU.

Example:
    >>> ref = train_counter(out_dir="/tmp/m", train_size=512, epochs=3)  # doctest: +SKIP
    >>> ref["metrics"]["val_mae"] < 3, ref["onnx_path"]                   # doctest: +SKIP
    (True, '/tmp/m/vehicle-counter-....onnx')
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

import mesh
from mesh import Canary, Drift, Mesh, QoS, Resources
from mesh.sdk import drift_topic

from . import models
from .forecast_data import history_windows, read_history, synthetic_windows
from .impairments import Impairments
from .occupancy import APPROACHES, DEFAULT_CELLS, DEFAULT_LANES, synthetic_dataset

__all__ = [
    "COUNTER_MODEL",
    "FORECASTER_MODEL",
    "ModelRef",
    "VehicleCounter",
    "app",
    "code_version",
    "counter_trial",
    "demand_profiles",
    "retrain_counter",
    "train_counter",
    "train_forecaster",
    "tune_counter",
]

logger = logging.getLogger(__name__)

app = Mesh("traffic")

COUNTER_MODEL = "vehicle-counter"
FORECASTER_MODEL = "flow-forecaster"
TRAIN_CPUS = 1.0
#: Parity tolerance: counts are O(10..70), so float32 noise is ~1e-5.
COUNTER_TOLERANCE = 1e-3
FORECASTER_TOLERANCE = 1e-3


class ModelRef(TypedDict):
    """What a training function returns: where the exported model is and how good it is."""

    model: str
    onnx_path: str
    sha256: str
    opset: int
    max_abs_error: float
    code_version: str
    data_id: str
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    num_parameters: int
    device: str
    registered_version: str | None


@cache
def code_version() -> str:
    """The models' code version: a digest of this module, the models, their data and renderer."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("app.py", "forecast_data.py", "impairments.py", "models.py", "occupancy.py"):
        digest.update((here / name).read_bytes())
    return f"traffic-{digest.hexdigest()[:12]}"


def _default_out_dir() -> Path:
    return mesh.MeshSettings().data_dir / "exports"


def _register(ref: ModelRef, metric: str, mode: str, run_id: str | None) -> str:
    from mesh.models import Lineage, ModelRegistry, SelectionMetric

    registry = ModelRegistry.open()
    try:
        version = registry.register(
            ref["model"],
            Path(ref["onnx_path"]),
            code_version=ref["code_version"],
            metric=SelectionMetric(
                metric, ref["metrics"][metric], "min" if mode == "min" else "max"
            ),
            lineage=Lineage(
                run_id=run_id,
                data_id=ref["data_id"],
                hyperparameters=ref["hyperparameters"],
                extra={
                    "max_abs_error": ref["max_abs_error"],
                    "device": ref["device"],
                    "num_parameters": ref["num_parameters"],
                },
            ),
        )
    finally:
        registry.close()
    return version.version


# -- the vehicle counter ----------------------------------------------------------


def _reserved_cpus(function: str) -> float:
    """CPUs the function's spec reserves: torch gets as many threads, no more."""
    return app.functions[function].spec.resources.cpus


def counter_trial(
    config: Mapping[str, Any],
    *,
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
    cpus: float | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the counter as ``config`` says; returns the fit and the data's lineage.

    ``config`` keys (all optional): ``lr``, ``width``, ``hidden``, ``epochs``,
    ``batch_size``, ``train_size``, ``val_size``, ``seed``, ``lanes``, ``cells``,
    ``impairments`` (what :meth:`Impairments.parse` takes; default: the cameras'
    defaults). Every training and held-out frame draws its own impairments, so
    the counter learns to count through them and ``val_mae`` is measured on them.
    """
    impairments = Impairments.parse(config.get("impairments"))
    train_size = int(config.get("train_size", 2048))
    val_size = int(config.get("val_size", 512))
    seed = int(config.get("seed", 0))
    lanes = int(config.get("lanes", DEFAULT_LANES))
    cells = int(config.get("cells", DEFAULT_CELLS))
    train = synthetic_dataset(
        train_size, seed=seed, num_lanes=lanes, cells=cells, impairments=impairments
    )
    # Held-out data comes from another seed: no frame is in both.
    val = synthetic_dataset(
        val_size, seed=seed + 1_000_003, num_lanes=lanes, cells=cells, impairments=impairments
    )
    with models.torch_threads(cpus or _reserved_cpus("train_counter")):
        import torch

        torch.manual_seed(seed)
        model = models.vehicle_counter(
            approaches=len(APPROACHES),
            lanes=lanes,
            cells=cells,
            width=int(config.get("width", 32)),
            hidden=int(config.get("hidden", 256)),
        )
        fit = models.fit_regressor(
            model,
            (train.images, train.counts),
            (val.images, val.counts),
            epochs=int(config.get("epochs", 8)),
            lr=float(config.get("lr", 2e-3)),
            batch_size=int(config.get("batch_size", 64)),
            seed=seed,
            on_epoch=on_epoch,
        )
    return fit, {"train": train, "val": val}


@app.function(tier="cloud", resources=Resources(cpus=TRAIN_CPUS), retries=1, timeout_s=1800)
def train_counter(
    out_dir: str | None = None,
    epochs: int = 8,
    lr: float = 2e-3,
    width: int = 32,
    train_size: int = 2048,
    val_size: int = 512,
    seed: int = 0,
    register: bool = False,
    run_id: str | None = None,
    impairments: Mapping[str, Any] | str | None = None,
) -> ModelRef:
    """Train the vehicle-counter CNN, export it to ONNX (parity-checked); optionally register it.

    Args:
        out_dir: where the ONNX file goes (default ``<data_dir>/exports``).
        epochs: passes over the training frames.
        lr: Adam's learning rate.
        width: channels of the CNN trunk (32: ~267k parameters).
        train_size: synthetic training frames.
        val_size: held-out frames (also the parity inputs of the export).
        seed: seeds the data and the weights.
        register: register the export as a candidate version of ``vehicle-counter``.
        run_id: the mesh run id, recorded in the version's lineage.
        impairments: the cameras' impairments the frames are drawn with: None =
            the defaults, ``"none"`` = perfect cameras, or the settings as a
            mapping or JSON (a traffic scenario passes ``"{camera_impairments}"``,
            its cameras' own).
    """
    from mesh.models import export_onnx

    config: dict[str, Any] = {
        "lr": lr,
        "width": width,
        "hidden": 256,
        "epochs": epochs,
        "batch_size": 64,
        "train_size": train_size,
        "val_size": val_size,
        "seed": seed,
        "impairments": Impairments.parse(impairments).as_dict(),
    }
    fit, data = counter_trial(config)
    val = data["val"]
    import torch

    x_val = torch.from_numpy(val.images)
    target = Path(out_dir) if out_dir else _default_out_dir()
    path = target / f"{COUNTER_MODEL}-{uuid.uuid4().hex[:12]}.onnx"
    # Held-out batches of 1, 7 and the rest: parity and the dynamic batch axis at once.
    parity = [x_val[:1], x_val[1:8], x_val[8:]] if len(x_val) > 8 else [x_val[:1], x_val]
    report = export_onnx(
        fit.model,
        x_val[:2],
        path,
        input_names=["occupancy"],
        output_names=["counts"],
        parity_inputs=parity,
        tolerance=COUNTER_TOLERANCE,
    )
    ref = ModelRef(
        model=COUNTER_MODEL,
        onnx_path=str(report.path),
        sha256=report.sha256,
        opset=report.opset,
        max_abs_error=report.max_abs_error,
        code_version=code_version(),
        data_id=data["train"].data_id,
        metrics={
            "val_mae": fit.val_mae,
            "best_epoch": float(fit.best_epoch),
            "train_seconds": round(fit.seconds, 3),
        },
        hyperparameters=config,
        num_parameters=models.count_parameters(fit.model),
        device=fit.device,
        registered_version=None,
    )
    if register:
        ref["registered_version"] = _register(ref, "val_mae", "min", run_id)
    logger.info(
        "trained %s: val_mae=%.3f, %d parameters, onnx %s (max abs error %.2g)",
        COUNTER_MODEL,
        fit.val_mae,
        ref["num_parameters"],
        report.sha256[:12],
        report.max_abs_error,
    )
    return ref


@app.tune(
    metric="val_mae",
    mode="min",
    scheduler="asha",
    num_samples=4,
    max_concurrent_trials=2,
    max_iterations=6,
    search_space={
        "lr": app.loguniform(5e-4, 5e-3),
        "width": app.choice([16, 32]),
        "epochs": 6,
        "train_size": 1024,
        "val_size": 256,
    },
    tier="cloud",
    resources=Resources(cpus=TRAIN_CPUS),
)
def tune_counter(config: dict[str, Any]) -> None:
    """Search the counter's learning rate and width; ASHA stops poor trials early by val_mae."""

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        mesh.report(
            val_mae=metrics["val_mae"], train_loss=metrics["train_loss"], epoch=float(epoch)
        )

    counter_trial(config, on_epoch=report, cpus=_reserved_cpus("tune_counter"))


@app.function(tier="cloud", resources=Resources(cpus=TRAIN_CPUS), retries=0, timeout_s=1800)
def retrain_counter(
    message: Mapping[str, Any] | None = None,
    data: str | None = None,
    max_rows: int = 4000,
    min_rows: int = 64,
    synthetic_ratio: float = 1.0,
    epochs: int = 6,
    lr: float = 1e-3,
    seed: int = 0,
    out_dir: str | None = None,
    register: bool = True,
    run_id: str | None = None,
) -> ModelRef:
    """Retrain the counter on its cameras' fresh frames after drift; register a better candidate.

    Args:
        message: the drift event's trigger message (``{"topic", "payload"}``; its
            ``module``, ``model`` and ``version`` say what drifted and the parent).
        data: an ``.npz`` of fresh frames (``inputs``, ``labels``) instead of a
            snapshot of the module's fresh-data store (``mesh.models.fresh_data``).
        max_rows: most fresh frames a snapshot holds.
        min_rows: fewer labelled fresh frames: no retraining (the run fails).
        synthetic_ratio: frames of the parent's synthetic set per fresh training frame.
        epochs: passes over the mix (warm start: a few suffice).
        lr: Adam's learning rate.
        seed: seeds the weights' order and the synthetic frames.
        out_dir: where the ONNX file goes (default ``<data_dir>/exports``).
        register: register it as a candidate when it beats the parent on held-out fresh frames.
        run_id: the mesh run id, recorded in the version's lineage.
    """
    from .retrain import retrain

    return retrain(  # type: ignore[no-any-return]
        message,
        module="counter",
        model=COUNTER_MODEL,
        data=data,
        max_rows=max_rows,
        min_rows=min_rows,
        synthetic_ratio=synthetic_ratio,
        epochs=epochs,
        lr=lr,
        seed=seed,
        out_dir=out_dir,
        register=register,
        run_id=run_id,
    )


# Any module's drift event: the run checks that it is this model's.
app.add_trigger("retrain_counter", topic=drift_topic("+"), pass_as="message", debounce_s=5.0)


# -- demand analytics ------------------------------------------------------------------


@app.batch(tier="cloud", resources=Resources(cpus=0.5), input_format="csv")
def demand_profiles(events: Any) -> Any:
    """Demand profile per junction and approach from recorded counts (Ray Data).

    Input rows: ``site, minute, approach, count`` (and ``day`` in a scenario's
    history; ``count`` is the mean number of vehicles on the approach that
    minute); out: the mean and peak per site and approach.
    """
    return events.groupby(["site", "approach"]).aggregate(
        _ray_data_agg("Mean", "count"), _ray_data_agg("Max", "count")
    )


def _ray_data_agg(kind: str, column: str) -> Any:
    import ray.data.aggregate as agg  # in the batch job only

    return getattr(agg, kind)(column)


# -- the flow forecaster ------------------------------------------------------------


@app.function(tier="cloud", resources=Resources(cpus=TRAIN_CPUS), retries=1, timeout_s=900)
def train_forecaster(
    out_dir: str | None = None,
    minutes: int = 2400,
    lags: int = 8,
    epochs: int = 20,
    lr: float = 3e-3,
    hidden: int = 64,
    seed: int = 0,
    history: str | None = None,
    register: bool = False,
    run_id: str | None = None,
) -> ModelRef:
    """Train the short-term flow forecaster (MLP), export it to ONNX; optionally register it.

    It predicts each approach's next-minute value from its last ``lags``
    minutes (input ``counts [N, approaches, lags]``, oldest first; output
    ``next_counts [N, approaches]``). With ``history`` it learns a scenario's
    recorded counts (:func:`read_history`: mean vehicles on each approach per
    minute, what the edge counter reports live), holding out the later part of
    every series (:func:`history_windows`); without, synthetic flows with the
    last quarter held out. ``persistence_mae`` in the metrics is the held-out
    error of predicting the last minute again: the baseline to beat.

    Args:
        out_dir: where the ONNX file goes (default ``<data_dir>/exports``).
        minutes: length of the synthetic count series (several days of 4-hour peaks);
            unused with ``history``.
        lags: minutes of history per prediction.
        epochs: passes over the training windows.
        lr: Adam's learning rate.
        hidden: units per hidden layer.
        seed: seeds the data and the weights.
        history: a glob of history CSVs (``counts-*.csv``); None = synthetic flows.
        register: register the export as a candidate version of ``flow-forecaster``.
        run_id: the mesh run id, recorded in the version's lineage.

    Raises:
        FileNotFoundError: ``history`` matches no file.
        ValueError: the history is malformed or too short for ``lags``.
    """
    import torch

    from mesh.models import export_onnx

    hyperparameters: dict[str, Any] = {
        "lags": lags,
        "epochs": epochs,
        "lr": lr,
        "hidden": hidden,
        "seed": seed,
    }
    if history is not None:
        series = read_history(history)
        x_train, y_train, x_val, y_val = history_windows(series, lags)
        kind = "traffic-history-"
        hyperparameters.update(history=history, series=len(series))
    else:
        x_train, y_train, x_val, y_val = synthetic_windows(minutes, lags, seed)
        kind = "synthetic-flows-"
        hyperparameters["minutes"] = minutes
    digest = hashlib.sha256()
    for array in (x_train, y_train, x_val, y_val):
        digest.update(array.tobytes())
    data_id = kind + digest.hexdigest()[:16]
    with models.torch_threads(_reserved_cpus("train_forecaster")):
        torch.manual_seed(seed)
        model = models.flow_forecaster(
            approaches=x_train.shape[1],
            lags=lags,
            hidden=hidden,
            scale=float(max(1.0, y_train.mean())),
        )
        fit = models.fit_regressor(
            model,
            (x_train, y_train),
            (x_val, y_val),
            epochs=epochs,
            lr=lr,
            batch_size=128,
            seed=seed,
        )
    persistence_mae = float(np.abs(x_val[:, :, -1] - y_val).mean())
    x_held = torch.from_numpy(x_val)
    target = Path(out_dir) if out_dir else _default_out_dir()
    path = target / f"{FORECASTER_MODEL}-{uuid.uuid4().hex[:12]}.onnx"
    parity = [x_held[:1], x_held[1:8], x_held[8:]] if len(x_held) > 8 else [x_held]
    report = export_onnx(
        fit.model,
        x_held[:2],
        path,
        input_names=["counts"],
        output_names=["next_counts"],
        parity_inputs=parity,
        tolerance=FORECASTER_TOLERANCE,
    )
    ref = ModelRef(
        model=FORECASTER_MODEL,
        onnx_path=str(report.path),
        sha256=report.sha256,
        opset=report.opset,
        max_abs_error=report.max_abs_error,
        code_version=code_version(),
        data_id=data_id,
        metrics={
            "val_mae": fit.val_mae,
            "persistence_mae": persistence_mae,
            "best_epoch": float(fit.best_epoch),
            "train_windows": float(len(x_train)),
            "val_windows": float(len(x_val)),
        },
        hyperparameters=hyperparameters,
        num_parameters=models.count_parameters(fit.model),
        device=fit.device,
        registered_version=None,
    )
    if register:
        ref["registered_version"] = _register(ref, "val_mae", "min", run_id)
    logger.info(
        "trained %s on %s: val_mae=%.3f (persistence %.3f), %d/%d windows, onnx %s",
        FORECASTER_MODEL,
        kind.rstrip("-"),
        fit.val_mae,
        persistence_mae,
        len(x_train),
        len(x_val),
        report.sha256[:12],
    )
    return ref


# -- serving ----------------------------------------------------------------------


@app.module(
    model=COUNTER_MODEL,
    qos=QoS(p95_latency_ms=20),
    tiers=["edge", "fog", "cloud"],
    resources=Resources(cpus=0.5),
    drift=Drift(statistic="error", threshold=3.0, window_s=60, labels="traffic/{site}/truth"),
    canary=Canary(fraction=0.25, window_s=60, min_samples=30, error_margin=0.1),
)
class VehicleCounter:
    """Vehicles per approach from a junction's occupancy frame."""

    input_name = "occupancy"
    approaches = APPROACHES

    def __init__(self, lanes: int = DEFAULT_LANES, cells: int = DEFAULT_CELLS) -> None:
        """Expect frames of ``[4, lanes, cells]``."""
        self.shape = (len(APPROACHES), lanes, cells)

    def preprocess(self, frame: Any) -> dict[str, npt.NDArray[np.float32]]:
        """A frame ``[4, lanes, cells]`` or a batch ``[N, 4, lanes, cells]`` -> model feeds.

        Also accepts ``{"occupancy": ...}`` and nested lists.

        Raises:
            ValueError: the shape is wrong or values are not finite (the message
                names the expected shape).
        """
        if isinstance(frame, Mapping):
            frame = frame.get(self.input_name, frame.get("frame"))
        array = np.asarray(frame, dtype=np.float32)
        if array.shape == self.shape:
            array = array[None]
        if array.ndim != 4 or array.shape[1:] != self.shape or array.shape[0] < 1:
            raise ValueError(
                f"expected an occupancy frame of shape {list(self.shape)} or "
                f"[N, {', '.join(map(str, self.shape))}], got {list(array.shape)}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError("occupancy values must be finite")
        return {self.input_name: np.clip(array, 0.0, 1.0)}

    def postprocess(self, outputs: Any) -> list[dict[str, int]]:
        """Model outputs ``[N, 4]`` (or a list/dict holding them) -> counts per approach."""
        if isinstance(outputs, Mapping):
            outputs = outputs.get("counts", next(iter(outputs.values())))
        elif (
            isinstance(outputs, Sequence)
            and not isinstance(outputs, np.ndarray)
            and outputs
            and np.asarray(outputs[0]).ndim == 2
        ):
            outputs = outputs[0]
        counts = np.asarray(outputs, dtype=np.float64).reshape(-1, len(APPROACHES))
        return [
            {
                name: max(0, math.floor(value + 0.5))
                for name, value in zip(APPROACHES, row, strict=True)
            }
            for row in counts
        ]
