"""The scenario schema: one YAML file describes a whole deployment and its run.

Pydantic models with ``extra="forbid"`` and a description on every field; the
JSON schema for editors is generated from them (``mesh scenario schema >
scenarios/schema.json``). :func:`mesh.scenario._load.load_scenario` reads a file
into :class:`Scenario` and then checks what the types alone cannot (references
resolve, every module has a feasible placement, no stream cycle).

Shape::

    name, description, seed
    nodes:      ray (cloud/fog Ray nodes) · agents (edge devices, one per site or listed)
    links:      emulated delay/jitter/bandwidth between tiers, sites or nodes
    broker:     embedded | mosquitto | external
    functions:  'package.module:function' references
    modules:    inference modules: model source, QoS, tiers, providers, memory, initial
                placement, and the source that feeds them on each agent
    streams:    stream functions from an input topic pattern to an output topic
    triggers:   scheduled or chained function runs (training, batch analytics)
    simulation: a plugin ('module:attribute') and its settings (e.g. SUMO traffic)
    duration_s: how long the live phase lasts when there is no simulation
    faults:     a timeline of cpu_hog / link_delay / agent_restart / agent_crash / node_remove
    outputs:    where the report goes

Times are in simulated seconds; relative input paths (model path, replay
file) are relative to the scenario file, ``outputs.dir`` to the working directory.

Example:
    >>> s = Scenario.model_validate({"name": "tiny"})
    >>> [n.name for n in s.nodes.ray], s.broker.kind
    (['cloud'], 'embedded')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from mesh.sdk._specs import _check_topic

__all__ = [
    "CPU_PROVIDER",
    "GPU_PROVIDERS",
    "AgentCrash",
    "AgentDevice",
    "AgentNode",
    "AgentRestart",
    "Agents",
    "Broker",
    "CpuHog",
    "Fault",
    "Link",
    "LinkDelay",
    "ModelSource",
    "ModuleDecl",
    "ModuleQoS",
    "ModuleSource",
    "NodeRemove",
    "Nodes",
    "Outputs",
    "RayNode",
    "Scenario",
    "SimulationDecl",
    "StreamDecl",
    "TriggerDecl",
    "scenario_json_schema",
    "scenario_json_schema_text",
]

CPU_PROVIDER = "CPUExecutionProvider"
#: ONNX Runtime providers that need a GPU: on a Ray node they need ``gpus > 0``.
GPU_PROVIDERS: frozenset[str] = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}
)

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
REF_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
PROVIDER_PATTERN = r"^[A-Za-z][A-Za-z0-9]*ExecutionProvider$"
REGISTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}(@[0-9]+)?$"
URL_PATTERN = r"^mqtts?://[^/\s:]+(:[0-9]{1,5})?$"

#: What each pattern means, for error messages ("expected ...").
PATTERN_TEXT: dict[str, str] = {
    NAME_PATTERN: "a name of letters, digits, '_' or '-' starting with a letter or '_'",
    ID_PATTERN: "an id of letters, digits, '_', '.' or '-'",
    REF_PATTERN: "a reference 'package.module:name'",
    PROVIDER_PATTERN: "an ONNX Runtime provider such as 'CPUExecutionProvider'",
    REGISTRY_PATTERN: "a registered model 'name' or 'name@version'",
    URL_PATTERN: "a broker URL 'mqtt://host:port'",
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Ref = Annotated[str, StringConstraints(pattern=REF_PATTERN)]
Provider = Annotated[str, StringConstraints(pattern=PROVIDER_PATTERN)]
Tier = Literal["cloud", "fog", "edge"]
ComputeTier = Literal["cloud", "fog"]


def _topic_pattern(value: str) -> str:
    try:
        return _check_topic(value, pattern=True)
    except ValueError:
        raise ValueError(
            "expected an MQTT topic pattern ('+' and '#' only as whole levels, '#' last), "
            f"got {value!r}"
        ) from None


def _topic(value: str) -> str:
    try:
        return _check_topic(value, pattern=False)
    except ValueError:
        raise ValueError(f"expected an MQTT topic without '+' or '#', got {value!r}") from None


def _topic_template(value: str) -> str:
    try:
        _check_topic(value.replace("{site}", "site"), pattern=False)
    except ValueError:
        raise ValueError(
            f"expected an MQTT topic without '+' or '#' ('{{site}}' allowed), got {value!r}"
        ) from None
    return value


TopicPattern = Annotated[str, AfterValidator(_topic_pattern)]
Topic = Annotated[str, AfterValidator(_topic)]
TopicTemplate = Annotated[str, AfterValidator(_topic_template)]


def _exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(fields)
        got = ", ".join(given) if given else "none"
        raise ValueError(f"expected exactly one of {names} for {what}, got {got}")


def _all_tiers() -> list[Tier]:
    return ["edge", "fog", "cloud"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- nodes ------------------------------------------------------------------------


class RayNode(_Model):
    """A Ray node of the cloud or fog tier (started locally when the cluster is embedded)."""

    name: Name = Field(description="Node name; fault targets and links use it ('node:<name>').")
    tier: ComputeTier = Field(description="Tier of the node: cloud or fog.")
    site: Ident | None = Field(
        None, description="Site label (mesh.site), e.g. the fog site; None = the node's name."
    )
    cpus: int = Field(
        1, ge=1, le=512, description="CPU cores the node advertises to Ray (a whole number)."
    )
    gpus: float = Field(0.0, ge=0, le=64, description="GPUs it advertises; > 0 enables CUDA.")
    memory_mb: int = Field(2048, gt=0, description="Memory for modules placed on it, in MiB.")
    cost_per_h: float = Field(
        0.0,
        ge=0,
        description="Cost per hour while it hosts work; the placement engine minimises it.",
    )
    labels: dict[Annotated[str, StringConstraints(pattern=ID_PATTERN)], str] = Field(
        default_factory=dict,
        description="Extra Ray node labels; mesh.tier and mesh.site are set by the mesh.",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if k.startswith("mesh."))
        if reserved:
            raise ValueError(
                f"expected no 'mesh.' labels (the mesh sets tier and site ones), got {reserved}"
            )
        return value

    @property
    def site_name(self) -> str:
        """The node's site (its name when no site is given)."""
        return self.site or self.name

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime providers the node offers: CUDA only with ``gpus > 0``."""
        if self.gpus > 0:
            return ("CUDAExecutionProvider", CPU_PROVIDER)
        return (CPU_PROVIDER,)


class AgentDevice(_Model):
    """One edge agent listed by hand; unset fields take the values of ``nodes.agents``."""

    id: Ident = Field(description="Agent id (MQTT client id); fault targets use 'agent:<id>'.")
    site: Ident = Field(description="Site of the agent (where its sources are).")
    cpus: float | None = Field(None, gt=0, le=64, description="CPU cores; None = the pool's.")
    memory_mb: int | None = Field(None, gt=0, description="Memory in MiB; None = the pool's.")
    providers: list[Provider] | None = Field(
        None, min_length=1, description="ONNX Runtime providers it has; None = the pool's."
    )
    cost_per_h: float | None = Field(None, ge=0, description="Cost per hour; None = the pool's.")


class Agents(_Model):
    """Edge agents: one per site of the simulation, listed devices, or both."""

    per_site: bool = Field(
        False,
        description="One agent per site of the simulation (the traffic one: per signalised "
        "junction), id '<prefix><site>'.",
    )
    prefix: str = Field(
        "j-", pattern=r"^[A-Za-z0-9_.\-]{0,32}$", description="Id prefix of per-site agents."
    )
    cpus: float = Field(1.0, gt=0, le=64, description="CPU cores of each agent.")
    memory_mb: int = Field(512, gt=0, description="Memory of each agent for modules, in MiB.")
    providers: list[Provider] = Field(
        default_factory=lambda: [CPU_PROVIDER],
        min_length=1,
        description="ONNX Runtime providers each agent has.",
    )
    cost_per_h: float = Field(0.02, ge=0, description="Cost per hour of each agent.")
    devices: list[AgentDevice] = Field(
        default_factory=list, description="Agents listed one by one (in addition to per_site)."
    )


@dataclass(frozen=True, slots=True)
class AgentNode:
    """An edge agent with every value resolved (see :meth:`Scenario.agent_nodes`)."""

    id: str
    site: str
    cpus: float
    memory_mb: int
    providers: tuple[str, ...]
    cost_per_h: float


class Nodes(_Model):
    """The hardware: Ray nodes (cloud, fog) and edge agents."""

    ray: list[RayNode] = Field(
        default_factory=lambda: [RayNode(name="cloud", tier="cloud")],
        min_length=1,
        description="Ray nodes; the first cloud node is the head. Needs at least one cloud node.",
    )
    agents: Agents = Field(default_factory=Agents, description="Edge agents (MQTT devices).")


# -- network and broker -------------------------------------------------------------


class Link(_Model):
    """An emulated network link, the same shape in both directions.

    Endpoints are tiers (cloud, fog, edge), Ray node names, agent ids or sites;
    the most specific declaration wins (node/agent over site over tier).
    """

    from_: str = Field(alias="from", min_length=1, description="One end: tier, node, agent, site.")
    to: str = Field(min_length=1, description="The other end: tier, node, agent or site.")
    delay_ms: float = Field(0.0, ge=0, le=60_000, description="One-way delay in milliseconds.")
    jitter_ms: float = Field(0.0, ge=0, description="Uniform jitter (+/-) on the delay, in ms.")
    bandwidth_mbps: float | None = Field(
        None, gt=0, description="Rate cap in Mbit/s each way; None = unlimited."
    )

    @property
    def key(self) -> str:
        """The link's name in fault targets: ``'<from>-><to>'``."""
        return f"{self.from_}->{self.to}"


