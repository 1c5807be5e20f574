"""A version's drift reference, taken from its validation inputs at export.

The control plane's drift check compares what a module computes live with what
it computed on its validation data: each inference's mean input value and mean
output value (one per row of the batch axis, as agents summarise them,
:mod:`edge_agent._drift_stats`), as a mean and a standard deviation. A training
function records it in the version's lineage::

    registry.register(..., lineage=Lineage(..., extra={
        "drift_reference": report.drift_reference}))

where ``report`` is :func:`~mesh.models._export.export_onnx`'s, which computes
it from the held-out inputs of its parity check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["drift_reference"]


def _numpy(value: Any) -> Any:
    import numpy as np

    detach = getattr(value, "detach", None)  # a torch tensor
    if callable(detach):
        value = detach().cpu().numpy()
    return np.asarray(value)


def _row_means(array: Any) -> Any:
    rows = array.reshape(array.shape[0], -1) if array.ndim >= 2 else array.reshape(1, -1)
    return rows.mean(axis=1, dtype="float64")


def _stats(values: list[Any]) -> dict[str, float] | None:
    import numpy as np

    if not values:
        return None
    joined = np.concatenate(values)
    joined = joined[np.isfinite(joined)]
    if joined.size == 0:
        return None
    return {"mean": float(joined.mean()), "std": float(joined.std())}


def drift_reference(
    onnx_model: bytes | str | Path,
    inputs: Sequence[Any],
    *,
    error: float | None = None,
) -> dict[str, Any]:
    """The reference of a model's per-inference mean input and outputs on ``inputs``.

    Args:
        onnx_model: the ONNX model (bytes or a path).
        inputs: batches of validation inputs, each an array (numpy or torch) or a
            tuple of them, one per graph input.
        error: the validation error (MAE) to record, if known.

    Returns:
        ``{"inputs": {"mean", "std"}, "outputs": {"mean", "std"} (the first output),
        "by_output": {name: {"mean", "std"}}, "error": error, "samples": n}``.

    Raises:
        ValueError: no batches, or a batch that does not fit the graph's inputs.

    Example:
        >>> ref = drift_reference("counter.onnx", [x_val])  # doctest: +SKIP
        >>> ref["outputs"]                                    # doctest: +SKIP
        {'mean': 3.1, 'std': 1.7}
    """
    import onnxruntime as ort

    if not inputs:
        raise ValueError("drift_reference needs at least one batch of validation inputs")
    if error is not None and not math.isfinite(error):
        raise ValueError(f"error must be a finite number, got {error!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    seen_in: list[Any] = []
    seen_out: dict[str, list[Any]] = {name: [] for name in outputs}
    samples = 0
    for batch in inputs:
        arrays = [_numpy(t) for t in (batch if isinstance(batch, list | tuple) else (batch,))]
        if len(arrays) != len(names):
            raise ValueError(f"a batch of {len(arrays)} tensor(s) for the graph's inputs {names}")
        got = session.run(None, dict(zip(names, arrays, strict=True)))
        seen_in.append(_row_means(arrays[0]))
        for name, array in zip(outputs, got, strict=True):
            seen_out[name].append(_row_means(array))
        samples += int(arrays[0].shape[0]) if arrays[0].ndim else 1
    by_output = {name: s for name, values in seen_out.items() if (s := _stats(values))}
    return {
        "inputs": _stats(seen_in),
        "outputs": by_output.get(outputs[0]) if outputs else None,
        "by_output": by_output,
        "error": error,
        "samples": samples,
    }
