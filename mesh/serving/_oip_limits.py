"""What an inference request may hold: the bounds of the OIP decoder, as one layer.

:func:`mesh.serving._oip.decode_request` reads every value a client sends
through these checks, so a client's mistake (a shape that is not a list of
sizes, a boolean or an overflowing number where a size belongs, a datatype
nobody knows, data that does not fill its shape or overflows its type, a
non-finite float, a name a megabyte long) is a :class:`RequestRefused` with a
one-line reason, which the decoder answers as a 400. The bounds:

=============================  ================================================
:data:`MAX_INPUTS`             tensors in one request
:data:`MAX_RANK`               dimensions of one tensor
:data:`MAX_DIM`                one dimension
:data:`MAX_ELEMENTS`           elements of one tensor (its dims' product)
:data:`MAX_NAME_CHARS`         a tensor's name, the request's id
:data:`~mesh.core._json_limits.MAX_JSON_DEPTH`  nesting of the JSON head
=============================  ================================================

Example:
    >>> tensor_shape("x", [2, 3])
    (2, 3)
    >>> tensor_shape("x", [True, 3])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mesh.serving._oip_limits.RequestRefused: input 'x': shape must be a list of sizes ...
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "DATATYPES",
    "MAX_DIM",
    "MAX_ELEMENTS",
    "MAX_INPUTS",
    "MAX_NAME_CHARS",
    "MAX_RANK",
    "REQUEST_SCHEMA",
    "RequestRefused",
    "binary_size",
    "flag",
    "json_tensor",
    "name",
    "request_id",
    "tensor_shape",
]

MAX_INPUTS = 256
MAX_RANK = 32
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**31 - 1
MAX_NAME_CHARS = 256
#: The OIP datatypes served (``BYTES`` is not).
DATATYPES: tuple[str, ...] = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16")
DATATYPES += ("INT32", "INT64", "FP16", "FP32", "FP64")


#: The JSON form of an inference request with these bounds, for the OpenAPI document.
REQUEST_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "maxLength": MAX_NAME_CHARS},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_INPUTS,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                    "shape": {
                        "type": "array",
                        "maxItems": MAX_RANK,
                        "items": {"type": "integer", "minimum": 0, "maximum": MAX_DIM},
                    },
                    "datatype": {
                        "type": "string",
                        "enum": list(DATATYPES),
                    },
                    "data": {"type": "array"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "maxItems": MAX_INPUTS,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
    },
}


class RequestRefused(ValueError):
    """A value of the request is outside its bounds; the message is the one-line reason."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def name(what: str, value: Any) -> str:
    """A tensor's name: a string of 1 to :data:`MAX_NAME_CHARS` characters."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise RequestRefused(
            f"{what} needs a 'name' of 1 to {MAX_NAME_CHARS} characters, got {_show(value)}"
        )
    return value


def request_id(value: Any) -> str | None:
    """The request's id: absent, or a string (or integer) of at most :data:`MAX_NAME_CHARS`."""
    if value is None:
        return None
    if not (isinstance(value, str) or _is_int(value)) or len(str(value)) > MAX_NAME_CHARS:
        raise RequestRefused(f"'id' must be a string of at most {MAX_NAME_CHARS} characters")
    return str(value)


def flag(what: str, value: Any) -> bool | None:
    """A boolean parameter (absent is None)."""
    if value is None or isinstance(value, bool):
        return value
    raise RequestRefused(f"{what} must be true or false, got {_show(value)}")


def tensor_shape(tensor: str, raw: Any) -> tuple[int, ...]:
    """A shape: at most :data:`MAX_RANK` integer sizes in ``[0, MAX_DIM]``, not too many elements.

    Booleans are not sizes (``True`` is an ``int`` to Python, not to a client).
    """
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_RANK
        or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in raw)
    ):
        raise RequestRefused(
            f"input {tensor!r}: shape must be a list of sizes (at most {MAX_RANK} "
            f"integers from 0 to {MAX_DIM}), got {_show(raw)}"
        )
    if math.prod(max(d, 1) for d in raw) > MAX_ELEMENTS:
        raise RequestRefused(f"input {tensor!r}: shape {raw} is over {MAX_ELEMENTS} elements")
    return tuple(raw)


def binary_size(tensor: str, raw: Any, available: int) -> int:
    """A ``binary_data_size``: an integer number of bytes that fits in what is left."""
    if not _is_int(raw) or not 0 <= raw <= available:
        raise RequestRefused(
            f"input {tensor!r}: binary_data_size {_show(raw)} runs past the "
            f"{available} binary bytes left"
        )
    return int(raw)


def json_tensor(
    tensor: str, data: Any, dtype_name: str, datatype: str, shape: tuple[int, ...]
) -> npt.NDArray[Any]:
    """The array of a tensor sent as JSON ``data``: the right count of finite values of its type."""
    import numpy as np

    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(data, dtype=dtype_name)
    except (TypeError, ValueError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestRefused(f"input {tensor!r}: data is not {datatype}: {reason}") from None
    if array.size != math.prod(shape):
        raise RequestRefused(
            f"input {tensor!r}: {array.size} values do not fill shape {list(shape)}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestRefused(f"input {tensor!r}: data holds a number too large for {datatype}")
    return array.reshape(shape)