class Broker(_Model):
    """The MQTT broker between the control plane and the edge agents."""

    kind: Literal["embedded", "mosquitto", "external"] = Field(
        "embedded",
        description="embedded: a Python broker in the mesh; mosquitto: started locally; "
        "external: already running at url.",
    )
    url: str | None = Field(
        None, pattern=URL_PATTERN, description="mqtt://host:port; required for external only."
    )
    port: int | None = Field(
        None, ge=0, le=65535, description="Port for embedded/mosquitto; None or 0 = a free port."
    )
    prefix: Topic = Field("mesh/v1", description="Topic prefix of the mesh's MQTT contract.")

    @model_validator(mode="after")
    def _url(self) -> Broker:
        if self.kind == "external" and self.url is None:
            raise ValueError("expected a url for kind 'external', e.g. 'mqtt://10.0.0.2:1883'")
        if self.kind != "external" and self.url is not None:
            raise ValueError(f"url is only for kind 'external'; kind {self.kind!r} starts its own")
        return self


# -- modules, streams, triggers -------------------------------------------------------


class ModelSource(_Model):
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
        _exactly_one(self, ("train", "path", "registry"), "a model")
        if (self.args or self.tune) and self.train is None:
            raise ValueError("args and tune are only for a train function")
        return self


class ModuleQoS(_Model):
    """The quality of service a module must meet."""

    p95_ms: float = Field(gt=0, description="Target 95th-percentile latency in milliseconds.")
    min_throughput_rps: float | None = Field(
        None, gt=0, description="Requests per second it must sustain; None = no target."
    )


