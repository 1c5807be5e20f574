"""The placement engine's inputs from a monitors' snapshot and the controller's modules.

:func:`engine_inputs` turns a :class:`~mesh.control._snapshot.Snapshot` and the
controller's :class:`ModuleIntent` s into the :class:`~placement.Topology`,
:class:`~placement.Source` s, :class:`~placement.Metrics` and
:class:`~placement.CurrentPlacement` that :func:`placement.plan` takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.control._snapshot import Snapshot
from placement import (
    CurrentPlacement,
    CurrentRoute,
    Link,
    Metrics,
    Module,
    Node,
    Source,
    Topology,
)

__all__ = ["EngineInputs", "ModuleIntent", "engine_inputs"]


@dataclass(frozen=True, slots=True)
class ModuleIntent:
    """A module as the controller hands it to the engine.

    Attributes:
        module: the engine's module (SLO, profile, allowed tiers).
        sources: site -> declared request rate (observed rates override).
        node: the node serving it now (None: not placed yet).
        since_s: when it started serving there (monotonic seconds).
        epoch: its route epoch.
        saturated: nodes the controller saw miss this module's SLO (treated as full).
    """

    module: Module
    sources: Mapping[str, float]
    node: str | None = None
    since_s: float = 0.0
    epoch: int = 1
    saturated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EngineInputs:
    """What :func:`placement.plan` takes."""

    topology: Topology
    modules: tuple[Module, ...]
    sources: tuple[Source, ...]
    metrics: Metrics
    current: CurrentPlacement


def engine_inputs(
    snapshot: Snapshot,
    intents: Sequence[ModuleIntent],
    *,
    cost_per_h: Mapping[str, float],
    default_rtt_ms: Mapping[str, float],
    max_utilisation: float = 0.85,
) -> EngineInputs:
    """The engine's inputs from a snapshot and the controller's modules.

    * Nodes: every live node of the snapshot; its cost from its tier.
    * Links: one per (source site, node site): the node's measured RTT from the
      control plane, or ``default_rtt_ms[tier]``.
    * Utilisation: the CPU busy fraction; a node marked saturated for a module
      (it missed that module's SLO) counts as full, so routes leave it.
    * Sources: each module's sites; the gateway's observed rate replaces the
      declared one for a module fed from one site.
    * Current: each module's node and since when, on every site.
    """
    nodes = [n for n in snapshot.nodes.values() if n.alive]
    engine_nodes = tuple(
        Node(
            n.name,
            tier=n.tier,  # type: ignore[arg-type]
            site=n.site,
            cost_per_h=float(cost_per_h.get(n.tier, 0.0)),
            servers=max(1, min(1024, n.servers)),
            memory_mb=max(1.0, n.memory_mb),
            max_utilisation=max_utilisation,
        )
        for n in sorted(nodes, key=lambda n: n.name)
    )
    utilisation: dict[str, float] = {
        n.name: n.utilisation for n in nodes if n.utilisation is not None
    }
    for intent in intents:
        for name in intent.saturated:
            if name in snapshot.nodes:
                utilisation[name] = 0.99
    source_sites = sorted({s for i in intents for s in i.sources})
    rtt_by_site: dict[str, float] = {}
    for n in nodes:
        rtt = n.rtt_ms if n.rtt_ms is not None else float(default_rtt_ms.get(n.tier, 5.0))
        rtt_by_site[n.site] = min(rtt_by_site.get(n.site, math.inf), rtt)
    links = []
    seen: set[tuple[str, str]] = set()
    for site in source_sites:
        for node_site, rtt in sorted(rtt_by_site.items()):
            key = (min(site, node_site), max(site, node_site))
            if site == node_site or key in seen:
                continue
            seen.add(key)
            links.append(Link(key[0], key[1], rtt_ms=rtt))
    sources = []
    rates: dict[tuple[str, str], float] = {}
    routes = []
    for intent in intents:
        name = intent.module.name
        observed = snapshot.module_latency(name)
        for site, rate in sorted(intent.sources.items()):
            sources.append(Source(name, site, max(0.0, rate)))
            if observed is not None and len(intent.sources) == 1:
                rates[name, site] = observed.rate_per_s
            if intent.node is not None and intent.node in snapshot.nodes:
                routes.append(CurrentRoute(name, site, intent.node, intent.since_s, intent.epoch))
    return EngineInputs(
        topology=Topology(nodes=engine_nodes, links=tuple(links)),
        modules=tuple(i.module for i in intents),
        sources=tuple(sources),
        metrics=Metrics(node_utilisation=utilisation, source_rates=rates),
        current=CurrentPlacement(tuple(routes)),
    )
