"""Retraining the vehicle counter on fresh frames from its cameras, after drift.

When a camera changes (:mod:`functions.traffic.camera_drift`), the counter that
learnt on the old frames errs; the mesh notices (a drift event on
``lifecycle/drift/<module>``) and runs ``retrain_counter``
(:mod:`functions.traffic.app`), which calls :func:`retrain` here:

1. the fresh frames: the labelled samples the agents uploaded, as
   ``mesh.models.fresh_data(module)`` snapshots them (an ``.npz`` with
   ``inputs`` and ``labels``; :func:`fresh_frames` reads it), the last
   ``val_fraction`` of them held out;
2. the changed frames weigh more (:func:`emphasised`): a training frame the
   parent miscounts (mean error above ``hard_error`` vehicles per approach:
   a drifted camera's) counts ``1 + hard_repeat`` times, and every training
   frame also counts as its approaches rotated and its lanes swapped (a count
   does not depend on which arm or lane a vehicle is on: x8 the frames). With
   two minutes of drift most fresh frames are still the old world's, and
   without this a candidate healed the drifted sites to ~2x their undrifted
   error, with it to ~1x (``bench/lifecycle.py``);
3. a declared mix with the old synthetic set: ``synthetic_ratio`` synthetic
   frames per fresh training frame (before the emphasis), the first ones of the
   parent's own training set (same generator, seed and impairments), so the
   counter keeps counting well where the cameras did not change;
4. warm start from the parent (the version that served when drift was
   declared): its ONNX weights loaded into the same network (:func:`warm_start`);
5. a short fit, the export with the parity check, and the comparison on the
   held-out fresh frames: the candidate is registered (a CANDIDATE, with
   lineage: parent, the drift event, the mix, both errors) only when it errs
   less there than the parent; else nothing is registered and production
   keeps serving.

Example:
    >>> images, counts = fresh_frames("fresh.npz")  # doctest: +SKIP
    >>> images.shape[1:], counts.shape[1:]          # doctest: +SKIP
    ((4, 2, 64), (4,))
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from functions.traffic.occupancy import APPROACHES

__all__ = [
    "RetrainPlan",
    "drift_event",
    "emphasised",
    "fresh_frames",
    "parent_error",
    "parent_row_errors",
    "warm_start",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def drift_event(message: Any) -> dict[str, Any]:
    """The drift event a trigger passed: the message's JSON ``payload``, or the event itself.

    Example:
        >>> drift_event({"topic": "lifecycle/drift/counter", "payload": {"site": "A0"}})
        {'site': 'A0'}
        >>> drift_event(None)
        {}
    """
    if not isinstance(message, Mapping):
        return {}
    payload = message.get("payload", message)
    return dict(payload) if isinstance(payload, Mapping) else {}


def fresh_frames(path: str | Path) -> tuple[F32, F32]:
    """A snapshot ``.npz``'s labelled frames: ``images [N, 4, lanes, cells]``, ``counts [N, 4]``.

    ``inputs`` may hold the cameras' whole batches ``[N, rows, 4, lanes, cells]``
    (the frame, its segments, what stood still): the first row is the frame the
    label counts. ``labels`` are ``[N, >= 4]``: the first four values are the
    frame's approaches.

    Raises:
        ValueError: a missing array, a shape that is not a camera frame's, rows
            that do not pair up, or values that are not finite (the message says which).
    """
    where = str(path)
    with np.load(where) as data:
        missing = [k for k in ("inputs", "labels") if k not in data.files]
        if missing:
            raise ValueError(f"{where}: no {' or '.join(missing)} array (has {data.files})")
        inputs = np.asarray(data["inputs"], dtype=np.float32)
        labels = np.asarray(data["labels"], dtype=np.float32)
    if inputs.ndim == 5:
        inputs = inputs[:, 0]
    approaches = len(APPROACHES)
    if inputs.ndim != 4 or inputs.shape[1] != approaches:
        raise ValueError(
            f"{where}: inputs: expected [N, {approaches}, lanes, cells] or "
            f"[N, rows, {approaches}, lanes, cells], got {list(inputs.shape)}"
        )
    labels = labels.reshape(len(labels), -1) if labels.size else labels.reshape(0, 0)
    if labels.shape[0] != inputs.shape[0] or labels.shape[1] < approaches:
        raise ValueError(
            f"{where}: labels: expected [{inputs.shape[0]}, >= {approaches}] (one row per "
            f"input), got {list(labels.shape)}"
        )
    if not (np.all(np.isfinite(inputs)) and np.all(np.isfinite(labels))):
        raise ValueError(f"{where}: inputs and labels must be finite")
    return np.clip(inputs, 0.0, 1.0), labels[:, :approaches]


def warm_start(model: Any, onnx_path: str | Path) -> bool:
    """Load a parent's ONNX weights into ``model`` (a torch module of the same shape).

    The export keeps the parameters' names; every one of the model's must be
    there with its shape, or nothing is loaded.

    Returns:
        Whether the weights were loaded.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    state = model.state_dict()
    loaded: dict[str, Any] = {}
    for name, tensor in state.items():
        array = weights.get(name)
        if array is None or tuple(array.shape) != tuple(tensor.shape):
            logger.warning(
                "warm start from %s: no %s of shape %s", onnx_path, name, tuple(tensor.shape)
            )
            return False
        loaded[name] = torch.from_numpy(np.array(array, dtype=np.float32))
    model.load_state_dict(loaded)
    return True