class ModuleSource(_Model):
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


class ModuleDecl(_Model):
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
        default_factory=_all_tiers,
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

    def stream_name(self) -> str:
        """The event stream its pipelines publish on."""
        return self.source.stream if self.source and self.source.stream else self.name


class StreamDecl(_Model):
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


class TriggerDecl(_Model):
    """A function run on a schedule, once, or after another trigger's run."""

    name: Name = Field(description="Trigger name; 'after' refers to it.")
    function: Ref = Field(description="A declared function 'module:function'.")
    tier: ComputeTier = Field("cloud", description="Tier whose node runs it.")
    at_s: float | None = Field(
        None, ge=0, description="Run at this simulated time (the first run with every_s)."
    )
    every_s: float | None = Field(None, gt=0, description="Run every this many seconds.")
    after: str | None = Field(None, description="Run each time this trigger's run finishes.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")

    @model_validator(mode="after")
    def _when(self) -> TriggerDecl:
        if self.after is not None and (self.at_s is not None or self.every_s is not None):
            raise ValueError("expected after alone, or at_s and/or every_s, not both")
        if self.after is None and self.at_s is None and self.every_s is None:
            raise ValueError("expected at least one of at_s, every_s, after")
        return self


# -- simulation -------------------------------------------------------------------


class SimulationDecl(BaseModel):
    """The simulation the scenario drives: a plugin, and its own settings beside it.

    ``plugin`` names a :class:`~mesh.scenario.SimulationPlugin` as
    ``module:attribute``; every other key of the block is the plugin's and is
    validated by its ``config_model`` when the scenario loads.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    plugin: Ref = Field(
        description="The simulation plugin, 'package.module:attribute' "
        "(e.g. functions.traffic.sim:plugin for SUMO traffic); the block's other keys "
        "are its settings."
    )

    def settings(self) -> dict[str, Any]:
        """The plugin's keys: the block less ``plugin``."""
        return dict(self.model_extra or {})


