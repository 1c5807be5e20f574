"""ONNX tooling: export from torch with checks, read a model's signature, validate uploads.

:func:`export_onnx` writes a torch module as ONNX at a pinned opset with a
dynamic batch axis, runs ``onnx.checker``, then compares torch with ONNX Runtime
on held-out inputs; beyond the tolerance it raises :class:`ExportParityError`
and leaves no file. :func:`load_checked` is what the registry runs on every
upload: parse, check, refuse anything that is not a self-contained ONNX model.

torch, onnx, onnxruntime and numpy are imported inside the functions, so
``import mesh`` stays light. Errors::

    MeshError
    ├── ExportError              torch could not export the model
    │   └── ExportParityError    ONNX Runtime disagrees with torch beyond tolerance
    └── InvalidModelError        bytes that are not a valid, self-contained ONNX model

Example:
    >>> report = export_onnx(model, torch.zeros(2, 4, 2, 64), "counter.onnx",
    ...                      parity_inputs=[held_out], tolerance=1e-3)  # doctest: +SKIP
    >>> report.max_abs_error < 1e-3, report.signature.inputs[0].shape   # doctest: +SKIP
    (True, ('batch', 4, 2, 64))
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent._files import atomic_path
from mesh.core._errors import MeshError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportParityError",
    "ExportReport",
    "InvalidModelError",
    "ModelSignature",
    "TensorSpec",
    "check_parity",
    "export_onnx",
    "load_checked",
    "signature_of",
]

logger = logging.getLogger(__name__)

#: The ai.onnx opset every export targets. 18 is the dynamo exporter's native
#: opset in torch 2.13 (no version conversion pass), and ONNX Runtime has run it
#: since 1.14, older than the agents' minimum (1.18).
DEFAULT_OPSET = 18
#: Name of the dynamic first axis in exported graphs.
BATCH_AXIS = "batch"


class ExportError(MeshError, RuntimeError):
    """torch could not export the model, or the exported file failed its checks."""


class ExportParityError(ExportError):
    """ONNX Runtime's outputs differ from torch's beyond the tolerance; nothing was written.

    Attributes:
        max_abs_error: the largest absolute difference over all held-out outputs.
        tolerance: the largest one allowed.
        samples: held-out samples compared.
    """

    def __init__(
        self, max_abs_error: float, tolerance: float, *, samples: int = 0, path: str = ""
    ) -> None:
        self.max_abs_error = max_abs_error
        self.tolerance = tolerance
        self.samples = samples
        where = f" to {path}" if path else ""
        super().__init__(
            f"ONNX export refused: ONNX Runtime differs from torch by max abs error "
            f"{max_abs_error:.3g} > tolerance {tolerance:.3g} on {samples} held-out samples; "
            f"nothing was written{where}"
        )


class InvalidModelError(MeshError, ValueError):
    """Bytes that are not a valid, self-contained ONNX model; nothing was registered (422)."""

    http_status = 422


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the tensor's name in the graph.
        dtype: numpy name of the element type (``"float32"``).
        shape: per axis, a size, the name of a symbolic size (``"batch"``), or None.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def batch_dynamic(self) -> bool:
        """Whether the first axis is not fixed."""
        return bool(self.shape) and not isinstance(self.shape[0], int)


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """A model's inputs and outputs, and the opset it needs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "inputs": [_spec_dict(t) for t in self.inputs],
            "outputs": [_spec_dict(t) for t in self.outputs],
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSignature:
        """Inverse of :meth:`to_dict`."""
        return cls(
            inputs=tuple(_spec_from(t) for t in data["inputs"]),
            outputs=tuple(_spec_from(t) for t in data["outputs"]),
            opset=int(data["opset"]),
        )


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}