def parent_row_errors(onnx_path: str | Path, images: F32, counts: F32) -> F32:
    """The parent's mean absolute count error per frame (ONNX Runtime, raw outputs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = np.concatenate(
        [session.run(None, {name: images[i : i + 256]})[0] for i in range(0, len(images), 256)]
    )
    errors: F32 = np.abs(outputs.reshape(counts.shape) - counts).mean(axis=1).astype(np.float32)
    return errors


def parent_error(onnx_path: str | Path, images: F32, counts: F32) -> float:
    """The parent's mean absolute count error on ``images`` (ONNX Runtime, raw outputs)."""
    return float(parent_row_errors(onnx_path, images, counts).mean())


def emphasised(
    images: F32,
    counts: F32,
    parent_errors: F32 | None,
    *,
    hard_error: float = 1.5,
    hard_repeat: int = 3,
    symmetric: bool = True,
) -> tuple[F32, F32, dict[str, Any]]:
    """Training frames with the changed ones repeated and the symmetric copies added.

    A frame whose ``parent_errors`` exceeds ``hard_error`` comes ``1 +
    hard_repeat`` times; with ``symmetric``, every frame also comes with its
    approaches rotated by one, two and three arms and each of those with its
    lanes swapped (counts rotate with the approaches; lanes do not change them).

    Example:
        >>> x = np.zeros((2, 4, 2, 3), np.float32)
        >>> y = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], np.float32)
        >>> xe, ye, info = emphasised(x, y, np.array([2.0, 0.1], np.float32))
        >>> len(xe), info["hard"], ye[5].tolist(), ye[20].tolist()
        (40, 1, [4.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    """
    hard = 0
    if parent_errors is not None and hard_repeat > 0:
        mask = parent_errors > hard_error
        hard = int(mask.sum())
        images = np.concatenate([images, *([images[mask]] * hard_repeat)])
        counts = np.concatenate([counts, *([counts[mask]] * hard_repeat)])
    if symmetric:
        xs = [np.roll(images, r, axis=1) for r in range(images.shape[1])]
        ys = [np.roll(counts, r, axis=1) for r in range(counts.shape[1])]
        images = np.concatenate([*xs, *(x[:, :, ::-1] for x in xs)])
        counts = np.concatenate([*ys, *ys])
    info = {"hard": hard, "hard_repeat": hard_repeat, "symmetric": symmetric}
    return images.astype(np.float32), counts.astype(np.float32), info