# -- faults -----------------------------------------------------------------------


class _Fault(_Model):
    at_s: float = Field(ge=0, description="When it starts, in simulated seconds.")
    target: str = Field(min_length=1, description="'agent:<id>', 'node:<name>' or 'link:<a>-><b>'.")


class CpuHog(_Fault):
    """Busy-loop processes take CPU from an agent or a Ray node."""

    kind: Literal["cpu_hog"] = Field(description="Fault kind.")
    duration_s: float = Field(gt=0, description="How long it lasts, in simulated seconds.")
    load: float = Field(1.0, gt=0, le=1, description="Share of the target's cores kept busy.")


class LinkDelay(_Fault):
    """A link's delay (and optionally its bandwidth) changes for a while."""

    kind: Literal["link_delay"] = Field(description="Fault kind.")
    delay_ms: float = Field(ge=0, le=60_000, description="New one-way delay in milliseconds.")
    jitter_ms: float = Field(0.0, ge=0, description="New jitter in milliseconds.")
    bandwidth_mbps: float | None = Field(None, gt=0, description="New rate cap; None = unchanged.")
    duration_s: float | None = Field(None, gt=0, description="How long; None = to the end.")


class AgentRestart(_Fault):
    """An agent process is killed and started again after ``down_s``."""

    kind: Literal["agent_restart"] = Field(description="Fault kind.")
    down_s: float = Field(5.0, ge=0, description="Seconds before it starts again.")


class AgentCrash(_Fault):
    """An agent process is killed and stays down."""

    kind: Literal["agent_crash"] = Field(description="Fault kind.")


class NodeRemove(_Fault):
    """A Ray node leaves the cluster for good (not the head)."""

    kind: Literal["node_remove"] = Field(description="Fault kind.")


Fault = Annotated[
    CpuHog | LinkDelay | AgentRestart | AgentCrash | NodeRemove, Field(discriminator="kind")
]


class Outputs(_Model):
    """What the run writes."""

    dir: str | None = Field(
        None,
        description="Output directory, relative to the working directory; "
        "None = .mesh/scenarios/<name>.",
    )
    report: bool = Field(True, description="Write a report (KPIs against the baselines).")
    plots: bool = Field(True, description="Draw plots into the report.")


# -- the scenario -----------------------------------------------------------------


