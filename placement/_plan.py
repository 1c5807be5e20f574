"""What the planner returns: routes, replicas, moves, violations, explanations."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._model import PlacementError, Tier
from ._problem import Problem

__all__ = [
    "Candidate",
    "Decision",
    "InfeasiblePlacementError",
    "Move",
    "Plan",
    "PlanRoutes",
    "Route",
    "RouteColumns",
    "Violation",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class InfeasiblePlacementError(PlacementError):
    """A module cannot meet its SLO from a site on any candidate.

    Attributes:
        module: the module.
        site: the source site.
        slo_ms: its p95 target.
        best_ms: the best p95 any candidate could give it.

    Example:
        >>> str(InfeasiblePlacementError("m", "s", 20.0, 31.5, "too far"))
        "module 'm' from site 's' cannot meet p95 <= 20 ms: best achievable 31.5 ms (too far)"
    """

    def __init__(self, module: str, site: str, slo_ms: float, best_ms: float, why: str) -> None:
        self.module = module
        self.site = site
        self.slo_ms = slo_ms
        self.best_ms = best_ms
        super().__init__(
            f"module {module!r} from site {site!r} cannot meet p95 <= {slo_ms:g} ms: "
            f"best achievable {_ms(best_ms)} ({why})"
        )


def _ms(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.3g} ms"


@dataclass(frozen=True, slots=True)
class Route:
    """Which node serves requests of ``module`` from ``site``.

    The epoch goes up by one each time the route changes node, so that
    clients and agents can tell a newer route from an older one.

    Example:
        >>> Route("m", "s", "cam-07", epoch=2, predicted_p95_ms=11.2, slo_p95_ms=20.0).epoch
        2
    """

    module: str
    site: str
    node: str
    epoch: int
    predicted_p95_ms: float
    slo_p95_ms: float


@dataclass(frozen=True, slots=True)
class Move:
    """A route that changes node in this plan (make-before-break is the controller's job).

    Example:
        >>> Move("vehicle-counter", "int-2-1", from_node="cam-07", to_node="fog-1", epoch=3)
        Move(module='vehicle-counter', site='int-2-1', from_node='cam-07', to_node='fog-1', epoch=3)
    """

    module: str
    site: str
    from_node: str
    to_node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Violation:
    """A route predicted over its SLO, or with no node at all.

    Attributes:
        module: the module.
        site: the source site.
        node: where it was placed anyway (None: nowhere it can run).
        slo_p95_ms: its target.
        predicted_p95_ms: the prediction where it was placed (inf if unplaced).
        best_p95_ms: the best p95 any candidate could give it alone.
        reason: why, in words.

    Example:
        >>> Violation("m", "s", None, 20.0, math.inf, math.inf, "no node can run it").node is None
        True
    """

    module: str
    site: str
    node: str | None
    slo_p95_ms: float
    predicted_p95_ms: float
    best_p95_ms: float
    reason: str

    def __str__(self) -> str:
        where = f"on {self.node}" if self.node else "unplaced"
        return (
            f"{self.module}@{self.site} {where}: predicted {_ms(self.predicted_p95_ms)} > "
            f"SLO {self.slo_p95_ms:g} ms (best achievable {_ms(self.best_p95_ms)}): {self.reason}"
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate node of a decision, as the planner saw it.

    Attributes:
        node: node name.
        tier: its tier.
        predicted_p95_ms: p95 with this route there (and the plan's other load).
        cost_per_h: what serving the route there costs.
        utilisation: the node's utilisation with this route there.
        status: ``"chosen"``, ``"fits"``, or why it was not usable
            (``"over SLO"``, ``"over capacity"``, ``"no memory"``,
            ``"crowds others"``, ``"excluded by policy"``).
    """

    node: str
    tier: Tier
    predicted_p95_ms: float
    cost_per_h: float
    utilisation: float
    status: str

    def __str__(self) -> str:
        return (
            f"{self.node} ({self.tier}): p95 {_ms(self.predicted_p95_ms)}, "
            f"${self.cost_per_h:.4g}/h, rho {self.utilisation:.2f}: {self.status}"
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Why a route went where it went.

    Attributes:
        module: the module.
        site: the source site.
        node: the chosen node (None if there was none).
        previous: the node before this plan (None if new).
        policy: the policy's name.
        reason: one paragraph: the rule, the winner, why better-ranked ones lost.
        candidates: every candidate considered, in the policy's order.
    """

    module: str
    site: str
    node: str | None
    previous: str | None
    policy: str
    reason: str
    candidates: tuple[Candidate, ...]

    def __str__(self) -> str:
        lines = [f"{self.module}@{self.site} -> {self.node} [{self.policy}]: {self.reason}"]
        lines.extend(f"  - {c}" for c in self.candidates)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RouteColumns:
    """All routes of a plan as parallel lists (see :meth:`PlanRoutes.columns`)."""

    module: list[str]
    site: list[str]
    node: list[str]
    epoch: list[int]
    predicted_p95_ms: list[float]
    slo_p95_ms: list[float]


class PlanRoutes(Mapping[tuple[str, str], Route]):
    """Routes of a plan by (module, site), built on access (10^5 routes stay cheap).

    Example:
        >>> plan.routes["vehicle-counter", "int-2-1"].node  # doctest: +SKIP
        'cam-07'
    """

    __slots__ = ("_epoch", "_node_of", "_p95", "_placed", "_problem")

    def __init__(
        self, problem: Problem, node_of: IntArray, epoch: IntArray, p95: FloatArray
    ) -> None:
        self._problem = problem
        self._node_of = node_of
        self._epoch = epoch
        self._p95 = p95
        self._placed = np.flatnonzero(node_of >= 0)

    def _route(self, d: int) -> Route:
        p = self._problem
        return Route(
            module=p.module_names[int(p.demand_module[d])],
            site=p.sites[int(p.demand_site[d])],
            node=p.node_names[int(self._node_of[d])],
            epoch=int(self._epoch[d]),
            predicted_p95_ms=float(self._p95[d]),
            slo_p95_ms=float(p.demand_slo[d]),
        )

    def __getitem__(self, key: tuple[str, str]) -> Route:
        d = self._problem.demand_index(*key)
        if d is None or self._node_of[d] < 0:
            raise KeyError(key)
        return self._route(d)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        p = self._problem
        for d in self._placed.tolist():
            yield p.module_names[p.demand_module[d]], p.sites[p.demand_site[d]]

    def __len__(self) -> int:
        return len(self._placed)

    def values_list(self) -> list[Route]:
        """Every route, in (module, site) order."""
        return [self._route(d) for d in self._placed.tolist()]

    def columns(self) -> RouteColumns:
        """Every route as parallel lists, in (module, site) order: cheap bulk access.

        Example:
            >>> cols = plan.routes.columns()  # doctest: +SKIP
            >>> dict(zip(zip(cols.module, cols.site), cols.node))  # doctest: +SKIP
        """
        p, d = self._problem, self._placed
        modules = np.array(p.module_names, dtype=object)
        sites = np.array(p.sites, dtype=object)
        nodes = np.array(p.node_names, dtype=object)
        return RouteColumns(
            module=modules[p.demand_module[d]].tolist(),
            site=sites[p.demand_site[d]].tolist(),
            node=nodes[self._node_of[d]].tolist(),
            epoch=self._epoch[d].tolist(),
            predicted_p95_ms=self._p95[d].tolist(),
            slo_p95_ms=p.demand_slo[d].tolist(),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlanRoutes):
            return super().__eq__(other)
        a, b = self._problem, other._problem
        if (a.module_names, a.sites, a.node_names) == (b.module_names, b.sites, b.node_names):
            return (
                np.array_equal(a.demand_module[self._placed], b.demand_module[other._placed])
                and np.array_equal(a.demand_site[self._placed], b.demand_site[other._placed])
                and np.array_equal(self._node_of[self._placed], other._node_of[other._placed])
                and np.array_equal(self._epoch[self._placed], other._epoch[other._placed])
                and np.array_equal(self._p95[self._placed], other._p95[other._placed])
            )
        return self.values_list() == other.values_list()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlanRoutes({len(self)} routes)"


@dataclass(frozen=True, slots=True)
class Plan:
    """A placement: routes (and so replicas), what moves, and why.

    Attributes:
        policy: name of the policy that made it.
        routes: (module, site) -> :class:`Route`.
        replicas: module -> node names hosting a replica, sorted.
        moves: routes that change node, with their new epoch.
        violations: routes predicted over SLO or unplaced (empty when feasible).
        overloaded: nodes the plan uses past their threshold or memory.
        node_utilisation: predicted utilisation of every node.
        cost_per_h: what the plan costs per hour.
        cost_lower_bound_per_h: no feasible plan costs less (each route's
            cheapest candidate that meets its SLO alone).
        headroom: smallest (SLO - p95) / SLO over all routes.

    Example:
        >>> p = plan(topology, modules, sources)  # doctest: +SKIP
        >>> p.feasible, p.cost_per_h, p.routes["vehicle-counter", "int-2-1"].node  # doctest: +SKIP
        (True, 0.0123, 'cam-07')
        >>> print(p.explain("vehicle-counter", "int-2-1"))  # doctest: +SKIP
    """

    policy: str
    routes: PlanRoutes
    replicas: Mapping[str, tuple[str, ...]]
    moves: tuple[Move, ...]
    violations: tuple[Violation, ...]
    overloaded: tuple[str, ...]
    node_utilisation: Mapping[str, float]
    cost_per_h: float
    cost_lower_bound_per_h: float
    headroom: float
    _explain: Callable[[str, str], Decision] = field(repr=False, compare=False)

    @property
    def feasible(self) -> bool:
        """Every route within its SLO and no node over capacity."""
        return not self.violations and not self.overloaded

    @property
    def optimal(self) -> bool:
        """Feasible and at the lower bound: no feasible plan is cheaper (a certificate)."""
        bound = self.cost_lower_bound_per_h
        return self.feasible and self.cost_per_h <= bound + 1e-9 * max(1.0, abs(bound))

    def explain(self, module: str, site: str) -> Decision:
        """The decision for (module, site), with every candidate and why the winner won.

        Raises:
            KeyError: no source feeds ``module`` from ``site``.
        """
        return self._explain(module, site)

    def decisions(self) -> Iterator[Decision]:
        """Every decision, in (module, site) order (slow on very large plans)."""
        p = self.routes._problem
        for d in range(p.n_demands):
            yield self._explain(p.module_names[p.demand_module[d]], p.sites[p.demand_site[d]])

    def require_feasible(self) -> Plan:
        """Return self, or raise for the first route that cannot meet its SLO.

        Raises:
            InfeasiblePlacementError: a route is predicted over its SLO.
            PlacementError: a node is over capacity.
        """
        for v in self.violations:
            raise InfeasiblePlacementError(v.module, v.site, v.slo_p95_ms, v.best_p95_ms, v.reason)
        if self.overloaded:
            raise PlacementError(f"plan overloads nodes: {', '.join(self.overloaded)}")
        return self

    def __repr__(self) -> str:
        return (
            f"Plan(policy={self.policy!r}, routes={len(self.routes)}, moves={len(self.moves)}, "
            f"violations={len(self.violations)}, cost_per_h={self.cost_per_h:.6g}, "
            f"headroom={self.headroom:.3f}, feasible={self.feasible})"
        )
