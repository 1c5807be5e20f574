"""The Open Inference Protocol (KServe v2 / Triton HTTP): tensors, bodies, errors.

Shared by the replica server (:mod:`mesh.serving.replica._server`) and the gateway
(:mod:`mesh.serving._gateway`): decoding an inference request (JSON tensors, and the
binary tensor extension: a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw little-endian tensors), checking it against a model's
signature, encoding the response, and the metadata documents. Errors (statuses
declared on each class; :mod:`mesh.core._http_errors` maps them and writes the
body, ``{"error": "<message>", ...}`` as tritonclient expects)::

    MeshError
    └── ServingError                   serving could not answer (500)
        ├── InferenceInputError        bad body or tensors (400; names the expected signature)
        ├── ModelNotServedError        no such model or version is served (404)
        ├── ModelNotReadyError         known, but no replica is ready (503)
        ├── OverloadedError            the replica's or agent's queue is full (503)
        └── UpstreamError              the replica or agent failed (502)
            └── UpstreamTimeoutError   it did not answer in time (504)

Example:
    >>> import numpy as np
    >>> body, header_len = encode_response("m", "v1", None, {"y": np.ones(2, np.float32)},
    ...                                    requested=None, binary=False)
    >>> json.loads(body)["outputs"][0]["datatype"], header_len
    ('FP32', None)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.core._errors import MeshError
from mesh.core._json_limits import JsonLimitError, loads_bounded
from mesh.models._export import ModelSignature, TensorSpec
from mesh.serving import _oip_limits as limits

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "HEADER_LENGTH",
    "InferenceInputError",
    "ModelNotReadyError",
    "ModelNotServedError",
    "OipRequest",
    "OverloadedError",
    "RequestedOutput",
    "ServingError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "check_inputs",
    "decode_request",
    "decode_response",
    "describe_signature",
    "encode_request",
    "encode_response",
    "model_metadata",
    "oip_datatype",
    "ort_signature",
    "parse_model_path",
]

#: Header of the binary tensor extension: length of the JSON part of the body.
HEADER_LENGTH = "inference-header-content-length"

_TO_OIP: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
_FROM_OIP: dict[str, str] = {v: k for k, v in _TO_OIP.items()}
_ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
}


# ---------------------------------------------------------------- errors


class ServingError(MeshError):
    """Serving could not answer an inference or metadata request."""

    http_status = 500


class InferenceInputError(ServingError, ValueError):
    """The request body or its tensors do not fit the model (HTTP 400).

    Attributes:
        model: the model asked for.
        expected: the model's inputs as text, e.g. ``["x: FP32[-1,4]"]`` (may be empty).
    """

    http_status = 400

    def __init__(self, model: str, problem: str, expected: Sequence[str] = ()) -> None:
        self.model = model
        self.problem = problem
        self.expected = list(expected)
        detail = f"; expected inputs {', '.join(self.expected)}" if self.expected else ""
        super().__init__(f"bad inference request for {model!r}: {problem}{detail}")


class ModelNotServedError(ServingError, LookupError):
    """No such model (or version of it) is served (HTTP 404)."""

    http_status = 404

    def __init__(self, model: str, version: str | None = None, served: Sequence[str] = ()) -> None:
        self.model = model
        self.version = version
        self.served = sorted(served)
        listing = ", ".join(self.served) or "none"
        if version is None:
            message = f"model {model!r} is not served (served: {listing})"
        else:
            message = f"model {model!r} version {version!r} is not served (served: {listing})"
        super().__init__(message)


class ModelNotReadyError(ServingError):
    """The model is deployed but no replica or agent is ready for it (HTTP 503).

    Attributes:
        model: the model, if known.
        node: the agent that is not ready, if known.
    """

    http_status = 503

    def __init__(self, message: str, *, model: str | None = None, node: str | None = None) -> None:
        self.model = model
        self.node = node
        super().__init__(message)


class OverloadedError(ServingError):
    """The replica's or agent's queue is full (HTTP 503); another endpoint may answer.

    Attributes:
        model: the model, if known.
        node: the agent (or replica node) that is full, if known.
    """

    http_status = 503

    def __init__(self, message: str, *, model: str | None = None, node: str | None = None) -> None:
        self.model = model
        self.node = node
        super().__init__(message)


class UpstreamError(ServingError):
    """The replica or agent serving the model failed (HTTP 502).

    Attributes:
        model: the model.
        node: the node (replica node id or agent id) that failed, if known.
    """

    http_status = 502

    def __init__(self, message: str, *, model: str, node: str | None = None) -> None:
        self.model = model
        self.node = node
        super().__init__(message)


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The replica or agent did not answer in time (HTTP 504)."""

    http_status = 504


