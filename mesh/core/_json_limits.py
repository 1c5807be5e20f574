"""Bounded JSON decoding: nesting depth checked before the parser runs, strict numbers.

Every JSON body a client sends the mesh (an inference request's head, a ``/v1``
request) is decoded by :func:`loads_bounded`: its nesting depth is measured
first (:func:`nesting_exceeds`, linear, in C-speed bytes operations, no
recursion), so a deeply nested body is refused with a one-line reason instead
of a ``RecursionError``; ``NaN`` and ``Infinity``, which are not JSON, are
refused too. Sizes are capped before this, where the body is read
(:func:`mesh.core._http_server.read_body`).

The parser is ``orjson`` where it is installed (the cloud extra; ~8x faster
than the standard library's on a 20 KB tensor, the bulk of a replica's work per
request), the standard library's otherwise. A text ``orjson`` refuses goes to the
standard parser, which decides: the same texts are accepted and refused, with
the same reasons, either way. One difference is left: an integer past 64 bits
comes back as a float from ``orjson`` (a shape or an integer tensor refuses it
all the same).

Example:
    >>> loads_bounded(b'{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> nesting_exceeds(b"[" * 100 + b"]" * 100, 64)
    True
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the cloud extra installs it
    _orjson = None

__all__ = ["MAX_JSON_DEPTH", "JsonLimitError", "loads_bounded", "nesting_exceeds"]

#: Arrays and objects nested deeper than this are refused.
MAX_JSON_DEPTH = 64

_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_STRING = re.compile(rb'"[^"]*"')
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_CHUNK = 1 << 22
#: Past this many bytes, numpy counts the brackets (bytes.count takes ~0.7 ns a byte).
_NUMPY_COUNT_BYTES = 4096


class JsonLimitError(ValueError):
    """The text is not JSON, nests too deep, or holds a non-finite number."""


def nesting_exceeds(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in ``data`` nest deeper than ``max_depth`` (or do not balance).

    Brackets inside strings do not count. A few ``bytes`` passes over ``data``
    (in C), then one running sum over its brackets alone (numpy); no recursion.
    """
    if _brackets(data) <= max_depth:
        return False
    # Escapes first: pairs of backslashes, then escaped quotes; what is left of
    # the strings are plain quoted runs, and outside them only brackets count.
    # Objects count as arrays (a mismatch is the parser's to refuse).
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    if b'"' in text:
        text = _STRING.sub(b"", text)
    return _deeper_than(text.translate(_ONE_KIND), max_depth)


def _brackets(data: bytes) -> int:
    """How many ``[`` and ``{`` are in ``data`` (a bound on its depth)."""
    if len(data) <= _NUMPY_COUNT_BYTES:
        return data.count(b"[") + data.count(b"{")
    import numpy as np

    # "[" is 0x5B and "{" 0x7B: with bit 0x20 set, both (and only they) are 0x7B.
    codes = np.frombuffer(data, np.uint8)
    return int(np.count_nonzero(np.bitwise_or(codes, 0x20) == 0x7B))


def _deeper_than(brackets: bytes, max_depth: int) -> bool:
    """Whether a run of ``[`` and ``]`` nests past ``max_depth`` or does not balance."""
    import numpy as np

    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        codes = np.frombuffer(brackets, np.uint8, min(_CHUNK, len(brackets) - start), start)
        running = np.cumsum(np.subtract(92, codes, dtype=np.int32)) + depth  # [ is +1, ] is -1
        if running.max() > max_depth or running.min() < 0:
            return True
        depth = int(running[-1])
    return depth != 0


def _refuse_constant(name: str) -> Any:
    raise JsonLimitError(f"{name} is not a JSON number")


def loads_bounded(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON decoded (by ``orjson`` where installed) after a depth check; no ``NaN``/``Infinity``.

    Raises:
        JsonLimitError: not JSON (the parser's reason), nested deeper than
            ``max_depth``, or a non-finite number; one line each.
    """
    raw = data.encode() if isinstance(data, str) else data
    if nesting_exceeds(raw, max_depth):
        raise JsonLimitError(f"JSON nested deeper than {max_depth} levels (or unbalanced)")
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # the standard parser decides, in its words (e.g. "NaN is not a JSON number")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except JsonLimitError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonLimitError(f"not JSON: {exc}") from None
