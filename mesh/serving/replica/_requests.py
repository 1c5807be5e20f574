"""An agent's offloaded request as a replica reads it, and the reply frames it sends back.

The agent's rules, applied by :class:`~mesh.serving.replica._mqtt.MqttResponder`
without a broker: where a reply goes (the header's ``reply_to``, else MQTT 5's
ResponseTopic; the correlation id, else CorrelationData), whether the request
is for this replica's module and version, QoS 1 duplicates by request id, the
inputs against the model's signature (``bad_input`` with the expected inputs),
and the reply and error frames.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol import (
    MAGIC,
    SCHEMA_VERSION,
    ErrorCode,
    ErrorInfo,
    InferRequest,
    ProtocolError,
    Tensor,
    TensorSpec,
    Topics,
    encode_frame,
    new_id,
    parse_header,
    reply_target,
)
from mesh.serving._oip import InferenceInputError, check_inputs
from mesh.serving.replica._batching import Feeds
from mesh.serving.replica._pipelines import Done

__all__ = [
    "RecentIds",
    "ReplyTo",
    "Work",
    "check_request",
    "error_frame",
    "model_feeds",
    "peek_header",
    "reply_frame",
    "reply_to",
]


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a reply goes: its topic and the requester's correlation id and data."""

    topic: str
    correlation_id: str | None
    correlation_data: bytes | None


@dataclass(slots=True)
class Work:
    """A checked request (or a handed-over pipeline's frame) waiting for the model."""

    reply: ReplyTo | None
    feeds: Feeds
    size: int
    deadline_ts: float | None  # this host's clock (the requester's, corrected)
    received: float  # perf_counter
    done: Done | None = None  # a handed-over pipeline's frame: its answer goes here


def peek_header(payload: bytes) -> dict[str, Any] | None:
    """Best-effort header of a request that failed to decode (to address the error)."""
    try:
        if payload[:4] == MAGIC and len(payload) >= 8:
            obj = json.loads(payload[8 : 8 + int.from_bytes(payload[4:8], "little")])
        elif payload[:1] == b"{":
            obj = json.loads(payload)
        else:
            return None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def reply_to(
    header: Mapping[str, Any] | None,
    response_topic: str | None,
    correlation_data: bytes | None,
    topics: Topics,
    bound: str | None = None,
) -> tuple[ReplyTo | None, ProtocolError | None]:
    """Where to answer a request (the header's fields, else MQTT 5's), and what is wrong there.

    Only a valid topic under ``{p}/replies/`` is answered
    (:func:`~edge_agent.protocol.reply_target`): the broker would disconnect the
    responder for publishing to a bad one. ``(None, error)``: drop the request.
    ``bound`` (an agent's offload reply topic, known from the topic the request
    came on) replaces the topic the request names, good or bad.
    """
    to, bad = reply_target(header, response_topic, correlation_data, topics)
    if bound is not None:
        corr = to[1] if to is not None else None
        return ReplyTo(bound, corr, correlation_data), bad
    return (None if to is None else ReplyTo(*to)), bad


def check_request(
    header: Mapping[str, Any], *, model: str, version: str, replica_id: str
) -> InferRequest:
    """The request in ``header``, if it is for this replica's module and version.

    Raises:
        ProtocolError: malformed, another module, or a version not served here.
    """
    req = parse_header(dict(header), InferRequest)
    if req.module != model:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"replica {replica_id} serves module {model}, the request names {req.module}",
        )
    if req.version is not None and req.version != version:
        raise ProtocolError(
            ErrorCode.UNKNOWN_MODULE,
            f"module {model}@{req.version} is not served by replica {replica_id} "
            f"(serving {version})",
        )
    return req


def model_feeds(model: str, inputs: Sequence[Any], tensors: Sequence[Tensor]) -> Feeds:
    """The model's feeds from ``tensors`` (one input takes one tensor by any name).

    Raises:
        ProtocolError: ``bad_input``, naming the expected inputs.
    """
    if len(inputs) == 1 and len(tensors) == 1:
        feeds = {inputs[0].name: tensors[0].to_numpy()}
    else:
        feeds = {t.name: t.to_numpy() for t in tensors}
    try:
        check_inputs(model, feeds, inputs)
    except InferenceInputError as exc:
        expected = "; ".join(exc.expected)
        raise ProtocolError(
            ErrorCode.BAD_INPUT, f"{exc.problem}; expected inputs {expected}"
        ) from exc
    return feeds


class RecentIds:
    """The last ``size`` request ids, to drop QoS 1 duplicates (one thread only)."""

    def __init__(self, size: int = 4096) -> None:
        """Remember up to ``size`` ids."""
        self._size = size
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def seen(self, request_id: str) -> bool:
        """Whether ``request_id`` came before; remembers it."""
        ids = self._ids
        if request_id in ids:
            return True
        ids[request_id] = None
        if len(ids) > self._size:
            ids.popitem(last=False)
        return False


def reply_frame(
    to: ReplyTo,
    outputs: Feeds,
    *,
    model: str,
    version: str,
    node: str,
    queue_ms: float,
    compute_ms: float,
) -> bytes:
    """The reply to a request answered with ``outputs``.

    Raises:
        ProtocolError: an output cannot be encoded.
    """
    header = {
        "schema_version": SCHEMA_VERSION,
        "kind": "infer_reply",
        "id": new_id(),
        "ts": time.time(),
        "correlation_id": to.correlation_id,
        "module": model,
        "version": version,
        "node": node,
        "queue_ms": round(queue_ms, 3),
        "compute_ms": compute_ms,
    }
    return encode_frame(header, [Tensor.from_numpy(name, array) for name, array in outputs.items()])


def error_frame(
    to: ReplyTo,
    error: ProtocolError,
    *,
    model: str,
    node: str,
    expected: list[TensorSpec] | None,
) -> bytes:
    """The reply refusing a request (``expected``: the inputs, sent with ``bad_input``)."""
    info = ErrorInfo(
        code=error.code,
        message=error.reason,
        expected=expected if error.code == ErrorCode.BAD_INPUT else None,
    )
    header = {
        "schema_version": SCHEMA_VERSION,
        "kind": "infer_reply",
        "id": new_id(),
        "ts": time.time(),
        "correlation_id": to.correlation_id,
        "module": model,
        "node": node,
        "error": info.model_dump(mode="json", exclude_none=True),
    }
    return encode_frame(header)