class Scenario(_Model):
    """A whole deployment and its run: hardware, network, functions, modules, faults.

    Example:
        >>> Scenario.model_validate({"name": "tiny"}).output_dir()
        PosixPath('.mesh/scenarios/tiny')
    """

    name: Name = Field(description="Scenario name.")
    description: str = Field("", description="What the scenario shows.")
    seed: int = Field(0, description="Seed of every random choice (demand, jitter, faults).")
    nodes: Nodes = Field(default_factory=Nodes, description="Ray nodes and edge agents.")
    links: list[Link] = Field(default_factory=list, description="Emulated links.")
    broker: Broker = Field(default_factory=Broker, description="The MQTT broker.")
    functions: list[Ref] = Field(
        default_factory=list, description="Functions to register, as 'package.module:function'."
    )
    modules: list[ModuleDecl] = Field(default_factory=list, description="Inference modules.")
    streams: list[StreamDecl] = Field(default_factory=list, description="Stream functions.")
    triggers: list[TriggerDecl] = Field(
        default_factory=list, description="Scheduled and chained function runs."
    )
    simulation: SimulationDecl | None = Field(
        None,
        description="The simulation it drives (a plugin and its settings); None = none.",
    )
    duration_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="Seconds the live phase lasts without a simulation (a simulation ends "
        "it itself); None = no live phase.",
    )
    faults: list[Fault] = Field(default_factory=list, description="Fault timeline.")
    outputs: Outputs = Field(
        default_factory=Outputs, description="Where outputs go and what is written."
    )

    _source: Path | None = PrivateAttr(None)
    _sites: tuple[str, ...] = PrivateAttr(())
    _plugin: Any = PrivateAttr(None)
    _sim_config: Any = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file it was loaded from, if any."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Directory that relative input paths are resolved against."""
        return self._source.parent if self._source is not None else Path()

    def resolve_path(self, path: str) -> Path:
        """An input path (network file, model file) resolved against :attr:`base_dir`."""
        return self.base_dir / Path(path).expanduser()

    def output_dir(self) -> Path:
        """Where outputs go (``outputs.dir``, default ``.mesh/scenarios/<name>``)."""
        return Path(self.outputs.dir) if self.outputs.dir else Path(".mesh/scenarios", self.name)

    def site_ids(self) -> list[str]:
        """The simulation's sites (none without one, or before the loader checked it)."""
        return list(self._sites)

    @property
    def plugin(self) -> Any:
        """The simulation plugin (None without a simulation, or before the loader loaded it)."""
        return self._plugin

    @property
    def sim_config(self) -> Any:
        """The plugin's validated settings (None without a simulation)."""
        return self._sim_config

    def end_s(self) -> float | None:
        """When the live phase ends: the simulation's duration, else ``duration_s``."""
        if self._plugin is not None:
            return float(self._plugin.duration_s(self._sim_config))
        return self.duration_s

    def source_modules(self) -> list[ModuleDecl]:
        """Modules an agent runs on a source (a pipeline per agent)."""
        return [m for m in self.modules if m.source is not None]

    def agent_nodes(self) -> list[AgentNode]:
        """Every edge agent with its values resolved: per-site ones first, then devices."""
        pool = self.nodes.agents
        out: list[AgentNode] = []
        if pool.per_site:
            out.extend(
                AgentNode(
                    f"{pool.prefix}{j}",
                    j,
                    pool.cpus,
                    pool.memory_mb,
                    tuple(pool.providers),
                    pool.cost_per_h,
                )
                for j in self.site_ids()
            )
        for d in pool.devices:
            out.append(
                AgentNode(
                    d.id,
                    d.site,
                    pool.cpus if d.cpus is None else d.cpus,
                    pool.memory_mb if d.memory_mb is None else d.memory_mb,
                    tuple(pool.providers if d.providers is None else d.providers),
                    pool.cost_per_h if d.cost_per_h is None else d.cost_per_h,
                )
            )
        return out

    def head_node(self) -> RayNode | None:
        """The Ray head: the first cloud node."""
        return next((n for n in self.nodes.ray if n.tier == "cloud"), None)


def scenario_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`Scenario`, as published in ``scenarios/schema.json``."""
    schema = Scenario.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def scenario_json_schema_text() -> str:
    """:func:`scenario_json_schema` as the exact text of ``scenarios/schema.json``."""
    return json.dumps(scenario_json_schema(), indent=2, sort_keys=False) + "\n"
