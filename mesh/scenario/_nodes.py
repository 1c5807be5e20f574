"""The hardware of a scenario: Ray nodes (cloud, fog), edge agents, links, the broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mesh.scenario._fields import (
    CPU_PROVIDER,
    ID_PATTERN,
    URL_PATTERN,
    ComputeTier,
    Ident,
    Name,
    Provider,
    SchemaModel,
    Topic,
)

__all__ = ["AgentDevice", "AgentNode", "Agents", "Broker", "Link", "Nodes", "RayNode"]


# -- nodes ------------------------------------------------------------------------


class RayNode(SchemaModel):
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


class AgentDevice(SchemaModel):
    """One edge agent listed by hand; unset fields take the values of ``nodes.agents``."""

    id: Ident = Field(description="Agent id (MQTT client id); fault targets use 'agent:<id>'.")
    site: Ident = Field(description="Site of the agent (where its sources are).")
    cpus: float | None = Field(None, gt=0, le=64, description="CPU cores; None = the pool's.")
    memory_mb: int | None = Field(None, gt=0, description="Memory in MiB; None = the pool's.")
    providers: list[Provider] | None = Field(
        None, min_length=1, description="ONNX Runtime providers it has; None = the pool's."
    )
    cost_per_h: float | None = Field(None, ge=0, description="Cost per hour; None = the pool's.")


class Agents(SchemaModel):
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


class Nodes(SchemaModel):
    """The hardware: Ray nodes (cloud, fog) and edge agents."""

    ray: list[RayNode] = Field(
        default_factory=lambda: [RayNode(name="cloud", tier="cloud")],
        min_length=1,
        description="Ray nodes; the first cloud node is the head. Needs at least one cloud node.",
    )
    agents: Agents = Field(default_factory=Agents, description="Edge agents (MQTT devices).")


# -- network and broker -------------------------------------------------------------


class Link(SchemaModel):
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


class Broker(SchemaModel):
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
