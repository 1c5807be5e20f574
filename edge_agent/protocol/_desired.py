"""The desired state: the modules (signed artifacts, routes) and pipelines an agent should run.

The control plane publishes a :class:`DesiredState` retained on ``desired``;
each :class:`ModuleSpec` names an artifact by URL, sha256 and an Ed25519
signature over :func:`artifact_signing_message`, and its :class:`Route`.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._envelope import Envelope
from ._frames import ErrorCode, ProtocolError
from ._topics import Topics, check_topic_filter

__all__ = [
    "DesiredState",
    "ModuleSpec",
    "PipelineSpec",
    "Route",
    "SamplingPolicy",
    "SourceSpec",
    "artifact_signing_message",
]


def artifact_signing_message(name: str, version: str, sha256: str) -> bytes:
    r"""The bytes the control plane signs (Ed25519) for one module artifact.

    Binding name and version stops a valid artifact being replayed as another
    module or version.

    Example:
        >>> artifact_signing_message("counter", "3", "ab")
        b'fogmesh-artifact:v1\ncounter\n3\nab'
    """
    return f"fogmesh-artifact:v1\n{name}\n{version}\n{sha256.lower()}".encode()


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


class SamplingPolicy(BaseModel):
    """How an agent samples a module's pipeline inputs for retraining (fresh data).

    The agent keeps the ``reservoir`` most recent inputs its pipelines fed the
    module and uploads them, picked at random among those, to
    ``{p}/agents/{id}/samples/{module}`` (QoS 1), at most ``samples_per_min``
    and ``bytes_per_min`` in any 60 s. An input the reservoir drops before it
    was uploaded is counted as dropped by the budget. Absent from a
    :class:`ModuleSpec`: no sampling.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    samples_per_min: int = Field(30, ge=1, le=6000, description="Uploads in any 60 s, at most.")
    bytes_per_min: int = Field(
        256 * 1024, ge=1024, le=64 * 1024 * 1024, description="Upload bytes in any 60 s, at most."
    )
    reservoir: int = Field(64, ge=1, le=4096, description="Recent inputs kept to pick from.")


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
    sampling: SamplingPolicy | None = Field(
        None, description="Upload pipeline inputs for retraining (None: do not)."
    )
    drift_stats: bool = Field(
        False,
        description="Summarise each inference's inputs and outputs in the heartbeat "
        "(the control plane's drift check on them asks for it; ~20 us an inference).",
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

    @field_validator("topic")
    @classmethod
    def _topic_filter(cls, v: str | None) -> str | None:
        # The agent subscribes to it: a broker disconnects a client for a bad filter.
        return check_topic_filter(v, what="source topic") if v is not None else v


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
