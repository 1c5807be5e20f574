"""Torch models of the traffic library and the loop that fits them.

* :func:`vehicle_counter` — a CNN from a junction frame ``[N, approaches, lanes,
  cells]`` (see :mod:`functions.traffic.occupancy`) to vehicles per approach ``[N,
  approaches]``. One trunk is shared by every approach: each approach is folded
  into the batch, convolved along its lanes (``1 x k`` kernels, so lanes stay
  apart) and read out by a small MLP.
* :func:`flow_forecaster` — an MLP from the last ``lags`` counts per approach
  ``[N, approaches, lags]`` to the next interval's counts ``[N, approaches]``.

torch is imported inside the functions, so ``import functions.traffic.models`` stays
light; the classes are built on first use.

Example:
    >>> model = vehicle_counter(width=16)                      # doctest: +SKIP
    >>> model(torch.zeros(3, 4, 2, 64)).shape                  # doctest: +SKIP
    torch.Size([3, 4])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = [
    "FitResult",
    "count_parameters",
    "fit_regressor",
    "flow_forecaster",
    "pick_device",
    "torch_threads",
    "vehicle_counter",
]

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, Mapping[str, float]], None]


@cache
def _classes() -> dict[str, type[Any]]:
    import torch
    from torch import nn

    class VehicleCounter(nn.Module):
        """Vehicles per approach from occupancy grids; see the module docstring."""

        def __init__(self, approaches: int, lanes: int, cells: int, width: int, hidden: int):
            super().__init__()
            if cells % 4:
                raise ValueError(f"cells must be a multiple of 4, got {cells}")
            self.approaches, self.lanes, self.cells = approaches, lanes, cells
            half = max(4, width // 2)
            self.trunk = nn.Sequential(
                nn.Conv2d(1, half, (1, 5), padding=(0, 2)),
                nn.ReLU(),
                nn.Conv2d(half, width, (1, 3), stride=(1, 2), padding=(0, 1)),
                nn.ReLU(),
                nn.Conv2d(width, width, (1, 3), stride=(1, 2), padding=(0, 1)),
                nn.ReLU(),
            )
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(width * lanes * (cells // 4), hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Fold approaches into the batch: every approach shares the trunk.
            folded = x.reshape(-1, 1, self.lanes, self.cells)
            # x10: counts run to ~70, so the last layer can stay at unit scale.
            counts: torch.Tensor = self.head(self.trunk(folded)) * 10.0
            return counts.reshape(-1, self.approaches)

    class FlowForecaster(nn.Module):
        """Next-interval counts per approach from the last ``lags`` counts."""

        def __init__(self, approaches: int, lags: int, hidden: int, scale: float):
            super().__init__()
            self.approaches, self.lags = approaches, lags
            # Counts are scaled inside the graph, so ONNX callers pass raw counts.
            self.register_buffer("scale", torch.tensor(float(scale)))
            self.net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(approaches * lags, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, approaches),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.get_buffer("scale")
            last = x[:, :, -1]
            # Predict the change from the last interval: an easy baseline to improve on.
            change: torch.Tensor = self.net(x / scale) * scale
            return last + change

    return {"VehicleCounter": VehicleCounter, "FlowForecaster": FlowForecaster}


def vehicle_counter(
    *, approaches: int = 4, lanes: int = 2, cells: int = 64, width: int = 32, hidden: int = 256
) -> torch.nn.Module:
    """Build the vehicle-counter CNN (``width=32``: about 267k parameters).

    Args:
        approaches: approaches per junction frame (the input's channel axis).
        lanes: lanes per approach (the input's height).
        cells: cells per lane (the input's width; a multiple of 4).
        width: channels of the convolutional trunk.
        hidden: units of the readout MLP.
    """
    cls = _classes()["VehicleCounter"]
    model: torch.nn.Module = cls(approaches, lanes, cells, width, hidden)
    return model


def flow_forecaster(
    *, approaches: int = 4, lags: int = 8, hidden: int = 64, scale: float = 10.0
) -> torch.nn.Module:
    """Build the short-term flow forecaster MLP.

    Args:
        approaches: approaches per junction.
        lags: past intervals it sees.
        hidden: units per hidden layer.
        scale: a typical count, used to normalise inputs and outputs in the graph.
    """
    cls = _classes()["FlowForecaster"]
    model: torch.nn.Module = cls(approaches, lags, hidden, scale)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when torch sees a GPU (or ``prefer`` names a device), otherwise the CPU."""
    import torch

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def torch_threads(cpus: float) -> Iterator[int]:
    """Run torch's intra-op pool on as many threads as CPUs were reserved; restore after."""
    import torch

    threads = max(1, math.floor(cpus))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, slots=True)
class FitResult:
    """What :func:`fit_regressor` did.

    Attributes:
        model: the fitted model, on the CPU, in eval mode, holding the best epoch's weights.
        val_mae: mean absolute error on the held-out data, best epoch.
        best_epoch: the epoch (from 1) the weights come from.
        history: per epoch: ``train_loss``, ``val_mae``.
        device: where it trained.
        seconds: wall time of the fit.
    """

    model: torch.nn.Module
    val_mae: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0


def fit_regressor(
    model: torch.nn.Module,
    train: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    val: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | None = None,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Fit ``model`` to ``train`` (inputs, targets) with Adam and a smooth-L1 loss.

    After each epoch the held-out MAE is computed and passed to ``on_epoch``
    (how a Tune trial reports to ASHA); the best epoch's weights are kept.

    Args:
        model: any module mapping a float32 batch to a float32 batch.
        train: inputs and targets, numpy float32, first axis = samples.
        val: held-out inputs and targets.
        epochs: passes over ``train``.
        lr: Adam's learning rate.
        batch_size: samples per step.
        weight_decay: Adam's L2 penalty.
        seed: seeds the initial weights' shuffling order.
        device: ``"cuda"``/``"cpu"``; None = CUDA when available.
        on_epoch: called as ``on_epoch(epoch, {"train_loss": ..., "val_mae": ...})``.
    """
    import torch

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    started = time.perf_counter()
    where = pick_device(device)
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(np.ascontiguousarray(train[0], dtype=np.float32)).to(where)
    y_train = torch.from_numpy(np.ascontiguousarray(train[1], dtype=np.float32)).to(where)
    x_val = torch.from_numpy(np.ascontiguousarray(val[0], dtype=np.float32)).to(where)
    y_val = torch.from_numpy(np.ascontiguousarray(val[1], dtype=np.float32)).to(where)
    model = model.to(where)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.SmoothL1Loss()
    best_mae, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(where)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        model.eval()
        with torch.no_grad():
            val_mae = float(
                torch.cat(
                    [
                        (model(x_val[i : i + 512]) - y_val[i : i + 512]).abs().flatten()
                        for i in range(0, len(x_val), 512)
                    ]
                ).mean()
            )
        metrics = {"train_loss": total / max(seen, 1), "val_mae": val_mae}
        history.append({"epoch": float(epoch), **metrics})
        logger.debug(
            "epoch %d/%d: train_loss=%.4f val_mae=%.4f",
            epoch,
            epochs,
            metrics["train_loss"],
            val_mae,
        )
        if val_mae < best_mae:
            best_mae, best_epoch = val_mae, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    model.load_state_dict(best_state)
    model = model.to("cpu").eval()
    return FitResult(
        model=model,
        val_mae=best_mae,
        best_epoch=best_epoch,
        history=history,
        device=str(where),
        seconds=time.perf_counter() - started,
    )
