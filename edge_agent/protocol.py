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
    {p}/replies/{client}        node -> client          InferReply frame (convention)
    {p}/events/{site}/{stream}  agents, functions       Event

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
* ``deadline_ts`` (Unix seconds): a request still queued past it is dropped
  rather than run late (over MQTT 5, also set MessageExpiryInterval).

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

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._frames import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DTYPES,
    MAGIC,
    MAX_HEADER_BYTES,
    ErrorCode,
    FrameTemplate,
    ProtocolError,
    Tensor,
    pack_frame,
    unpack_frame,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_PREFIX",
    "DTYPES",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "PING_MODULE",
    "SCHEMA_VERSION",
    "AgentStatus",
    "DesiredState",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Event",
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
    "Route",
    "SourceSpec",
    "Tensor",
    "TensorMeta",
    "TensorSpec",
    "Topics",
    "artifact_signing_message",
    "decode_frame",
    "encode_frame",
    "json_tensor",
    "new_id",
    "parse_header",
    "parse_json",
]

SCHEMA_VERSION = 1
"""Version of every message in this module; a receiver refuses any other."""

DEFAULT_PREFIX = "mesh/v1"
#: The module the control plane asks for to time an agent's round trip (never served).
PING_MODULE = "mesh-ping"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def new_id() -> str:
    """A fresh message id (32 hex chars)."""
    return uuid.uuid4().hex


def artifact_signing_message(name: str, version: str, sha256: str) -> bytes:
    r"""The bytes the control plane signs (Ed25519) for one module artifact.

    Binding name and version stops a valid artifact being replayed as another
    module or version.

    Example:
        >>> artifact_signing_message("counter", "3", "ab")
        b'fogmesh-artifact:v1\ncounter\n3\nab'
    """
    return f"fogmesh-artifact:v1\n{name}\n{version}\n{sha256.lower()}".encode()


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder for one prefix.

    Example:
        >>> Topics().infer("counter", "cam-07")
        'mesh/v1/modules/counter/infer/cam-07'
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.endswith("/") or any(c in self.prefix for c in "+#"):
            raise ValueError(f"bad topic prefix {self.prefix!r}: no trailing '/', '+' or '#'")

    @staticmethod
    def check_segment(value: str) -> str:
        """Return ``value`` if it is a safe single topic level, else raise ValueError."""
        if not _SEGMENT.match(value):
            raise ValueError(f"{value!r} is not a topic level: use 1-128 of [A-Za-z0-9_.:@-]")
        return value

    def status(self, agent: str) -> str:
        """Retained online/offline status of an agent."""
        return f"{self.prefix}/agents/{agent}/status"

    def heartbeat(self, agent: str) -> str:
        """Periodic metrics of an agent."""
        return f"{self.prefix}/agents/{agent}/heartbeat"

    def desired(self, agent: str) -> str:
        """Retained desired state the control plane sets for an agent."""
        return f"{self.prefix}/agents/{agent}/desired"

    def observed(self, agent: str) -> str:
        """Retained observed state an agent reports."""
        return f"{self.prefix}/agents/{agent}/observed"

    def infer(self, module: str, node: str) -> str:
        """Inference requests for ``module`` on ``node`` (an agent id or a fog/cloud node)."""
        return f"{self.prefix}/modules/{module}/infer/{node}"

    def reply(self, client: str, suffix: str | None = None) -> str:
        """Conventional reply topic of a requester (any topic works as ``reply_to``)."""
        base = f"{self.prefix}/replies/{client}"
        return f"{base}/{suffix}" if suffix else base

    def events(self, site: str, stream: str) -> str:
        """Application events of a site."""
        return f"{self.prefix}/events/{site}/{stream}"

    # Wildcards, for the control plane and for ACLs.
    def all_agents(self, leaf: str) -> str:
        """E.g. ``all_agents("status")`` -> ``{p}/agents/+/status``."""
        return f"{self.prefix}/agents/+/{leaf}"

    def agent_subscriptions(self, agent: str) -> list[str]:
        """Topic filters an agent subscribes to (for ACLs)."""
        return [
            self.desired(agent),
            f"{self.prefix}/modules/+/infer/{agent}",
            f"{self.reply(agent)}/#",
        ]

    def agent_publications(self, agent: str, site: str) -> list[str]:
        """Topic filters an agent publishes to (for ACLs).

        Replies go to whatever ``reply_to`` a requester names; by convention that
        is under ``{p}/replies/``. Offloaded requests go to other nodes' infer topics.
        """
        return [
            f"{self.prefix}/agents/{agent}/#",
            f"{self.prefix}/events/{site}/#",
            f"{self.prefix}/modules/+/infer/+",
            f"{self.prefix}/replies/#",
        ]


# ------------------------------------------------------------------ base envelope


