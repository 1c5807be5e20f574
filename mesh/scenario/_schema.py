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
                / drift (the simulation's sensors at a site change)
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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
)

from mesh.scenario._decls import ModuleDecl, StreamDecl, TriggerDecl
from mesh.scenario._fields import Name, Ref, SchemaModel
from mesh.scenario._nodes import AgentNode, Broker, Link, Nodes, RayNode

__all__ = [
    "AgentCrash",
    "AgentRestart",
    "CpuHog",
    "Fault",
    "LinkDelay",
    "NodeRemove",
    "Outputs",
    "Scenario",
    "SensorDrift",
    "SimulationDecl",
    "scenario_json_schema",
    "scenario_json_schema_text",
]

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


class _Fault(SchemaModel):
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


class SensorDrift(_Fault):
    """The sensors at a site change (the simulation applies it): the models' data drifts.

    What changes is the simulation's to say; the traffic one re-aims and
    re-exposes the junction's camera (:mod:`functions.traffic.camera_drift`).
    """

    kind: Literal["drift"] = Field(description="Fault kind.")
    target: str = Field(
        min_length=1,
        description="'site:<site>' or 'agent:<id>' (that agent's site): whose sensors change.",
    )
    severity: float = Field(
        1.0, gt=0, le=1, description="How much they change, from barely (0+) to fully (1)."
    )
    duration_s: float | None = Field(
        None, gt=0, description="How long; None = to the end (a changed camera stays changed)."
    )


Fault = Annotated[
    CpuHog | LinkDelay | AgentRestart | AgentCrash | NodeRemove | SensorDrift,
    Field(discriminator="kind"),
]


class Outputs(SchemaModel):
    """What the run writes."""

    dir: str | None = Field(
        None,
        description="Output directory, relative to the working directory; "
        "None = .mesh/scenarios/<name>.",
    )
    report: bool = Field(True, description="Write a report (KPIs against the baselines).")
    plots: bool = Field(True, description="Draw plots into the report.")


# -- the scenario -----------------------------------------------------------------


class Scenario(SchemaModel):
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
    lifecycle: bool = Field(
        True,
        description="Run the model lifecycle: modules' drift checks track, canaries try "
        "candidates, topic triggers on lifecycle/... retrain; false = drift is measured, "
        "nothing retrains (the run without the loop).",
    )
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
