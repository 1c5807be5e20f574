r"""Binary frames and tensors of the MQTT contract (standard library only).

A frame is ``MAGIC`` (4 bytes) + header length (uint32 little-endian) + a JSON
header object (with ``tensors``: a list of ``{name, dtype, shape}``) + the raw
little-endian C-order bytes of each tensor in header order. A payload that
starts with ``{`` is a header-only frame. Use it through
:mod:`edge_agent.protocol`, which re-exports these names.

Example:
    >>> frame = pack_frame({"kind": "x"}, [Tensor("a", "uint8", (2,), b"\x01\x02")])
    >>> header, tensors = unpack_frame(frame)
    >>> header["kind"], bytes(tensors[0].data)
    ('x', b'\x01\x02')
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DTYPES",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_NAME_CHARS",
    "MAX_RANK",
    "MAX_TENSORS",
    "ErrorCode",
    "FrameTemplate",
    "ProtocolError",
    "Tensor",
    "pack_frame",
    "peek_header",
    "unpack_frame",
]

MAGIC = b"FMF\x01"
"""First bytes of a binary frame: 'FMF' + frame format version 1."""

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024
MAX_TENSORS = 64
"""Most tensors one frame may carry."""
MAX_RANK = 32
"""Most dimensions a tensor may have (ONNX Runtime's own limit is near)."""
MAX_NAME_CHARS = 256
"""Longest tensor name."""
_HEADER_LEN = struct.Struct("<I")

DTYPES: dict[str, int] = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}
"""Tensor dtypes on the wire (numpy names) and their item sizes in bytes."""


class ErrorCode(StrEnum):
    """Machine-readable error codes in replies and observed state."""

    MALFORMED = "malformed"
    """Not valid JSON / not a frame."""
    SCHEMA_VERSION = "schema_version"
    """``schema_version`` missing or not :data:`SCHEMA_VERSION`."""
    BAD_REQUEST = "bad_request"
    """Valid JSON but not the message expected (missing/invalid fields)."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_MODULE = "unknown_module"
    BAD_INPUT = "bad_input"
    """Tensor names, dtypes or shapes do not fit the module's signature."""
    OVERLOADED = "overloaded"
    """The module's queue is full."""
    EXPIRED = "expired"
    NOT_READY = "not_ready"
    INTEGRITY = "integrity"
    """Artifact sha256 or signature check failed."""
    DOWNLOAD = "download"
    UNSUPPORTED = "unsupported"
    """The device cannot run this module (provider, opset, operator)."""
    OFFLOAD_FAILED = "offload_failed"
    INTERNAL = "internal"


class ProtocolError(ValueError):
    """A message could not be accepted; ``code`` says why, the message how.

    Attributes:
        code: The :class:`ErrorCode`.
        reason: Human-readable reason, naming what was expected.
    """

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor as raw little-endian C-order bytes.

    Example:
        >>> Tensor("x", "int32", (2,), bytes(8)).nbytes
        8
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview

    @property
    def nbytes(self) -> int:
        """Size the data must have: prod(shape) * itemsize."""
        return math.prod(self.shape) * DTYPES[self.dtype]

    def to_numpy(self) -> npt.NDArray[Any]:
        """A read-only numpy view of the data (numpy is imported lazily)."""
        tables = _NUMPY or _numpy_tables()
        dt = tables.dtypes.get(self.dtype)
        if dt is None:  # not a wire dtype: let numpy say what is wrong with it
            import numpy as np

            dt = np.dtype(self.dtype).newbyteorder("<")
        return tables.frombuffer(self.data, dtype=dt).reshape(self.shape)

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray[Any, Any]) -> Tensor:
        """Wrap a numpy array (converted to little-endian C order if it is not)."""
        # The common case (little-endian, C order, not empty) is a zero-copy view
        # named from a table: numpy's dtype.name alone costs microseconds.
        dtype = (_NUMPY or _numpy_tables()).by_dtype.get(array.dtype)
        if dtype is not None and array.size:
            view = array.data
            if view.c_contiguous:
                return cls(name, dtype, array.shape, view.cast("B"))
        import numpy as np

        dtype = array.dtype.name
        if dtype not in DTYPES:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"tensor {name!r}: dtype {dtype} unsupported")
        arr = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        data = arr.data.cast("B") if arr.size else b""  # a view of no bytes cannot be cast
        return cls(name, dtype, tuple(int(d) for d in arr.shape), data)


