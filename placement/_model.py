"""The placement engine's input and output values.

All are frozen, slotted dataclasses: the engine is pure, so everything it reads
is passed in and everything it decides comes back in a :class:`Plan`.

Input: a :class:`Topology` (nodes, links between sites), :class:`Module` s (each
with a :class:`Profile` from the registry and a p95 target), :class:`Source` s
(which site feeds which module at what rate), live :class:`Metrics` and the
:class:`CurrentPlacement` with the time each route started (for hysteresis).
Output: a :class:`Plan` (see ``_plan.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = [
    "TIERS",
    "CurrentPlacement",
    "CurrentRoute",
    "Link",
    "Metrics",
    "Module",
    "Node",
    "PlacementError",
    "PlannerSettings",
    "Profile",
    "Source",
    "Tier",
    "Topology",
]

Tier = Literal["edge", "fog", "cloud"]
"""Where a node sits. Edge nodes are devices and serve only their own site."""

TIERS: tuple[Tier, ...] = get_args(Tier)


class PlacementError(ValueError):
    """The engine's input is inconsistent (unknown names, bad numbers).

    Example:
        >>> Node("n", tier="edge", site="s", cost_per_h=-1)
        Traceback (most recent call last):
        ...
        placement._model.PlacementError: node 'n': cost_per_h must be >= 0, got -1
    """


def _check(cond: bool, what: str, message: str) -> None:
    if not cond:
        raise PlacementError(f"{what}: {message}")


def _finite_nonneg(value: float, what: str, name: str) -> None:
    _check(
        isinstance(value, int | float) and math.isfinite(value) and value >= 0,
        what,
        f"{name} must be >= 0, got {value!r}",
    )


@dataclass(frozen=True, slots=True)
class Node:
    """A machine that can host module replicas.

    Attributes:
        name: unique node name (the agent id for edge devices).
        tier: ``"edge"``, ``"fog"`` or ``"cloud"``.
        site: where it is; latency to a source comes from the links between sites.
        cost_per_h: price of the whole node per hour; a plan pays the share it uses.
        servers: parallel workers (``c`` of the M/M/c model): cores or GPU streams.
        memory_mb: memory available to module replicas.
        providers: ONNX Runtime execution providers the node offers.
        max_utilisation: above this busy fraction the node counts as overloaded.

    Example:
        >>> Node("cam-07", tier="edge", site="int-2-1", cost_per_h=0.01, memory_mb=512)
        Node(name='cam-07', tier='edge', site='int-2-1', ...)
    """

    name: str
    tier: Tier
    site: str
    cost_per_h: float
    servers: int = 1
    memory_mb: float = 1024.0
    providers: frozenset[str] = frozenset({"CPUExecutionProvider"})
    max_utilisation: float = 0.85

    def __post_init__(self) -> None:
        what = f"node {self.name!r}"
        _check(bool(self.name), "node", "name must not be empty")
        _check(self.tier in TIERS, what, f"tier must be one of {TIERS}, got {self.tier!r}")
        _check(bool(self.site), what, "site must not be empty")
        _finite_nonneg(self.cost_per_h, what, "cost_per_h")
        _check(
            isinstance(self.servers, int) and 1 <= self.servers <= 1024,
            what,
            f"servers must be an int in 1..1024, got {self.servers!r}",
        )
        _check(self.memory_mb > 0, what, f"memory_mb must be > 0, got {self.memory_mb!r}")
        # Above 0.99 the queueing model's slowdown is unbounded for any SLO.
        _check(
            0 < self.max_utilisation <= 0.99,
            what,
            f"max_utilisation must be in (0, 0.99], got {self.max_utilisation!r}",
        )
        object.__setattr__(self, "providers", frozenset(self.providers))


@dataclass(frozen=True, slots=True)
class Link:
    """A symmetric network link between two sites.

    Attributes:
        a: one site.
        b: the other site.
        rtt_ms: round-trip time.
        bandwidth_mbps: throughput for request and response payloads.

    Example:
        >>> Link("int-2-1", "fog-north", rtt_ms=4.0, bandwidth_mbps=100.0)
        Link(a='int-2-1', b='fog-north', rtt_ms=4.0, bandwidth_mbps=100.0)
    """

    a: str
    b: str
    rtt_ms: float
    bandwidth_mbps: float = math.inf

    def __post_init__(self) -> None:
        what = f"link {self.a!r}-{self.b!r}"
        _check(bool(self.a) and bool(self.b), what, "sites must not be empty")
        _check(self.a != self.b, what, "a link joins two different sites")
        _finite_nonneg(self.rtt_ms, what, "rtt_ms")
        _check(
            self.bandwidth_mbps > 0,
            what,
            f"bandwidth_mbps must be > 0, got {self.bandwidth_mbps!r}",
        )


@dataclass(frozen=True, slots=True)
class Topology:
    """Nodes and the links between their sites.

    Paths: a source reaches nodes at its own site directly (0 ms) and non-edge
    nodes at other sites over links; transit goes only through sites that
    host a fog or cloud node, and the path with the lowest RTT is used (its
    bandwidth is the narrowest link on it). Edge devices serve only their own
    site: offload goes up a tier, not sideways to another device.

    Example:
        >>> Topology(nodes=(Node("e1", tier="edge", site="s1", cost_per_h=0.0),),)
        Topology(nodes=(Node(name='e1', ...),), links=())
    """

    nodes: tuple[Node, ...]
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "links", tuple(self.links))
        seen: set[str] = set()
        for node in self.nodes:
            _check(node.name not in seen, "topology", f"node {node.name!r} appears twice")
            seen.add(node.name)
        pairs: set[tuple[str, str]] = set()
        for link in self.links:
            key = (min(link.a, link.b), max(link.a, link.b))
            _check(key not in pairs, "topology", f"link {key[0]!r}-{key[1]!r} appears twice")
            pairs.add(key)


@dataclass(frozen=True, slots=True)
class Profile:
    """What the registry measured for one model version.

    Attributes:
        service_ms: p95 service time on an idle node, keyed by execution
            provider (``"CUDAExecutionProvider"``), by tier (``"edge"``) or by
            both (``"CPUExecutionProvider@edge"``); for a node the most specific
            key wins, and among its providers the fastest. It is also used,
            conservatively, as the busy time per request.
        memory_mb: memory one replica needs.

    Example:
        >>> profile = Profile({"CPUExecutionProvider@edge": 8.0, "CUDAExecutionProvider": 1.0})
        >>> profile.service_time_ms("edge", ["CPUExecutionProvider"])
        8.0
    """

    service_ms: Mapping[str, float]
    memory_mb: float = 100.0

    def __post_init__(self) -> None:
        _check(bool(self.service_ms), "profile", "service_ms must have at least one entry")
        for key, value in self.service_ms.items():
            _check(
                math.isfinite(value) and value > 0,
                "profile",
                f"service_ms[{key!r}] must be > 0, got {value!r}",
            )
        _finite_nonneg(self.memory_mb, "profile", "memory_mb")

    def service_time_ms(self, tier: Tier, providers: Iterable[str]) -> float | None:
        """Service time on a node of this tier with these providers, or None.

        Example:
            >>> Profile({"fog": 2.0}).service_time_ms("fog", ["CPUExecutionProvider"])
            2.0
        """
        providers = sorted(providers)
        for keys in ([f"{p}@{tier}" for p in providers], providers, [tier]):
            found = [self.service_ms[k] for k in keys if k in self.service_ms]
            if found:
                return min(found)
        return None


@dataclass(frozen=True, slots=True)
class Module:
    """An inference module to place.

    Attributes:
        name: module name.
        slo_p95_ms: the p95 latency target, end to end from the source site.
        profile: service times and memory, from the registry.
        tiers: tiers it may run on.
        required_providers: execution providers a node must offer (all of them).
        request_bytes: payload sent per request (input tensor).
        response_bytes: payload returned per request.

    Example:
        >>> Module("vehicle-counter", slo_p95_ms=20.0, profile=Profile({"edge": 8.0}, 150.0))
        Module(name='vehicle-counter', slo_p95_ms=20.0, ...)
    """

    name: str
    slo_p95_ms: float
    profile: Profile
    tiers: frozenset[Tier] = frozenset(TIERS)
    required_providers: frozenset[str] = frozenset()
    request_bytes: int = 0
    response_bytes: int = 0

    def __post_init__(self) -> None:
        what = f"module {self.name!r}"
        _check(bool(self.name), "module", "name must not be empty")
        _check(
            math.isfinite(self.slo_p95_ms) and self.slo_p95_ms > 0,
            what,
            f"slo_p95_ms must be > 0, got {self.slo_p95_ms!r}",
        )
        tiers = frozenset(self.tiers)
        _check(bool(tiers), what, f"tiers must name at least one of {TIERS}")
        for tier in tiers:
            _check(tier in TIERS, what, f"unknown tier {tier!r}; expected one of {TIERS}")
        object.__setattr__(self, "tiers", tiers)
        object.__setattr__(self, "required_providers", frozenset(self.required_providers))
        _check(self.request_bytes >= 0, what, "request_bytes must be >= 0")
        _check(self.response_bytes >= 0, what, "response_bytes must be >= 0")


@dataclass(frozen=True, slots=True)
class Source:
    """A site that sends requests to a module.

    Several sources for the same (module, site) add up.

    Example:
        >>> Source("vehicle-counter", site="int-2-1", rate_per_s=30.0)
        Source(module='vehicle-counter', site='int-2-1', rate_per_s=30.0)
    """

    module: str
    site: str
    rate_per_s: float

    def __post_init__(self) -> None:
        _finite_nonneg(self.rate_per_s, f"source {self.module!r}@{self.site!r}", "rate_per_s")


@dataclass(frozen=True, slots=True)
class Metrics:
    """Live observations from the monitors.

    Attributes:
        node_utilisation: observed busy fraction per node (0..1), including the
            work of the current placement; the engine subtracts what it
            predicts for that placement to get the background load.
        source_rates: observed request rate per (module, site); overrides the
            source's declared rate.
        utilisation_includes_current: False when ``node_utilisation`` is
            already the background alone (a monitor that can tell, or a test).

    Example:
        >>> Metrics(node_utilisation={"cam-07": 0.7}).node_utilisation["cam-07"]
        0.7
    """

    node_utilisation: Mapping[str, float] = field(default_factory=dict)
    source_rates: Mapping[tuple[str, str], float] = field(default_factory=dict)
    utilisation_includes_current: bool = True


@dataclass(frozen=True, slots=True)
class CurrentRoute:
    """Where a (module, site) is served now and since when.

    Example:
        >>> CurrentRoute("counter", "int-1", node="cam-07", since_s=100.0, epoch=3)
        CurrentRoute(module='counter', site='int-1', node='cam-07', since_s=100.0, epoch=3)
    """

    module: str
    site: str
    node: str
    since_s: float
    epoch: int = 1


@dataclass(frozen=True, slots=True)
class CurrentPlacement:
    """The placement in force, with route start times (the planner reads no clock).

    Example:
        >>> current = CurrentPlacement((CurrentRoute("m", "s", node="n", since_s=0.0),))
        >>> current.get("m", "s").node
        'n'
    """

    routes: tuple[CurrentRoute, ...] = ()
    _index: dict[tuple[str, str], CurrentRoute] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        index = {(r.module, r.site): r for r in self.routes}
        _check(len(index) == len(self.routes), "current placement", "a route appears twice")
        object.__setattr__(self, "_index", index)

    def get(self, module: str, site: str) -> CurrentRoute | None:
        """The current route of (module, site), or None."""
        return self._index.get((module, site))

    def __len__(self) -> int:
        return len(self.routes)


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """Knobs of the planner.

    Attributes:
        slo_margin: hysteresis band: a route moves only to a node predicted at
            most ``slo * (1 - slo_margin)``, while it stays where it is until
            its prediction passes ``slo``.
        cost_margin: a cheaper node must save more than this fraction of the
            route's current cost before the route moves for cost alone.
        min_dwell_s: a route that meets its SLO stays at least this long.
        candidates_per_tier: nearest remote nodes per tier a site considers
            (bounds the work at 10,000 sites; the own site's edge devices always count).
        exchange_budget: how many (route, node, resident) triples the exchange
            pass may examine: it moves a route to a better node by sending one
            route already there elsewhere, when that lowers the total cost.
            Small plans are searched fully; 0 turns the pass off.

    Example:
        >>> PlannerSettings(min_dwell_s=30.0).slo_margin
        0.1
    """

    slo_margin: float = 0.1
    cost_margin: float = 0.05
    min_dwell_s: float = 60.0
    candidates_per_tier: int = 4
    exchange_budget: int = 50_000

    def __post_init__(self) -> None:
        _check(0 <= self.slo_margin < 1, "settings", "slo_margin must be in [0, 1)")
        _check(0 <= self.cost_margin < 1, "settings", "cost_margin must be in [0, 1)")
        _finite_nonneg(self.min_dwell_s, "settings", "min_dwell_s")
        _check(self.candidates_per_tier >= 1, "settings", "candidates_per_tier must be >= 1")
        _check(self.exchange_budget >= 0, "settings", "exchange_budget must be >= 0")
