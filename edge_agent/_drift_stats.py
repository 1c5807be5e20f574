"""What a module computed, summarised per window for the control plane's drift check.

Shared by edge agents (one window per heartbeat, in ``ModuleStats.summary``) and
cloud/fog replicas (one window per read of their ``GET /drift``,
:mod:`mesh.serving.replica._drift`): both summarise the same way. Each
inference's mean input value and mean output value (one sample per row of the
batch axis) go into running moments (Welford's count, mean and ``m2``);
:meth:`DriftStats.take` hands them over with the heartbeat and starts a new
window. Constant memory whatever the traffic; samples that are not finite (a
NaN output) are left out.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .protocol import Tensor
from .protocol._reports import DriftSummary, ValueMoments

__all__ = ["DriftStats", "Moments"]


class Moments:
    """Running count, mean and ``m2`` of values; batches merge by Chan's formula.

    Example:
        >>> m = Moments()
        >>> m.add_batch(2, 2.0, 2.0)  # the values 1 and 3
        >>> m.add_batch(1, 5.0, 0.0)
        >>> m.count, m.mean, m.m2
        (3, 3.0, 8.0)
    """

    __slots__ = ("count", "m2", "mean")

    def __init__(self) -> None:
        """Empty."""
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add_batch(self, count: int, mean: float, m2: float) -> None:
        """Merge ``count`` values of ``mean`` and ``m2`` into these."""
        if count <= 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def wire(self) -> ValueMoments:
        """As the heartbeat carries them."""
        return ValueMoments(count=self.count, mean=self.mean, m2=max(self.m2, 0.0))


def _row_means(array: Any) -> Any:
    """One mean per row of the batch axis (a rank-0 or rank-1 array is one row)."""
    if array is None or array.size == 0 or array.dtype == bool:
        return None
    rows = array.reshape(array.shape[0], -1) if array.ndim >= 2 else array.reshape(1, -1)
    means = rows.mean(axis=1, dtype="float64")
    finite = means[(means == means) & (abs(means) != math.inf)]
    return finite if finite.size else None


class DriftStats:
    """Per heartbeat window: moments of each inference's mean input and mean outputs.

    Thread-safe: module workers call :meth:`observe`, the heartbeat :meth:`take`.

    Example:
        >>> import numpy as np
        >>> stats = DriftStats()
        >>> x = Tensor.from_numpy("x", np.ones((1, 4), np.float32))
        >>> y = Tensor.from_numpy("y", np.full((1, 2), 3.0, np.float32))
        >>> stats.observe("v1", [x], [y])
        >>> s = stats.take()
        >>> s.version, s.inputs.mean, s.outputs["y"].count
        ('v1', 1.0, 1)
        >>> stats.take() is None
        True
    """

    def __init__(self) -> None:
        """An empty window."""
        self._lock = threading.Lock()
        self._version: str | None = None
        self._inputs = Moments()
        self._outputs: dict[str, Moments] = {}

    def observe(
        self, version: str | None, inputs: Sequence[Tensor], outputs: Sequence[Tensor]
    ) -> None:
        """Add one inference (or batch): its first input's and each output's row means.

        Never raises: a summary must not fail the inference it describes.
        """
        try:
            first = inputs[0].to_numpy() if inputs and inputs[0].dtype != "bool" else None
            arrays = {t.name: t.to_numpy() for t in outputs if t.dtype != "bool"}
        except Exception:  # e.g. a tensor whose data does not match its shape
            return
        self.observe_arrays(version, first, arrays)

    def observe_arrays(
        self, version: str | None, first_input: Any, outputs: Mapping[str, Any]
    ) -> None:
        """:meth:`observe` for numpy arrays: the first input's, and each output by name.

        Boolean arrays are left out (a mask has no mean worth comparing). Never raises.

        Example:
            >>> import numpy as np
            >>> stats = DriftStats()
            >>> stats.observe_arrays("v1", np.ones((2, 3)), {"y": np.zeros((2, 1))})
            >>> stats.take().inputs.count
            2
        """
        try:
            taken_in = _row_means(first_input)
            taken_out = [(name, _row_means(a)) for name, a in outputs.items()]
        except Exception:  # e.g. an object array
            return
        with self._lock:
            if version != self._version:  # a swap: the window is the new version's
                self._version = version
                self._inputs, self._outputs = Moments(), {}
            if taken_in is not None:
                _merge(self._inputs, taken_in)
            for name, means in taken_out:
                if means is not None:
                    _merge(self._outputs.setdefault(name, Moments()), means)

    def take(self) -> DriftSummary | None:
        """The window's summary (None when nothing ran), and a new window."""
        with self._lock:
            if self._inputs.count == 0 and not self._outputs:
                return None
            summary = DriftSummary(
                version=self._version,
                inputs=self._inputs.wire(),
                outputs={name: m.wire() for name, m in self._outputs.items()},
            )
            self._inputs, self._outputs = Moments(), {}
        return summary


def _merge(into: Moments, means: Any) -> None:
    n = int(means.size)
    mean = float(means.mean())
    into.add_batch(n, mean, float(((means - mean) ** 2).sum()) if n > 1 else 0.0)