# ---------------------------------------------------------------- signatures


def oip_datatype(numpy_name: str) -> str:
    """The OIP datatype of a numpy dtype name (``float32`` -> ``FP32``)."""
    return _TO_OIP.get(numpy_name, numpy_name.upper())


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def describe_signature(specs: Sequence[TensorSpec]) -> list[str]:
    """Tensors as text, e.g. ``["occupancy: FP32[-1,4,8,32]"]``."""
    return [f"{s.name}: {oip_datatype(s.dtype)}[{','.join(map(str, _dims(s)))}]" for s in specs]


def ort_signature(session: Any, opset: int = 0) -> ModelSignature:
    """The signature of an ONNX Runtime session (symbolic or unknown sizes become names)."""

    def spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
        return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)

    return ModelSignature(
        inputs=tuple(spec(a) for a in session.get_inputs()),
        outputs=tuple(spec(a) for a in session.get_outputs()),
        opset=opset,
    )


def check_inputs(
    model: str, inputs: Mapping[str, npt.NDArray[Any]], signature: Sequence[TensorSpec]
) -> None:
    """Refuse inputs whose names, dtypes or shapes do not fit ``signature``.

    Raises:
        InferenceInputError: naming the first problem and the expected inputs.
    """
    expected = {s.name: s for s in signature}
    problems: list[str] = []
    missing = [name for name in expected if name not in inputs]
    unknown = [name for name in inputs if name not in expected]
    if missing:
        problems.append(f"missing input {', '.join(map(repr, missing))}")
    if unknown:
        problems.append(f"unknown input {', '.join(map(repr, unknown))}")
    for name, array in inputs.items():
        spec = expected.get(name)
        if spec is None:
            continue
        if array.dtype.name != spec.dtype:
            problems.append(
                f"input {name!r} has datatype {oip_datatype(array.dtype.name)}, "
                f"not {oip_datatype(spec.dtype)}"
            )
            continue
        dims = _dims(spec)
        fits = len(dims) == array.ndim and all(
            d < 0 or d == n for d, n in zip(dims, array.shape, strict=True)
        )
        if not fits:
            problems.append(
                f"input {name!r} has shape {list(array.shape)}, not [{','.join(map(str, dims))}]"
            )
    if problems:
        raise InferenceInputError(model, "; ".join(problems), describe_signature(signature))


def model_metadata(
    name: str,
    versions: Sequence[str],
    signature: ModelSignature,
    *,
    platform: str = "onnxruntime_onnx",
) -> dict[str, Any]:
    """The OIP model metadata document."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [
            {"name": s.name, "datatype": oip_datatype(s.dtype), "shape": _dims(s)}
            for s in signature.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": oip_datatype(s.dtype), "shape": _dims(s)}
            for s in signature.outputs
        ],
    }


# ---------------------------------------------------------------- requests

_MODEL_ACTIONS = frozenset({"infer", "ready", "config", "stats"})


def parse_model_path(path: str) -> tuple[str, str | None, str] | None:
    """Split ``/v2/models/{name}[/versions/{v}][/{action}]`` (an ASGI, decoded path).

    Returns:
        ``(name, version or None, action)`` with action ``""`` for the metadata
        route; None when the path is not a model route.

    Example:
        >>> parse_model_path("/v2/models/counter/versions/v2/infer")
        ('counter', 'v2', 'infer')
    """
    prefix = "/v2/models/"
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].split("/")
    name = parts[0]
    if not name:
        return None
    version: str | None = None
    rest = parts[1:]
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = rest[1], rest[2:]
    if not rest or rest == [""]:
        return name, version, ""
    if len(rest) == 1 and rest[0] in _MODEL_ACTIONS:
        return name, version, rest[0]
    return None


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary."""

    name: str
    binary: bool | None = None