@dataclass(frozen=True, slots=True)
class RetrainPlan:
    """What a retraining run trains on and from.

    Attributes:
        fresh: the fresh frames' ``(images, counts)``.
        data_id: the snapshot's id (lineage).
        parent_onnx: the parent's ONNX file; None = no parent (fresh weights).
        parent_config: the parent's hyperparameters (its network's shape, its data).
        synthetic_ratio: synthetic frames per fresh training frame.
        val_fraction: share of the fresh frames held out (the last ones of those
            the parent misses and of the others, each).
        parent_errors: the parent's error on each fresh frame (None: no parent).
        hard_error, hard_repeat, symmetric: the emphasis (:func:`emphasised`).
    """

    fresh: tuple[F32, F32]
    data_id: str
    parent_onnx: Path | None
    parent_config: Mapping[str, Any]
    synthetic_ratio: float = 1.0
    val_fraction: float = 0.25
    parent_errors: F32 | None = None
    hard_error: float = 1.5
    hard_repeat: int = 3
    symmetric: bool = True

    def split(self) -> tuple[tuple[F32, F32], tuple[F32, F32], dict[str, Any]]:
        """Training and held-out frames, and the mix (for lineage).

        Raises:
            ValueError: too few fresh frames to hold some out, or a bad ratio.
        """
        from functions.traffic.impairments import Impairments
        from functions.traffic.occupancy import synthetic_dataset

        images, counts = self.fresh
        n = len(images)
        held = max(1, round(n * self.val_fraction))
        if n - held < 1 or not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"fresh frames: {n} cannot be split with val_fraction {self.val_fraction}"
            )
        if not 0.0 <= self.synthetic_ratio <= 16.0:
            raise ValueError(f"synthetic_ratio: expected in [0, 16], got {self.synthetic_ratio}")
        train, test = _held_out(n, held, self.parent_errors, self.hard_error)
        x_fresh, y_fresh = images[train], counts[train]
        n_synthetic = round(self.synthetic_ratio * len(x_fresh))
        mix: dict[str, Any] = {"fresh": len(x_fresh), "synthetic": n_synthetic, "held_out": held}
        errors = None if self.parent_errors is None else self.parent_errors[train]
        x_fresh, y_fresh, emphasis = emphasised(
            x_fresh,
            y_fresh,
            errors,
            hard_error=self.hard_error,
            hard_repeat=self.hard_repeat,
            symmetric=self.symmetric,
        )
        mix.update(emphasis, fresh_rows=len(x_fresh))
        if n_synthetic:
            cfg = self.parent_config
            old = synthetic_dataset(
                n_synthetic,
                seed=int(cfg.get("seed", 0)),
                num_lanes=images.shape[2],
                cells=images.shape[3],
                impairments=Impairments.parse(cfg.get("impairments")),
            )
            mix["synthetic_data_id"] = old.data_id
            x_train = np.concatenate([x_fresh, old.images])
            y_train = np.concatenate([y_fresh, old.counts])
        else:
            x_train, y_train = x_fresh, y_fresh
        return (x_train, y_train), (images[test], counts[test]), mix