def _spec_from(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ONNX file.
        sha256: its hex digest.
        size_bytes: its size.
        opset: the ai.onnx opset it targets.
        max_abs_error: torch vs ONNX Runtime on the held-out inputs.
        tolerance: the largest error that was allowed.
        parity_samples: held-out samples compared.
        signature: inputs and outputs of the graph.
        exporter: which torch exporter wrote it.
        drift_reference: each inference's mean input and outputs on the held-out
            inputs (:func:`~mesh.models._reference.drift_reference`), for the
            version's ``lineage.extra["drift_reference"]``; None if not computed.
    """

    path: Path
    sha256: str
    size_bytes: int
    opset: int
    max_abs_error: float
    tolerance: float
    parity_samples: int
    signature: ModelSignature
    exporter: str = "torch.onnx (dynamo)"
    drift_reference: dict[str, Any] | None = None


def _require(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(
            f"{name} is needed to export or check ONNX models: pip install 'fogmesh[cloud]' ({exc})"
        ) from exc


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, ValueError, TypeError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _tensor_spec(value_info: Any) -> TensorSpec:
    tensor = value_info.type.tensor_type
    shape: list[int | str | None] = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(str(dim.dim_param))
            else:
                shape.append(None)
    return TensorSpec(name=value_info.name, dtype=_dtype_name(tensor.elem_type), shape=tuple(shape))


def signature_of(model: Any) -> ModelSignature:
    """Read the inputs, outputs and ai.onnx opset of an ``onnx.ModelProto``.

    Initializers listed as graph inputs (old exporters did that) are not inputs.
    """
    initializers = {init.name for init in model.graph.initializer}
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelSignature(
        inputs=tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers),
        outputs=tuple(_tensor_spec(v) for v in model.graph.output),
        opset=opset,
    )


def load_checked(data: bytes) -> Any:
    """Parse ``data`` as ONNX and run the full ``onnx.checker``; returns the ModelProto.

    Raises:
        InvalidModelError: not protobuf, fails the checker, has no inputs or
            outputs, or keeps weights in external files (an artifact must be one file).
    """
    onnx = _require("onnx")

    if not data:
        raise InvalidModelError("empty upload: expected an ONNX model file")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # untrusted bytes: any parser failure is a refusal
        raise InvalidModelError(
            f"not an ONNX model: cannot parse {len(data)} bytes ({exc})"
        ) from exc
    if not model.graph.node and not model.graph.output:
        # protobuf parses many byte strings as an empty message
        raise InvalidModelError(f"not an ONNX model: {len(data)} bytes hold no graph")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, SchemaError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"ONNX checker refused the model: {first}") from exc
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise InvalidModelError(
            f"the model keeps {len(external)} tensors in external data files "
            f"(e.g. {external[0]!r}); re-export with external_data=False"
        )
    signature = signature_of(model)
    if not signature.inputs or not signature.outputs:
        raise InvalidModelError("the ONNX graph has no inputs or no outputs")
    return model


def ort_session(
    source: bytes | str | Path, *, threads: int = 1, provider: str = "CPUExecutionProvider"
) -> Any:
    """An ONNX Runtime session on one provider with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, sess_options=options, providers=[provider])


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _flatten_outputs(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _flatten_outputs(item)]
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _flatten_outputs(value[key])]
    return [value]


def _parity(
    model: torch.nn.Module,
    session: Any,
    batches: Sequence[tuple[Any, ...]],
) -> tuple[float, int]:
    import numpy as np
    import torch

    names = [i.name for i in session.get_inputs()]
    worst, samples = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            if len(batch) != len(names):
                raise ExportError(f"{len(batch)} tensors for the graph's inputs {names}")
            expected = [t.detach().cpu().numpy() for t in _flatten_outputs(model(*batch))]
            feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, batch, strict=True)}
            got = session.run(None, feeds)
            if len(got) != len(expected):
                raise ExportError(
                    f"ONNX graph has {len(got)} outputs, torch returned {len(expected)}"
                )
            for ours, theirs in zip(got, expected, strict=True):
                if ours.shape != theirs.shape:
                    raise ExportError(
                        f"ONNX output shape {ours.shape} != torch output shape {theirs.shape}"
                    )
                if ours.size:
                    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
                    worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
            samples += int(batch[0].shape[0]) if batch[0].dim() else 1
    return worst, samples


