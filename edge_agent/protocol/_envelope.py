"""What every message shares: the envelope, its schema version, and parsing against it.

:func:`parse_header` and :func:`parse_json` check ``schema_version`` first and
turn validation errors into a :class:`ProtocolError` naming the fields at fault.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._frames import DEFAULT_MAX_PAYLOAD_BYTES, ErrorCode, ProtocolError

__all__ = ["SCHEMA_VERSION", "Envelope", "TensorSpec", "new_id", "parse_header", "parse_json"]

SCHEMA_VERSION = 1
"""Version of every message in this module; a receiver refuses any other."""

MAX_ID_CHARS = 256
"""Longest message or correlation id: receivers keep recent ids and copy correlation ids."""


def new_id() -> str:
    """A fresh message id (32 hex chars)."""
    return uuid.uuid4().hex


class Envelope(BaseModel):
    """Fields every message carries. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(SCHEMA_VERSION, description="Always SCHEMA_VERSION (1).")
    kind: str = Field(description="Message kind; fixed per message class.")
    id: str = Field(
        default_factory=new_id,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="Unique message id (dedupe key; receivers keep recent ones).",
    )
    ts: float = Field(default_factory=time.time, description="Sent at, Unix seconds.")


class TensorSpec(BaseModel):
    """One input or output of a model: name, dtype and shape (None/str = any size)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    dtype: str = Field(description="A key of DTYPES, e.g. 'float32'.")
    shape: list[int | str | None] = Field(description="Dims; None or a name = dynamic.")

    def describe(self) -> str:
        """E.g. ``input: float32[N,1,32,32]``."""
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


M = TypeVar("M", bound=Envelope)


def _check_version(obj: Mapping[str, Any], model: type[Envelope]) -> None:
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            ErrorCode.SCHEMA_VERSION,
            f"{model.__name__}: schema_version {version!r} is not supported, expected "
            f"{SCHEMA_VERSION}",
        )


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_header(obj: Mapping[str, Any], model: type[M]) -> M:
    """Validate a decoded JSON object as ``model``, checking ``schema_version`` first.

    Raises:
        ProtocolError: SCHEMA_VERSION or BAD_REQUEST, with the fields at fault.
    """
    _check_version(obj, model)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"invalid {model.__name__}: {_summarise(exc)}"
        ) from exc


def parse_json(
    raw: bytes | str, model: type[M], *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> M:
    """Parse a JSON message (status, heartbeat, desired, observed, event).

    Raises:
        ProtocolError: PAYLOAD_TOO_LARGE, MALFORMED, SCHEMA_VERSION or BAD_REQUEST.

    Example:
        >>> parse_json(b'{"schema_version": 1, "version": 3}', DesiredState).version
        3
    """
    if len(raw) > max_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes is over the limit of {max_bytes}"
        )
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"malformed JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED, f"expected a JSON object, got {type(obj).__name__}"
        )
    return parse_header(obj, model)