@dataclass(slots=True)
class OipRequest:
    """A decoded inference request.

    Attributes:
        id: the request id, echoed in the response.
        inputs: input arrays by name, in request order.
        outputs: the outputs asked for; None means all.
        binary: the default for outputs (``binary_data_output``).
        parameters: the request's other parameters.
    """

    id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    outputs: list[RequestedOutput] | None = None
    binary: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def _numpy() -> Any:
    import numpy

    return numpy


def _decode_input(item: Any, binary: memoryview, offset: int) -> tuple[str, npt.NDArray[Any], int]:
    np = _numpy()
    if not isinstance(item, dict):
        raise limits.RequestRefused("each input needs a 'name', 'shape' and 'datatype'")
    name = limits.name("each input", item.get("name"))
    datatype = item.get("datatype")
    dtype_name = _FROM_OIP.get(datatype) if isinstance(datatype, str) else None
    if dtype_name is None or not isinstance(datatype, str):
        raise limits.RequestRefused(
            f"input {name!r}: unsupported datatype {str(datatype)[:32]!r} "
            f"(supported: {', '.join(sorted(_FROM_OIP))})"
        )
    shape = limits.tensor_shape(name, item.get("shape"))
    count = math.prod(shape)
    dtype = np.dtype(dtype_name).newbyteorder("<")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise limits.RequestRefused(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        size = limits.binary_size(name, size, len(binary) - offset)
        if size != count * dtype.itemsize:
            raise limits.RequestRefused(
                f"input {name!r}: {size} bytes do not hold "
                f"{count} {datatype} values of shape {list(shape)}"
            )
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return name, array, offset + size
    if "data" not in item:
        raise limits.RequestRefused(f"input {name!r} has neither 'data' nor 'binary_data_size'")
    return name, limits.json_tensor(name, item["data"], dtype_name, datatype, shape), offset


def decode_request(model: str, body: bytes, header_length: int | None = None) -> OipRequest:
    """Decode an inference request body (JSON, or JSON + binary tensors).

    Every value is read through the bounds of :mod:`mesh.serving._oip_limits`
    (the JSON head's nesting depth is checked before it is parsed).

    Args:
        model: the model's name, for messages.
        body: the HTTP body.
        header_length: the ``Inference-Header-Content-Length`` value, if sent.

    Raises:
        InferenceInputError: malformed JSON, tensors or binary sizes, or a value
            outside its bounds (one line naming it).
    """
    try:
        return _decode_request(body, header_length)
    except (limits.RequestRefused, JsonLimitError) as exc:
        raise InferenceInputError(model, str(exc)) from None


def _decode_request(body: bytes, header_length: int | None) -> OipRequest:
    if header_length is not None and not 0 < header_length <= len(body):
        raise limits.RequestRefused(
            f"Inference-Header-Content-Length {header_length} is outside the {len(body)}-byte body"
        )
    head = body if header_length is None else body[:header_length]
    try:
        doc = loads_bounded(head)
    except JsonLimitError as exc:
        raise limits.RequestRefused(f"the body is not acceptable JSON: {exc}") from None
    inputs_doc = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs_doc, list) or not 0 < len(inputs_doc) <= limits.MAX_INPUTS:
        raise limits.RequestRefused(
            "the body must be an object with a non-empty 'inputs' list "
            f"(at most {limits.MAX_INPUTS} tensors)"
        )
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    inputs: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for item in inputs_doc:
        name, array, offset = _decode_input(item, binary, offset)
        if name in inputs:
            raise limits.RequestRefused(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise limits.RequestRefused(
            f"{len(binary) - offset} binary bytes follow the inputs' binary_data_size"
        )
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise limits.RequestRefused("'parameters' must be an object")
    outputs: list[RequestedOutput] | None = None
    outputs_doc = doc.get("outputs")
    if outputs_doc:
        if not isinstance(outputs_doc, list) or len(outputs_doc) > limits.MAX_INPUTS:
            raise limits.RequestRefused(
                f"'outputs' must be a list of at most {limits.MAX_INPUTS} outputs"
            )
        outputs = []
        for item in outputs_doc:
            if not isinstance(item, dict):
                raise limits.RequestRefused("each requested output needs a 'name'")
            params = item.get("parameters") or {}
            binary_flag = params.get("binary_data") if isinstance(params, dict) else None
            outputs.append(
                RequestedOutput(
                    limits.name("each requested output", item.get("name")),
                    limits.flag("binary_data", binary_flag),
                )
            )
    return OipRequest(
        id=limits.request_id(doc.get("id")),
        inputs=inputs,
        outputs=outputs,
        binary=bool(limits.flag("binary_data_output", parameters.get("binary_data_output"))),
        parameters=parameters,
    )


def encode_request(
    inputs: Mapping[str, npt.NDArray[Any]], *, binary: bool = True, binary_output: bool = False
) -> tuple[bytes, int | None]:
    """An inference request body for ``inputs`` (what tritonclient sends); for clients and tests.

    Returns:
        The body and the ``Inference-Header-Content-Length`` (None for pure JSON).
    """
    np = _numpy()
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in inputs.items():
        arr = np.ascontiguousarray(array)
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(arr.shape),
            "datatype": oip_datatype(arr.dtype.name),
        }
        if binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"inputs": entries}
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_response(
    model: str,
    version: str | None,
    request_id: str | None,
    outputs: Mapping[str, npt.NDArray[Any]],
    *,
    requested: Sequence[RequestedOutput] | None,
    binary: bool,
) -> tuple[bytes, int | None]:
    """The response body for ``outputs``.

    Args:
        model: the model's name.
        version: its version.
        request_id: the request's id, echoed back.
        outputs: output arrays by name.
        requested: the outputs asked for (None: all, in model order).
        binary: the default format of outputs that do not say.

    Returns:
        The body and the ``Inference-Header-Content-Length`` when binary tensors follow
        the JSON (None for pure JSON).

    Raises:
        InferenceInputError: an output was asked for that the model does not have.
    """
    if requested is None:
        chosen = [(name, binary) for name in outputs]
    else:
        unknown = [r.name for r in requested if r.name not in outputs]
        if unknown:
            raise InferenceInputError(
                model,
                f"unknown output {', '.join(map(repr, unknown))} (outputs: {', '.join(outputs)})",
            )
        chosen = [(r.name, binary if r.binary is None else r.binary) for r in requested]
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in chosen:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": oip_datatype(array.dtype.name),
            "shape": list(array.shape),
        }
        if as_binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "outputs": entries}
    if version is not None:
        doc["model_version"] = version
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def decode_response(body: bytes, header_length: int | None = None) -> dict[str, npt.NDArray[Any]]:
    """Output arrays of a response body (for clients and tests)."""
    np = _numpy()
    head = body if header_length is None else body[:header_length]
    doc = json.loads(head)
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    out: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for item in doc["outputs"]:
        dtype = np.dtype(_FROM_OIP[item["datatype"]]).newbyteorder("<")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[item["name"]] = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(
                item["shape"]
            )
            offset += size
        else:
            out[item["name"]] = np.asarray(item["data"], dtype=dtype).reshape(item["shape"])
    return out