class _NumpyTables:
    """numpy, imported on first use, and the wire dtypes looked up once.

    ``np.dtype(name)`` and ``dtype.name`` each cost microseconds, on every tensor
    of every request; dictionary lookups do not.
    """

    __slots__ = ("by_dtype", "dtypes", "frombuffer")

    def __init__(self) -> None:
        import numpy as np

        self.frombuffer = np.frombuffer
        self.dtypes = {n: np.dtype(n).newbyteorder("<") for n in DTYPES}
        # dtype('<f4') -> 'float32'; a dtype equal to one of these (float32 on a
        # little-endian machine) finds it too. Byte order is part of equality,
        # '|' (one byte) included, so a big-endian dtype is not found.
        self.by_dtype: dict[Any, str] = {dt: n for n, dt in self.dtypes.items()}


_NUMPY: _NumpyTables | None = None


def _numpy_tables() -> _NumpyTables:
    global _NUMPY
    _NUMPY = _NumpyTables()
    return _NUMPY


_JSON = json.JSONEncoder(separators=(",", ":"))
# json.dumps builds its C encoder anew on every call, through three Python-level
# calls; one built here (no circular-reference check) writes the same text.
_C_ENCODE = (
    c_make_encoder(None, _JSON.default, encode_basestring_ascii, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)


def _dumps_str(obj: dict[str, Any]) -> str:
    """``json.dumps(obj, separators=(",", ":"))``."""
    if _C_ENCODE is None:
        return _JSON.encode(obj)
    return "".join(_C_ENCODE(obj, 0))


def _dumps(obj: dict[str, Any]) -> bytes:
    """``json.dumps(obj, separators=(",", ":")).encode()``."""
    return _dumps_str(obj).encode()


# (name, dtype, shape) -> (the tensor's JSON in a header, its size in bytes): a
# client or a module sends the same few kinds of tensor again and again.
_METAS: dict[tuple[Any, Any, Any], tuple[str, int]] = {}


def _meta(t: Tensor) -> tuple[str, int]:
    key = (t.name, t.dtype, t.shape)
    try:
        return _METAS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable shape (a list): not cached
        key = None  # type: ignore[assignment]
    size = DTYPES.get(t.dtype)
    if size is None:
        raise ProtocolError(ErrorCode.BAD_INPUT, f"tensor {t.name!r}: unknown dtype {t.dtype}")
    meta = (
        _dumps_str({"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}),
        math.prod(t.shape) * size,
    )
    if key is not None:
        if len(_METAS) >= 1024:
            _METAS.clear()
        _METAS[key] = meta
    return meta


_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # raw_decode, less a frame


def _loads(raw: bytes) -> Any:
    """``json.loads(raw)``, without its pure-Python steps in the usual case.

    A frame header is UTF-8 with nothing around the object; anything else
    (another encoding, whitespace, an error) goes through ``json.loads`` itself.
    """
    try:
        text = raw.decode()
        obj, end = _SCAN(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError, not JSON
        return json.loads(raw)
    return obj if end == len(text) else json.loads(raw)


def pack_frame(header: Mapping[str, Any], tensors: Sequence[Tensor] = ()) -> bytes:
    """Encode a header (its ``tensors`` field is filled in) and tensors as one frame.

    Raises:
        ProtocolError: BAD_INPUT when a tensor's data does not match its dtype/shape.
    """
    if type(header) is dict and "tensors" not in header:
        # The header's JSON, its closing brace left for the tensors' (cached) JSON.
        text = _dumps_str(header)
        return frame_with_head(f"{text[:-1]}," if header else "{", tensors)
    metas = [
        {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors
    ]  # keeps the position of a "tensors" field already there
    parts: list[bytes | memoryview] = [MAGIC, b"", b""]
    for t in tensors:
        parts.append(_tensor_data(t))
    head = _dumps({**header, "tensors": metas})
    parts[1] = _HEADER_LEN.pack(len(head))
    parts[2] = head
    return b"".join(parts)


def _tensor_data(t: Tensor) -> bytes | memoryview:
    """The bytes of ``t``, checked against its dtype and shape."""
    _, nbytes = _meta(t)
    data = t.data
    if len(data) != nbytes:
        raise ProtocolError(
            ErrorCode.BAD_INPUT,
            f"tensor {t.name!r}: {len(data)} bytes, {t.dtype}{list(t.shape)} needs {nbytes}",
        )
    return bytes(data) if isinstance(data, memoryview) and not data.c_contiguous else data


def frame_with_head(head: str, tensors: Sequence[Tensor] = ()) -> bytes:
    """A frame whose JSON header starts with ``head``: ``{`` then fields, each followed by ``,``.

    The ``tensors`` field (from a cache) and the closing brace are added, so
    ``frame_with_head('{"kind":"x",', ts)`` is ``pack_frame({"kind": "x"}, ts)``.
    A sender that writes the same fields every time can keep their JSON text
    and save encoding a dict per frame.

    Raises:
        ProtocolError: BAD_INPUT when a tensor's data does not match its dtype/shape.
    """
    if len(tensors) == 1:  # the usual case, without the loop
        t = tensors[0]
        meta, nbytes = _meta(t)
        data = t.data
        if len(data) != nbytes:
            _tensor_data(t)  # raises
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = bytes(data)
        head_bytes = f'{head}"tensors":[{meta}]}}'.encode()
        return b"".join((MAGIC, _HEADER_LEN.pack(len(head_bytes)), head_bytes, data))
    metas = []
    parts: list[bytes | memoryview] = [MAGIC, b"", b""]
    for t in tensors:
        metas.append(_meta(t)[0])
        parts.append(_tensor_data(t))
    head_bytes = f'{head}"tensors":[{",".join(metas)}]}}'.encode()
    parts[1] = _HEADER_LEN.pack(len(head_bytes))
    parts[2] = head_bytes
    return b"".join(parts)


class FrameTemplate:
    r"""Frames whose headers share fixed fields, whose JSON is written once.

    ``template.encode(fields, tensors)`` is ``pack_frame({**fixed, **fields},
    tensors)`` (the fixed fields first), for a sender that sends the same kind of
    message again and again, e.g. requests to one module from one client.

    Example:
        >>> t = FrameTemplate({"kind": "infer_request", "module": "m"})
        >>> frame = t.encode({"id": "1"}, [Tensor("x", "uint8", (1,), b"\x07")])
        >>> frame == pack_frame({"kind": "infer_request", "module": "m", "id": "1"},
        ...                     [Tensor("x", "uint8", (1,), b"\x07")])
        True
    """

    __slots__ = ("_arrays", "_fixed", "_start")

    def __init__(self, fixed: Mapping[str, Any]) -> None:
        """``fixed``: the fields every frame has (JSON types; no ``tensors``).

        Raises:
            ValueError: ``fixed`` names ``tensors``.
        """
        if "tensors" in fixed:
            raise ValueError("the 'tensors' field is written from the tensors")
        self._fixed = frozenset(fixed)
        text = _dumps_str(dict(fixed))
        self._start = f"{text[:-1]}," if fixed else "{"
        self._arrays: dict[tuple[str, Any, tuple[int, ...]], str] = {}

    def encode(
        self, fields: Mapping[str, Any] | None = None, tensors: Sequence[Tensor] = ()
    ) -> bytes:
        """A frame with the fixed fields, then ``fields``, then the tensors.

        Raises:
            ValueError: ``fields`` repeats a fixed field or names ``tensors``.
            ProtocolError: BAD_INPUT when a tensor's data does not match its dtype/shape.
        """
        return frame_with_head(self._head(fields), tensors)

    def encode_array(
        self, fields: Mapping[str, Any] | None, name: str, array: np.ndarray[Any, Any]
    ) -> bytes:
        """``encode(fields, [Tensor.from_numpy(name, array)])``, for one numpy array.

        The tensor's part of the header is kept for each name, dtype and shape.

        Raises:
            ValueError: ``fields`` repeats a fixed field or names ``tensors``.
            ProtocolError: BAD_INPUT when the array's dtype is not a wire dtype.
        """
        meta = self._arrays.get((name, array.dtype, array.shape))
        if meta is not None:
            data = array.data
            if data.c_contiguous:
                head = f'{self._head(fields)}"tensors":[{meta}]}}'.encode()
                return b"".join((MAGIC, _HEADER_LEN.pack(len(head)), head, data))
        t = Tensor.from_numpy(name, array)
        wire = (_NUMPY or _numpy_tables()).by_dtype.get(array.dtype) is not None
        if wire and t.data and len(self._arrays) < 64:  # sent as is (not swapped, not empty)
            self._arrays[(name, array.dtype, array.shape)] = _meta(t)[0]
        return self.encode(fields, [t])

    def _head(self, fields: Mapping[str, Any] | None) -> str:
        if not fields:
            return self._start
        if "tensors" in fields or not self._fixed.isdisjoint(fields):
            raise ValueError(f"fields {sorted(fields)} repeat a fixed field or name 'tensors'")
        text = _dumps_str(fields if type(fields) is dict else dict(fields))
        return f"{self._start}{text[1:-1]},"


def unpack_frame(
    payload: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], list[Tensor]]:
    """Split a frame into its JSON header (not yet validated) and its tensors.

    The tensors' data are zero-copy views of ``payload``. A payload starting with
    ``{`` is a header-only frame.

    Raises:
        ProtocolError: PAYLOAD_TOO_LARGE, or MALFORMED with what is wrong.
    """
    size = len(payload)
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{size} bytes is over the limit of {max_bytes}"
        )
    view = memoryview(payload)
    raw = payload if type(payload) is bytes else None  # slices of bytes cost less
    start = raw[:4] if raw is not None else bytes(view[:4])
    if start == MAGIC and size >= 8:
        (head_len,) = _HEADER_LEN.unpack_from(view, 4)
        if head_len > MAX_HEADER_BYTES or 8 + head_len > size:
            raise ProtocolError(ErrorCode.MALFORMED, f"frame header length {head_len} is invalid")
        body_at = 8 + head_len
        head_bytes = raw[8:body_at] if raw is not None else bytes(view[8:body_at])
    elif start[:1] == b"{":
        head_bytes, body_at = raw if raw is not None else bytes(view), size
    else:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"not a frame: expected magic {MAGIC!r} or a JSON object"
        )
    try:
        header = _loads(head_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"malformed JSON header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "frame header is not a JSON object")
    metas = header.get("tensors") or []
    if not isinstance(metas, list):
        raise ProtocolError(ErrorCode.MALFORMED, "header 'tensors' is not a list")
    if len(metas) > MAX_TENSORS:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"{len(metas)} tensors, at most {MAX_TENSORS} in a frame"
        )
    tensors: list[Tensor] = []
    at = body_at
    for i, m in enumerate(metas):
        name, dtype, shape = _tensor_meta(i, m)
        itemsize = DTYPES.get(dtype)
        if itemsize is None:
            raise ProtocolError(
                ErrorCode.BAD_INPUT,
                f"tensor {name!r}: unknown dtype {dtype!r}, use one of {sorted(DTYPES)}",
            )
        n = math.prod(shape) * itemsize
        if at + n > size:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"tensor {name!r}: {dtype}{list(shape)} needs {n} bytes, frame is short",
            )
        tensors.append(Tensor(name, dtype, shape, view[at : at + n]))
        at += n
    if at != size:
        raise ProtocolError(ErrorCode.MALFORMED, f"{size - at} trailing bytes after the tensors")
    return header, tensors


def _tensor_meta(i: int, m: Any) -> tuple[str, str, tuple[int, ...]]:
    """Name, dtype and shape of the ``i``-th tensor entry of a header, checked.

    Checked before anything is sized from them: a name and dtype are short
    strings, a shape is at most :data:`MAX_RANK` integers (not booleans), none
    negative.
    """
    name = m.get("name") if type(m) is dict else None
    dtype = m.get("dtype") if type(m) is dict else None
    shape = m.get("shape") if type(m) is dict else None
    if type(name) is not str or type(dtype) is not str or type(shape) is not list:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"tensor #{i}: needs name, dtype, shape (a string, a string, a list of integers)",
        )
    if len(name) > MAX_NAME_CHARS:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"tensor #{i}: name over {MAX_NAME_CHARS} characters"
        )
    if len(shape) > MAX_RANK or any(type(d) is not int or d < 0 for d in shape):
        raise ProtocolError(
            ErrorCode.BAD_INPUT,
            f"tensor {name[:64]!r}: shape {str(shape)[:80]} is not a list of at most "
            f"{MAX_RANK} non-negative integers",
        )
    return name, dtype, tuple(shape)


def peek_header(payload: bytes | memoryview) -> dict[str, Any] | None:
    """Best-effort header of a payload that failed to decode (to address an error reply).

    Reads only the header, whatever the size of the rest; None if unreadable.
    """
    view = memoryview(payload)
    try:
        if bytes(view[:4]) == MAGIC and len(view) >= 8:
            (head_len,) = _HEADER_LEN.unpack_from(view, 4)
            if head_len > MAX_HEADER_BYTES:
                return None
            obj = json.loads(bytes(view[8 : 8 + head_len]))
        elif bytes(view[:1]) == b"{" and len(view) <= MAX_HEADER_BYTES:
            obj = json.loads(bytes(view))
        else:
            return None
    except (ValueError, UnicodeDecodeError, struct.error, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