def _held_out(
    n: int, held: int, parent_errors: F32 | None, hard_error: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Training and held-out rows: the last ``held / n`` of each group, in the order sent.

    The groups: the frames the parent misses and the others. The last frames of
    a snapshot are mostly the drifted ones: held out whole, the fit would hardly
    see them.
    """
    rows = np.arange(n)
    if parent_errors is None:
        return rows[: n - held], rows[n - held :]
    train: list[npt.NDArray[np.intp]] = []
    test: list[npt.NDArray[np.intp]] = []
    for group in (rows[parent_errors > hard_error], rows[parent_errors <= hard_error]):
        k = round(len(group) * held / n)
        train.append(group[: len(group) - k])
        test.append(group[len(group) - k :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def file_data_id(path: str | Path) -> str:
    """A data id for an ``.npz`` given by path: ``fresh-file-<sha256 prefix>``."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"fresh-file-{digest}"


def _parent(model: str, version: str | None) -> tuple[str | None, Path | None, dict[str, Any]]:
    """The parent (the version that served, else production, else the newest), its file, config."""
    from mesh.models import ModelNotFoundError, ModelRegistry

    registry = ModelRegistry.open()
    try:
        for ref in (version, "production", "latest"):
            if not ref:
                continue
            try:
                parent, path = registry.artifact_path(model, ref)
            except ModelNotFoundError:
                continue
            return parent.version, path, dict(parent.lineage.hyperparameters)
    finally:
        registry.close()
    return None, None, {}


def _fresh(module: str, data: str | None, max_rows: int) -> tuple[tuple[F32, F32], str]:
    """The fresh frames: ``data`` (an ``.npz``) or a new snapshot of the module's store."""
    if data is not None:
        return fresh_frames(data), file_data_id(data)
    import importlib

    fresh_data: Any = getattr(importlib.import_module("mesh.models"), "fresh_data", None)
    if fresh_data is None:  # the fresh-data store is not in this mesh
        raise RuntimeError(f"no fresh data for {module!r}: this mesh has no fresh-data store")
    snapshot = fresh_data(module, max_rows=max_rows)
    return fresh_frames(snapshot.path), str(snapshot.id)


def retrain(
    message: Any,
    *,
    module: str,
    model: str,
    data: str | None,
    max_rows: int,
    min_rows: int,
    synthetic_ratio: float,
    epochs: int,
    lr: float,
    seed: int,
    out_dir: str | None,
    register: bool,
    run_id: str | None,
) -> Any:
    """The work of ``functions.traffic.app.retrain_counter`` (see the module docstring).

    Returns:
        A :class:`~functions.traffic.app.ModelRef` whose ``metrics`` hold
        ``val_mae`` (the candidate's, on the held-out fresh frames) and
        ``parent_val_mae`` (the parent's there); ``registered_version`` is None
        when it was not better.

    Raises:
        ValueError: fewer than ``min_rows`` labelled fresh frames, or bad data.
        RuntimeError: no fresh-data store and no ``data``.
    """
    import uuid

    import torch

    from functions.traffic import models
    from functions.traffic.app import COUNTER_TOLERANCE, ModelRef, code_version
    from mesh import MeshSettings
    from mesh.models import Lineage, ModelRegistry, SelectionMetric, export_onnx

    event = drift_event(message)
    if event.get("model") not in (None, model):
        raise ValueError(f"a drift event of model {event['model']!r}: this retrains {model!r}")
    module = str(event.get("module") or module)
    fresh, data_id = _fresh(module, data, max_rows)
    if len(fresh[0]) < min_rows:
        raise ValueError(
            f"{module}: {len(fresh[0])} labelled fresh frames, need at least {min_rows} to retrain"
        )
    parent, parent_onnx, parent_config = _parent(model, event.get("version"))
    errors = parent_row_errors(parent_onnx, *fresh) if parent_onnx is not None else None
    plan = RetrainPlan(
        fresh, data_id, parent_onnx, parent_config, synthetic_ratio, parent_errors=errors
    )
    train, held_out, mix = plan.split()
    config: dict[str, Any] = {
        "width": int(parent_config.get("width", 32)),
        "hidden": int(parent_config.get("hidden", 256)),
        "epochs": epochs,
        "lr": lr,
        "batch_size": 64,
        "seed": seed,
        "impairments": parent_config.get("impairments"),
        "synthetic_ratio": synthetic_ratio,
    }
    with models.torch_threads(1.0):
        torch.manual_seed(seed)
        net = models.vehicle_counter(
            approaches=len(APPROACHES),
            lanes=train[0].shape[2],
            cells=train[0].shape[3],
            width=config["width"],
            hidden=config["hidden"],
        )
        warm = parent_onnx is not None and warm_start(net, parent_onnx)
        fit = models.fit_regressor(
            net, train, held_out, epochs=epochs, lr=lr, batch_size=64, seed=seed
        )
    parent_mae = parent_error(parent_onnx, *held_out) if parent_onnx is not None else None
    target = Path(out_dir) if out_dir else MeshSettings().data_dir / "exports"
    x_held = torch.from_numpy(held_out[0])
    parity = [x_held[:1], x_held[1:8], x_held[8:]] if len(x_held) > 8 else [x_held]
    report = export_onnx(
        fit.model,
        x_held[:2] if len(x_held) > 1 else x_held,
        target / f"{model}-{uuid.uuid4().hex[:12]}.onnx",
        input_names=["occupancy"],
        output_names=["counts"],
        parity_inputs=parity,
        tolerance=COUNTER_TOLERANCE,
    )
    metrics = {"val_mae": fit.val_mae, "best_epoch": float(fit.best_epoch)}
    if parent_mae is not None:
        metrics["parent_val_mae"] = parent_mae
    ref = ModelRef(
        model=model,
        onnx_path=str(report.path),
        sha256=report.sha256,
        opset=report.opset,
        max_abs_error=report.max_abs_error,
        code_version=code_version(),
        data_id=data_id,
        metrics=metrics,
        hyperparameters=config,
        num_parameters=models.count_parameters(fit.model),
        device=fit.device,
        registered_version=None,
    )
    better = parent_mae is None or fit.val_mae < parent_mae
    logger.info(
        "retrained %s from %s (warm start: %s) on %s: held-out MAE %.3f (parent %s)",
        model,
        parent,
        warm,
        mix,
        fit.val_mae,
        "n/a" if parent_mae is None else f"{parent_mae:.3f}",
    )
    if not (register and better):
        return ref
    registry = ModelRegistry.open()
    try:
        version = registry.register(
            model,
            report.path,
            code_version=ref["code_version"],
            metric=SelectionMetric("val_mae", fit.val_mae, "min"),
            lineage=Lineage(
                run_id=run_id,
                data_id=data_id,
                hyperparameters=config,
                extra={
                    "parent": parent,
                    "warm_start": warm,
                    "drift": event or None,
                    "mix": mix,
                    "parent_val_mae": parent_mae,
                    "max_abs_error": report.max_abs_error,
                },
            ),
        )
    finally:
        registry.close()
    ref["registered_version"] = version.version
    return ref