def check_parity(
    model: torch.nn.Module,
    onnx_model: bytes | str | Path,
    inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]],
    *,
    tolerance: float = 1e-4,
) -> tuple[float, int]:
    """Run ``inputs`` through ``model`` and the ONNX model (CPU provider); compare.

    Returns:
        The max abs error over every output element, and the samples compared.

    Raises:
        ExportParityError: the error is above ``tolerance`` (or NaN).
        ExportError: the outputs differ in number or shape.

    Example:
        >>> error, n = check_parity(model, "counter.onnx", [x_val])  # doctest: +SKIP
    """
    _require("onnxruntime")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    batches = [tuple(t.detach().to("cpu") for t in _as_tuple(b)) for b in inputs]
    if not batches:
        raise ExportError("check_parity needs at least one batch of held-out inputs")
    try:
        error, samples = _parity(cpu_model, ort_session(onnx_model), batches)
    except MeshError:
        raise
    except Exception as exc:  # ORT's own error types: load or run failed
        raise ExportError(f"ONNX Runtime cannot run the model on these inputs: {exc}") from exc
    if not error <= tolerance:  # also refuses NaN
        raise ExportParityError(error, tolerance, samples=samples)
    return error, samples


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    parity_inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path``, checked and compared with torch.

    The model is copied to the CPU in eval mode (the caller's stays as it was).
    The file is written beside ``path`` and renamed into place only after it
    passed ``onnx.checker`` and the parity check, so a failed export leaves nothing.

    Args:
        model: the torch module.
        example_input: one input tensor (or a tuple, one per graph input) to trace with.
        path: where the ``.onnx`` file goes.
        opset: ai.onnx opset to target (pinned; see :data:`DEFAULT_OPSET`).
        input_names: graph input names, one per tensor of ``example_input``.
        output_names: graph output names.
        dynamic_batch: make the first axis of every input and output symbolic (``"batch"``).
        parity_inputs: held-out batches (tensors or tuples) run through torch and
            ONNX Runtime; batches of different sizes also exercise the dynamic axis.
            None = ``example_input`` alone (weak: pass real held-out data).
        tolerance: the largest max-abs difference allowed.

    Raises:
        ExportError: torch failed to export, or the checker refused the file.
        ExportParityError: outputs differ beyond ``tolerance`` (carries the figure).

    Example:
        >>> report = export_onnx(model, x[:2], "m.onnx", parity_inputs=[x_val[:1], x_val[:7]])
        ... # doctest: +SKIP
    """
    torch = _require("torch")
    target = Path(path)
    example = _as_tuple(example_input)
    if len(input_names) != len(example):
        raise ExportError(f"{len(input_names)} input names for {len(example)} example inputs")
    if tolerance < 0:
        raise ExportError(f"tolerance must be >= 0, got {tolerance}")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    example = tuple(t.detach().to("cpu") for t in example)
    batches = [
        tuple(t.detach().to("cpu") for t in _as_tuple(b))
        for b in (parity_inputs if parity_inputs is not None else [example])
    ]
    if not batches:
        raise ExportError("parity_inputs is empty: pass held-out batches (or None)")
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 16)
        dynamic_shapes = tuple({0: batch} for _ in example)
    # Written to a temporary file beside the target, renamed over it only once checked.
    with atomic_path(target) as tmp:
        try:
            # The dynamo (torch.export) exporter, deliberately: it is torch's
            # supported default since 2.9, its native opset is our pinned 18, and it
            # names the symbolic batch axis from torch.export.Dim. The legacy
            # TorchScript exporter (dynamo=False) is deprecated, warns on every call
            # and is slated for removal; its only edge is speed (0.2 s vs ~1.5 s),
            # which does not matter after a training run.
            torch.onnx.export(
                cpu_model,
                example,
                str(tmp),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                external_data=False,  # one self-contained artifact file
                optimize=True,
                verbose=False,
                report=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {target.name}: {exc}") from exc
        data = tmp.read_bytes()
        try:
            proto = load_checked(data)
        except InvalidModelError as exc:
            raise ExportError(f"exported {target.name} failed the ONNX checks: {exc}") from exc
        signature = signature_of(proto)
        if signature.opset != opset:
            raise ExportError(f"exported opset {signature.opset}, asked for {opset}")
        if dynamic_batch and not all(t.batch_dynamic for t in signature.inputs):
            raise ExportError(
                f"the batch axis of {target.name} was not exported as dynamic: "
                f"{[t.shape for t in signature.inputs]}"
            )
        del proto
        try:
            error, samples = _parity(cpu_model, ort_session(data), batches)
        except MeshError:
            raise
        except Exception as exc:  # ORT's own error types: load or run failed
            raise ExportError(
                f"ONNX Runtime cannot run the exported {target.name} on the held-out inputs: {exc}"
            ) from exc
        if not error <= tolerance:  # also refuses NaN
            raise ExportParityError(error, tolerance, samples=samples, path=str(target))
    sha256 = hashlib.sha256(data).hexdigest()
    reference = _reference(data, batches, target)
    logger.info(
        "exported %s (sha256 %s, opset %d, %d bytes): max abs error %.3g on %d samples",
        target,
        sha256[:12],
        opset,
        len(data),
        error,
        samples,
    )
    return ExportReport(
        path=target,
        sha256=sha256,
        size_bytes=len(data),
        opset=opset,
        max_abs_error=error,
        tolerance=tolerance,
        parity_samples=samples,
        signature=signature,
        drift_reference=reference,
    )


def _reference(data: bytes, batches: Sequence[tuple[Any, ...]], target: Path) -> Any:
    """The drift reference on the held-out batches; None (with a warning) if it fails."""
    from mesh.models._reference import drift_reference

    try:
        return drift_reference(data, batches)
    except Exception as exc:  # the export stands without it
        logger.warning("%s: no drift reference: %s", target.name, exc)
        return None
