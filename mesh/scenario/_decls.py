"""What a scenario deploys: inference modules (model, QoS, source, lifecycle), streams, triggers.

A module's ``drift:`` and ``canary:`` blocks are the SDK's own specs
(:class:`mesh.Drift`, :class:`mesh.Canary`), as ``@app.module(drift=...,
canary=...)`` takes them; a trigger with a ``topic`` runs on each (debounced)
message there, e.g. a retraining function on ``lifecycle/drift/<module>``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from edge_agent.protocol import SamplingPolicy
from mesh.scenario._fields import (
    CPU_PROVIDER,
    REGISTRY_PATTERN,
    ComputeTier,
    Name,
    Provider,
    Ref,
    SchemaModel,
    Tier,
    Topic,
    TopicPattern,
    TopicTemplate,
    all_tiers,
    exactly_one,
)
from mesh.sdk._specs import Canary, Drift

__all__ = [
    "ModelSource",
    "ModuleDecl",
    "ModuleQoS",
    "ModuleSource",
    "StreamDecl",
    "TriggerDecl",
]


# -- modules, streams, triggers -------------------------------------------------------


class ModelSource(SchemaModel):
    """Where a module's ONNX model comes from: exactly one of train, path, registry."""

    train: Ref | None = Field(
        None, description="A declared function 'module:function' that trains and exports it."
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the train function."
    )
    tune: Ref | None = Field(
        None,
        description="A declared @app.tune function run first; its best config's keys that "
        "the train function takes override args.",
    )
    path: str | None = Field(
        None, min_length=1, description="An ONNX file, relative to the scenario file."
    )
    registry: str | None = Field(
        None, pattern=REGISTRY_PATTERN, description="A registered model 'name' or 'name@version'."
    )

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        exactly_one(self, ("train", "path", "registry"), "a model")
        if (self.args or self.tune) and self.train is None:
            raise ValueError("args and tune are only for a train function")
        return self


class ModuleQoS(SchemaModel):
    """The quality of service a module must meet."""

    p95_ms: float = Field(gt=0, description="Target 95th-percentile latency in milliseconds.")
    min_throughput_rps: float | None = Field(
        None, gt=0, description="Requests per second it must sustain; None = no target."
    )


class ModuleSource(SchemaModel):
    """What feeds a module on each agent: one pipeline per agent, from this source.

    Each agent runs the module on the source's inputs and publishes an event per
    input; the run counts every input the simulation sends that no event answers
    as lost, and each event's latency against the module's SLO.
    """

    kind: Literal["mqtt", "file"] = Field(
        description="mqtt: frames published on topic; file: a replay file of frames."
    )
    topic: TopicTemplate | None = Field(
        None,
        description="mqtt: the topic under the broker prefix; '{site}' is the agent's site.",
    )
    path: str | None = Field(
        None,
        min_length=1,
        description="file: the replay file; '{site}' is the agent's site, '{out}' the "
        "output directory; relative paths are relative to the scenario file.",
    )
    rate_hz: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="file: frames per second (None = as fast as the module runs); "
        "mqtt: the rate the simulation sends at (replicas are sized by it).",
    )
    loop: bool = Field(False, description="file: start again at the end of the file.")
    buffer: int = Field(
        64, ge=1, le=100_000, description="mqtt: frames held while the module is busy."
    )
    stream: Name | None = Field(None, description="Event stream name; None = the module's name.")

    @model_validator(mode="after")
    def _kind(self) -> ModuleSource:
        if self.kind == "mqtt" and (self.topic is None or self.path is not None):
            raise ValueError("expected a topic (and no path) for an mqtt source")
        if self.kind == "file" and (self.path is None or self.topic is not None):
            raise ValueError("expected a path (and no topic) for a file source")
        if self.kind == "mqtt" and self.loop:
            raise ValueError("loop is for file sources only")
        return self


