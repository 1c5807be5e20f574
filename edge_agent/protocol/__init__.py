r"""The MQTT contract between edge agents and the control plane (schema version 1).

Pure: imports only pydantic and the standard library (numpy is imported lazily
by :meth:`Tensor.to_numpy` / :meth:`Tensor.from_numpy`), so both the agent and
the control plane import it.

Topics (prefix ``p``, default ``mesh/v1``; build them with :class:`Topics`)::

    {p}/agents/{id}/status      agent -> cp   retained  AgentStatus (online/offline; LWT offline)
    {p}/agents/{id}/heartbeat   agent -> cp             Heartbeat
    {p}/agents/{id}/desired     cp -> agent   retained  DesiredState
    {p}/agents/{id}/observed    agent -> cp   retained  ObservedState
    {p}/modules/{m}/infer/{node} any -> node            InferRequest frame, answer to reply_to
    {p}/replies/{client}        node -> client          InferReply frame (reply_to must be here)
    {p}/events/{site}/{stream}  agents, functions       Event
    {p}/replies/{id}/event-acks cp -> agent   QoS 0     EventAcks (the events it handled)
    {p}/agents/{id}/samples/{m} agent -> cp             SampleUpload frame (sampled inputs)

Messages:

* JSON messages (status, heartbeat, desired, observed, event) are objects with
  ``schema_version``, ``kind``, ``id`` and ``ts`` (Unix seconds). Unknown fields
  are ignored; a missing or different ``schema_version`` is refused with a
  :class:`ProtocolError` whose message says what was expected.
* Inference requests and replies are *frames*: ``MAGIC`` (4 bytes) + header
  length (uint32 little-endian) + a JSON header (the envelope, plus ``tensors``:
  name/dtype/shape of each tensor) + the raw little-endian C-order bytes of each
  tensor, one after another in header order. A payload that starts with ``{``
  is a header-only frame (no tensors), handy for ``mosquitto_pub``.
* A request carries ``reply_to`` and ``correlation_id`` in its header, so a
  3.1.1 broker works; over MQTT 5 requesters also set ResponseTopic and
  CorrelationData (the UTF-8 correlation id) and responders copy them.
* ``deadline_ts`` (Unix seconds, the sender's clock): a request still queued
  past it is not run but answered with an ``expired`` error (over MQTT 5, also
  set MessageExpiryInterval). Agents read it through their estimate of the
  control plane's clock (from the ``ts`` of what it sends), so a device clock
  a few seconds off expires nothing early.

Artifacts never travel over MQTT: a module in the desired state names an HTTP
``url``, the ``sha256`` of the file and an Ed25519 ``signature`` (base64) made by
the control plane over :func:`artifact_signing_message`.

Example:
    >>> t = Topics("mesh/v1")
    >>> t.desired("cam-07")
    'mesh/v1/agents/cam-07/desired'
    >>> req = InferRequest(module="counter", reply_to=t.reply("cli"), correlation_id="1")
    >>> frame = encode_frame(req, [Tensor("x", "float32", (1,), b"\x00\x00\x80?")])
    >>> header, tensors = decode_frame(frame)
    >>> parse_header(header, InferRequest).module, tensors[0].shape
    ('counter', (1,))
"""

from __future__ import annotations

from ._desired import (
    DesiredState,
    ModuleSpec,
    PipelineSpec,
    Route,
    SamplingPolicy,
    SourceSpec,
    artifact_signing_message,
)
from ._envelope import SCHEMA_VERSION, Envelope, TensorSpec, new_id, parse_header, parse_json
from ._frames import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DTYPES,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_NAME_CHARS,
    MAX_RANK,
    MAX_TENSORS,
    ErrorCode,
    FrameTemplate,
    ProtocolError,
    Tensor,
    peek_header,
)
from ._inference import (
    MAX_ACKED_SEQS,
    ErrorInfo,
    Event,
    EventAcks,
    InferReply,
    InferRequest,
    JsonTensor,
    TensorMeta,
    decode_frame,
    encode_frame,
    json_tensor,
)
from ._inputs import MAX_ID_CHARS, DropLog, ReplyTo, reply_target
from ._reports import (
    AgentFaults,
    AgentStatus,
    Heartbeat,
    HostMetrics,
    InstalledModule,
    ModuleError,
    ModuleStats,
    ObservedState,
    OutboxStats,
)
from ._samples import SampleUpload
from ._topics import (
    DEFAULT_PREFIX,
    MAX_TOPIC_BYTES,
    PING_MODULE,
    Topics,
    check_topic_filter,
    check_topic_name,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_PREFIX",
    "DTYPES",
    "MAGIC",
    "MAX_ACKED_SEQS",
    "MAX_HEADER_BYTES",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_RANK",
    "MAX_TENSORS",
    "MAX_TOPIC_BYTES",
    "PING_MODULE",
    "SCHEMA_VERSION",
    "AgentFaults",
    "AgentStatus",
    "DesiredState",
    "DropLog",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "EventAcks",
    "FrameTemplate",
    "Heartbeat",
    "HostMetrics",
    "InferReply",
    "InferRequest",
    "InstalledModule",
    "JsonTensor",
    "ModuleError",
    "ModuleSpec",
    "ModuleStats",
    "ObservedState",
    "OutboxStats",
    "PipelineSpec",
    "ProtocolError",
    "ReplyTo",
    "Route",
    "SampleUpload",
    "SamplingPolicy",
    "SourceSpec",
    "Tensor",
    "TensorMeta",
    "TensorSpec",
    "Topics",
    "artifact_signing_message",
    "check_topic_filter",
    "check_topic_name",
    "decode_frame",
    "encode_frame",
    "json_tensor",
    "new_id",
    "parse_header",
    "parse_json",
    "peek_header",
    "reply_target",
]