class Envelope(BaseModel):
    """Fields every message carries. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(SCHEMA_VERSION, description="Always SCHEMA_VERSION (1).")
    kind: str = Field(description="Message kind; fixed per message class.")
    id: str = Field(default_factory=new_id, description="Unique message id (dedupe key).")
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


# ------------------------------------------------------------------ desired state


class Route(BaseModel):
    """Where a module's pipeline work runs.

    * ``mode="local"``: the agent runs the module on its own ONNX Runtime.
    * ``mode="offload"``: the agent sends each pipeline input as an
      :class:`InferRequest` to ``{p}/modules/{module}/infer/{target}`` (a fog or
      cloud node the control plane placed the module on) and publishes the
      answer as its event, as if computed locally. If the answer does not come
      within ``timeout_ms`` and ``fallback_local`` is true and the module is
      installed locally, the agent runs it locally instead.
    * ``mode="remote"``: the source moved too. The replica ``target`` takes the
      pipeline's frames from its MQTT source itself and publishes the events
      (route ``remote:<target>``), so a starved or cut-off device is out of the
      path. The agent keeps its source and holds the frames it no longer runs,
      to run them again when the route comes back.

    ``since_ts`` splits the frames of a switch exactly: frames captured (the
    frame header's ``ts``, else their arrival) at or after it belong to this
    route, earlier ones to the previous route. Nothing is run twice and nothing
    is skipped, however late the agent learns of the switch. A replica that
    stops answering (its node died) leaves frames no one ran: while remote the
    agent watches its site's events, and when the route changes it runs the
    held frames the replica did not answer (late, but not lost).

    ``epoch`` increases by one each time the control plane switches the route
    (make-before-break migration); an agent never goes back to a lower epoch, and
    reports the epoch it follows in :class:`InstalledModule.route_epoch`.
    Direct inference requests to the agent's own infer topic are always served
    locally when the module is installed, whatever the route.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    mode: Literal["local", "offload", "remote"] = "local"
    epoch: int = Field(0, ge=0)
    target: str | None = Field(
        None, description="Node id to offload to, or that runs the pipeline (offload, remote)."
    )
    timeout_ms: int = Field(2000, gt=0)
    fallback_local: bool = True
    since_ts: float | None = Field(
        None, description="Frames captured at or after this (Unix s) follow this route."
    )

    @model_validator(mode="after")
    def _target_for_offload(self) -> Route:
        if self.mode != "local" and not self.target:
            raise ValueError(f"route mode {self.mode!r} needs a target node id")
        return self


class ModuleSpec(BaseModel):
    """One inference module the agent should hold.

    ``url``, ``sha256`` and ``signature`` come together; a module without them is
    remote-only (its route must offload). ``signature`` is the base64 Ed25519
    signature over :func:`artifact_signing_message` (name, version, sha256).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    url: str | None = Field(None, description="HTTP(S) URL of the ONNX file.")
    sha256: str | None = Field(None, description="Hex sha256 of the ONNX file.")
    signature: str | None = Field(None, description="Base64 Ed25519 signature.")
    key_id: str | None = Field(None, description="Which control-plane key signed it.")
    size: int | None = Field(None, ge=0, description="Bytes, if known; a download past it fails.")
    route: Route = Field(default_factory=Route)
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Execution providers in order; the first the device has is used.",
    )
    warmup_runs: int = Field(2, ge=0, le=100)
    max_queue: int = Field(256, ge=1, description="Bounded request queue length.")
    max_batch: int = Field(
        16, ge=1, le=1024, description="Queued requests run as one batch (dynamic batch dim)."
    )

    @field_validator("name")
    @classmethod
    def _name_is_topic_level(cls, v: str) -> str:
        return Topics.check_segment(v)

    @field_validator("sha256")
    @classmethod
    def _hex_sha256(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("sha256 must be 64 hex characters")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _artifact_fields_together(self) -> ModuleSpec:
        present = [self.url is not None, self.sha256 is not None, self.signature is not None]
        if any(present) and not all(present):
            raise ValueError(f"module {self.name!r}: url, sha256 and signature come together")
        if not any(present) and self.route.mode == "local":
            raise ValueError(f"module {self.name!r} has no artifact, so its route must offload")
        return self

    @property
    def has_artifact(self) -> bool:
        """Whether the module is installed locally (not remote-only)."""
        return self.url is not None

    def signature_bytes(self) -> bytes:
        """The decoded Ed25519 signature; raises ProtocolError if not base64 of 64 bytes."""
        try:
            raw = base64.b64decode(self.signature or "", validate=True)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INTEGRITY, "signature is not base64") from exc
        if len(raw) != 64:
            raise ProtocolError(ErrorCode.INTEGRITY, f"signature is {len(raw)} bytes, not 64")
        return raw


class SourceSpec(BaseModel):
    """Where a pipeline's inputs come from.

    * ``kind="mqtt"``: frames published on ``topic`` (tensors named as the model
      inputs, or a single tensor fed to the first input).
    * ``kind="file"``: a replay file of length-prefixed frames at ``path``, at
      ``rate_hz`` (None = as fast as the module runs), looping if ``loop``.
    Other kinds (e.g. the SUMO camera) are named in ``kind`` with ``options``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    topic: str | None = None
    path: str | None = None
    rate_hz: float | None = Field(None, gt=0)
    loop: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(BaseModel):
    """A local pipeline: source -> module (per its route) -> events on ``stream``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    module: str
    source: SourceSpec
    stream: str | None = Field(None, description="Event stream; default the pipeline name.")
    qos: int = Field(1, ge=0, le=2)

    @field_validator("name", "stream")
    @classmethod
    def _topic_level(cls, v: str | None) -> str | None:
        return Topics.check_segment(v) if v is not None else v

    @property
    def stream_name(self) -> str:
        """The event stream this pipeline publishes on."""
        return self.stream or self.name


class DesiredState(Envelope):
    """What the control plane wants an agent to run (retained, on ``desired``).

    The agent acts only on a ``version`` greater than the one it holds.
    """

    kind: Literal["desired"] = "desired"
    agent: str | None = None
    version: int = Field(ge=0)
    modules: list[ModuleSpec] = Field(default_factory=list)
    pipelines: list[PipelineSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> DesiredState:
        names = [m.name for m in self.modules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"module names repeat: {dupes}")
        known = set(names)
        for p in self.pipelines:
            if p.module not in known:
                raise ValueError(f"pipeline {p.name!r} names unknown module {p.module!r}")
        return self


# ------------------------------------------------------------------ observed state


class InstalledModule(BaseModel):
    """A module an agent serves (or offloads)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    sha256: str | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    provider: str | None = None
    route_mode: Literal["local", "offload", "remote"] = "local"
    route_epoch: int = 0
    ready_ts: float | None = None


class ModuleError(BaseModel):
    """Why a desired module is not (or not at the desired version) installed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    module: str
    version: str | None = None
    code: ErrorCode
    message: str


class ObservedState(Envelope):
    """What an agent runs (retained, on ``observed``); ``version`` = desired version acted on."""

    kind: Literal["observed"] = "observed"
    agent: str
    version: int = Field(ge=0)
    installed: list[InstalledModule] = Field(default_factory=list)
    errors: list[ModuleError] = Field(default_factory=list)
    pipelines: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ status, heartbeat


class AgentStatus(Envelope):
    """Retained liveness; the agent's last will carries ``state="offline"``."""

    kind: Literal["status"] = "status"
    agent: str
    state: Literal["online", "offline"]
    site: str | None = None
    agent_version: str | None = None
    reason: str | None = None


class HostMetrics(BaseModel):
    """psutil metrics of the device."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cpu_percent: float
    mem_percent: float
    mem_available_mb: float
    rss_mb: float
    load1: float
    load5: float
    load15: float
    temperature_c: float | None = None


class ModuleStats(BaseModel):
    """Per-module counters since start, and latency over the recent window."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str | None = None
    requests: int = 0
    errors: int = 0
    expired: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    queue_depth: int = 0


class OutboxStats(BaseModel):
    """The disk buffer of outgoing events."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    depth: int = 0
    dropped: int = 0
    delivered: int = 0


class Heartbeat(Envelope):
    """Periodic metrics, not retained."""

    kind: Literal["heartbeat"] = "heartbeat"
    agent: str
    site: str | None = None
    seq: int = 0
    uptime_s: float = 0.0
    period_s: float = 0.0
    host: HostMetrics
    modules: dict[str, ModuleStats] = Field(default_factory=dict)
    outbox: OutboxStats = Field(default_factory=OutboxStats)


# ------------------------------------------------------------------ inference


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
    """Header of an inference request frame (tensors follow in the frame)."""

    kind: Literal["infer_request"] = "infer_request"
    module: str
    version: str | None = Field(None, description="Pin a version; None = whatever is served.")
    reply_to: str | None = Field(None, description="Topic for the reply; None = no reply.")
    correlation_id: str | None = None
    deadline_ts: float | None = Field(None, description="Drop (do not run) after this time.")
    tensors: list[TensorMeta] = Field(default_factory=list)


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
    source_ts: float | None = Field(
        None,
        description="When the sample was taken (its frame's 'ts'), else when it arrived.",
    )
    latency_ms: float | None = None
    outputs: dict[str, JsonTensor] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------ parsing

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
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"malformed JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED, f"expected a JSON object, got {type(obj).__name__}"
        )
    return parse_header(obj, model)


# ------------------------------------------------------------------ frames


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