class ModuleDecl(SchemaModel):
    """An inference module: an ONNX model served where the placement engine puts it."""

    name: Name = Field(description="Module name (and its registry model name).")
    model: ModelSource = Field(description="Where the model comes from.")
    handler: Ref | None = Field(
        None,
        description="'module:Class' with preprocess/postprocess (an @app.module class); "
        "None = raw tensors in and out.",
    )
    qos: ModuleQoS = Field(description="Latency and throughput target.")
    tiers: list[Tier] = Field(
        default_factory=all_tiers,
        min_length=1,
        description="Tiers it may run on.",
    )
    providers: list[Provider] = Field(
        default_factory=lambda: [CPU_PROVIDER],
        min_length=1,
        description="ONNX Runtime providers it may use, in order; [CUDAExecutionProvider] "
        "alone means GPU only.",
    )
    cpus: float = Field(0.5, gt=0, le=64, description="CPU cores per replica.")
    memory_mb: int = Field(128, gt=0, description="Memory per replica in MiB.")
    initial: str | None = Field(
        None,
        description="Initial placement: a tier in tiers, a Ray node or an agent; "
        "None = the placement engine decides.",
    )
    output: TopicTemplate | None = Field(
        None,
        description="Topic each result is published to; '{site}' is the source's site. "
        "None = results are only returned.",
    )
    source: ModuleSource | None = Field(
        None,
        description="What feeds it on each agent (a pipeline per agent); "
        "None = it answers requests only.",
    )
    drift: Drift | None = Field(
        None,
        description="Its drift check (statistic outputs | inputs | error against labels, "
        "threshold, window_s, min_samples, labels topic); drift events go to "
        "lifecycle/drift/<module>. None = none.",
    )
    canary: Canary | None = Field(
        None,
        description="How a new candidate version is tried on a fraction of its sites "
        "before it is promoted or rolled back. None = candidates wait for a person.",
    )
    sampling: SamplingPolicy | None = Field(
        None,
        description="With drift: how each agent samples its inputs for retraining "
        "(samples_per_min, bytes_per_min in any 60 wall seconds, reservoir). None = the "
        "control plane's default (30 samples, 256 KiB a minute).",
    )

    def stream_name(self) -> str:
        """The event stream its pipelines publish on."""
        return self.source.stream if self.source and self.source.stream else self.name


class StreamDecl(SchemaModel):
    """A stream function: windows of messages from an input pattern, outputs to a topic."""

    name: Name = Field(description="Stream name.")
    function: Ref = Field(description="A declared function 'module:function'.")
    tier: ComputeTier = Field("fog", description="Tier whose node runs it.")
    node: str | None = Field(None, description="Pin to this Ray node; None = any of the tier.")
    input: TopicPattern = Field(description="MQTT topic pattern to consume ('+', '#' allowed).")
    output: Topic | None = Field(
        None, description="Topic each output is published to; None = outputs are dropped."
    )
    window_s: float = Field(1.0, gt=0, description="Window length in seconds.")


class TriggerDecl(SchemaModel):
    """A function run on a schedule, once, or after another trigger's run."""

    name: Name = Field(description="Trigger name; 'after' refers to it.")
    function: Ref = Field(description="A declared function 'module:function'.")
    tier: ComputeTier = Field("cloud", description="Tier whose node runs it.")
    at_s: float | None = Field(
        None, ge=0, description="Run at this simulated time (the first run with every_s)."
    )
    every_s: float | None = Field(None, gt=0, description="Run every this many seconds.")
    after: str | None = Field(None, description="Run each time this trigger's run finishes.")
    topic: TopicPattern | None = Field(
        None,
        description="Run on the messages on this topic pattern (one run per burst, "
        "debounce_s after its last message; the message is passed as 'message'), e.g. "
        "lifecycle/drift/<module>.",
    )
    debounce_s: float = Field(1.0, ge=0, le=3600, description="With topic: the burst's quiet.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")

    @model_validator(mode="after")
    def _when(self) -> TriggerDecl:
        reasons = [
            name
            for name, given in (
                ("at_s/every_s", self.at_s is not None or self.every_s is not None),
                ("after", self.after is not None),
                ("topic", self.topic is not None),
            )
            if given
        ]
        if len(reasons) > 1:
            raise ValueError(
                f"expected one of at_s/every_s, after, topic; got {' and '.join(reasons)}"
            )
        if not reasons:
            raise ValueError("expected at least one of at_s, every_s, after, topic")
        return self
