"""The data plane: inference request and reply frames, and pipeline events.

A request or reply is a frame (a JSON header, then the tensors' raw bytes; see
:mod:`edge_agent.protocol._frames`): :func:`encode_frame` fills the header's
``tensors`` and :func:`decode_frame` splits one. An :class:`Event` is a JSON
message carrying a pipeline's result (:func:`json_tensor` for its outputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._envelope import MAX_ID_CHARS, Envelope, TensorSpec
from ._frames import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_NAME_CHARS,
    MAX_TENSORS,
    ErrorCode,
    Tensor,
    pack_frame,
    unpack_frame,
)

__all__ = [
    "ErrorInfo",
    "Event",
    "InferReply",
    "InferRequest",
    "JsonTensor",
    "TensorMeta",
    "decode_frame",
    "encode_frame",
    "json_tensor",
]


class TensorMeta(BaseModel):
    """Header entry of one tensor in a frame."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    dtype: str
    shape: list[int]


class ErrorInfo(BaseModel):
    """An error in a reply; for BAD_INPUT ``expected`` holds the module's inputs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: ErrorCode
    message: str
    expected: list[TensorSpec] | None = None


class InferRequest(Envelope):
    """Header of an inference request frame (tensors follow in the frame).

    Its strings are bounded and its numbers finite: a responder keeps the ids
    of recent requests and copies the correlation id into its reply.
    ``reply_to`` is checked where it is used (:func:`reply_target`).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    kind: Literal["infer_request"] = "infer_request"
    module: str = Field(max_length=MAX_NAME_CHARS)
    version: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="Pin a version; None = whatever is served."
    )
    reply_to: str | None = Field(None, description="Topic for the reply; None = no reply.")
    correlation_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    deadline_ts: float | None = Field(None, description="Drop (do not run) after this time.")
    tensors: list[TensorMeta] = Field(default_factory=list, max_length=MAX_TENSORS)


class InferReply(Envelope):
    """Header of an inference reply frame: outputs follow, or ``error`` is set."""

    kind: Literal["infer_reply"] = "infer_reply"
    correlation_id: str | None = None
    module: str | None = None
    version: str | None = None
    node: str | None = None
    error: ErrorInfo | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    tensors: list[TensorMeta] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the reply carries outputs, not an error."""
        return self.error is None


class JsonTensor(BaseModel):
    """A tensor in a JSON message: flat C-order ``data``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    dtype: str
    shape: list[int]
    data: list[float | int | bool]


class Event(Envelope):
    """An application event (a pipeline's result); ``id`` deduplicates replays."""

    kind: Literal["event"] = "event"
    agent: str | None = None
    site: str | None = None
    stream: str
    pipeline: str | None = None
    module: str | None = None
    version: str | None = None
    route: str = Field("local", description="'local', 'offload:<node>' or 'remote:<node>'.")
    seq: int = Field(0, description="Per-agent sequence number (order of replay).")
    ack: bool = Field(
        False,
        description=(
            "The sender keeps the event until the control plane acknowledges its "
            "(agent, seq) on Topics.event_acks(agent), and sends it again otherwise."
        ),
    )
    source_ts: float | None = Field(
        None,
        description="When the sample was taken (its frame's 'ts'), else when it arrived.",
    )
    latency_ms: float | None = None
    outputs: dict[str, JsonTensor] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


MAX_ACKED_SEQS = 1024
"""Most seqs one :class:`EventAcks` message carries."""


class EventAcks(Envelope):
    """The control plane has handled these events of one agent (their ``seq``).

    Sent, batched, on :meth:`Topics.event_acks` at QoS 0 for events that asked
    (``ack``), duplicates included: a lost acknowledgement costs a resend, which
    the control plane drops by id and acknowledges again.
    """

    kind: Literal["event-acks"] = "event-acks"
    seqs: list[int] = Field(min_length=1, max_length=MAX_ACKED_SEQS)


def encode_frame(header: Envelope | Mapping[str, Any], tensors: Sequence[Tensor] = ()) -> bytes:
    """Encode a header (its ``tensors`` field is filled in) and tensors as one frame.

    Raises:
        ProtocolError: BAD_INPUT when a tensor's data does not match its dtype/shape.
    """
    if isinstance(header, Envelope):
        header = header.model_dump(mode="json", exclude_none=True)
    return pack_frame(header, tensors)


def decode_frame(
    payload: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], list[Tensor]]:
    """Split a frame into its JSON header (validate it with :func:`parse_header`) and tensors.

    The tensors' data are zero-copy views of ``payload``.

    Raises:
        ProtocolError: PAYLOAD_TOO_LARGE, MALFORMED or BAD_INPUT (unknown dtype).
    """
    return unpack_frame(payload, max_bytes=max_bytes)


def json_tensor(tensor: Tensor) -> JsonTensor:
    """A tensor as JSON (for events); needs numpy."""
    data = tensor.to_numpy().ravel().tolist()
    return JsonTensor(dtype=tensor.dtype, shape=list(tensor.shape), data=data)
