"""plan(): one planning round, pure and deterministic.

The controller calls it on every trigger (observed p95 over SLO for a window,
predicted violation, node joined/left/overloaded, new model version) with the
topology, modules, sources, live metrics, the current placement and "now";
it gets back a :class:`Plan`. Same input, same plan: no clock, no I/O, no
randomness, and the order of the input sequences does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._evaluate import best_alone_p95, evaluate, lower_bound
from ._explain import Explainer
from ._greedy import Assignment, assign
from ._model import (
    CurrentPlacement,
    CurrentRoute,
    Metrics,
    Module,
    PlacementError,
    PlannerSettings,
    Source,
    Topology,
)
from ._plan import Move, Plan, PlanRoutes, Violation
from ._policies import OURS, POLICIES, Policy
from ._problem import Problem, build_problem

__all__ = ["advance", "make_plan", "plan"]


def plan(
    topology: Topology,
    modules: Sequence[Module],
    sources: Sequence[Source],
    *,
    metrics: Metrics | None = None,
    current: CurrentPlacement | None = None,
    now_s: float = 0.0,
    policy: Policy | str = OURS,
    settings: PlannerSettings | None = None,
) -> Plan:
    """Plan where every module runs and which node serves each source site.

    Args:
        topology: nodes and links.
        modules: the modules to place, with profiles and SLOs.
        sources: which sites feed which module at what rate.
        metrics: live node utilisation and observed rates.
        current: the placement in force, with route start times.
        now_s: the time of this round, on the same clock as ``since_s``.
        policy: a :class:`Policy` or the name of a shipped one
            (``"ours"``, ``"cloud_only"``, ``"edge_only"``, ``"fogflow"``, or
            ``"current"`` to predict the current placement without moving it).
        settings: hysteresis and search knobs.

    Returns:
        The plan; ``plan.explain(module, site)`` tells why each route went where.

    Raises:
        PlacementError: the input is inconsistent (unknown module, bad numbers).

    Example:
        >>> from placement import Link, Module, Node, Profile, Source, Topology, plan
        >>> topo = Topology(
        ...     nodes=(
        ...         Node("cam-1", tier="edge", site="int-1", cost_per_h=0.01, memory_mb=512),
        ...         Node("fog-1", tier="fog", site="depot", cost_per_h=0.3, servers=4),
        ...     ),
        ...     links=(Link("int-1", "depot", rtt_ms=4.0),),
        ... )
        >>> profile = Profile({"edge": 6.0, "fog": 2.0}, memory_mb=150.0)
        >>> counter = Module("counter", slo_p95_ms=20.0, profile=profile)
        >>> p = plan(topo, [counter], [Source("counter", site="int-1", rate_per_s=10.0)])
        >>> p.routes["counter", "int-1"].node
        'cam-1'
    """
    settings = settings if settings is not None else PlannerSettings()
    chosen = _resolve(policy)
    problem = build_problem(
        topology,
        modules,
        sources,
        metrics=metrics if metrics is not None else Metrics(),
        current=current if current is not None else CurrentPlacement(),
        now_s=now_s,
        settings=settings,
    )
    return make_plan(problem, assign(problem, chosen.rank(problem)), chosen)


def _resolve(policy: Policy | str) -> Policy:
    if isinstance(policy, str):
        try:
            return POLICIES[policy]
        except KeyError:
            known = ", ".join(sorted(POLICIES))
            raise PlacementError(f"unknown policy {policy!r} (known: {known})") from None
    return policy


def make_plan(problem: Problem, assignment: Assignment, policy: Policy) -> Plan:
    """Judge an assignment and package it as a :class:`Plan` (used by every solver)."""
    ev = evaluate(problem, assignment.cols)
    bound = lower_bound(problem)
    node_of = ev.node_of
    inc = problem.incumbent_node
    same = (node_of == inc) & (inc >= 0)
    epoch = np.where(same | (node_of < 0), problem.epoch, problem.epoch + 1)

    names = problem.node_names
    modules = problem.module_names
    sites = problem.sites
    moved = np.flatnonzero((inc >= 0) & (node_of >= 0) & (node_of != inc))
    moves = tuple(
        Move(
            module=modules[problem.demand_module[d]],
            site=sites[problem.demand_site[d]],
            from_node=names[inc[d]],
            to_node=names[node_of[d]],
            epoch=int(epoch[d]),
        )
        for d in moved.tolist()
    )

    # Replicas: re-sort the (node, module) pairs module-major so each module's
    # nodes come out in name order.
    n_modules = len(modules)
    pair_node, pair_module = ev.replicas // n_modules, ev.replicas % n_modules
    by_module = np.argsort(pair_module * len(names) + pair_node, kind="stable")
    pair_node, pair_module = pair_node[by_module], pair_module[by_module]
    bounds = np.searchsorted(pair_module, np.arange(n_modules + 1)).tolist()
    node_array = np.array(names, dtype=object)
    replicas = {
        modules[m]: tuple(node_array[pair_node[bounds[m] : bounds[m + 1]]].tolist())
        for m in range(n_modules)
        if bounds[m + 1] > bounds[m]
    }

    missed = np.flatnonzero(~ev.slo_ok)
    best = best_alone_p95(problem, missed)
    violations = tuple(
        _violation(problem, assignment, ev.p95, float(b), node_of, d, policy)
        for d, b in zip(missed.tolist(), best.tolist(), strict=True)
    )
    overloaded = tuple(names[n] for n in np.flatnonzero(ev.overloaded).tolist())
    return Plan(
        policy=policy.name,
        routes=PlanRoutes(problem, node_of, epoch.astype(np.int64), ev.p95),
        replicas=replicas,
        moves=moves,
        violations=violations,
        overloaded=overloaded,
        node_utilisation=dict(zip(names, ev.utilisation.tolist(), strict=True)),
        cost_per_h=ev.cost_per_h,
        cost_lower_bound_per_h=bound,
        headroom=ev.headroom,
        _explain=Explainer(problem, assignment, ev, policy),
    )


def _violation(
    problem: Problem,
    assignment: Assignment,
    p95: npt.NDArray[np.float64],
    best: float,
    node_of: npt.NDArray[np.int64],
    d: int,
    policy: Policy,
) -> Violation:
    slo = float(problem.demand_slo[d])
    node = int(node_of[d])
    if node < 0 and np.isfinite(best):
        reason = f"policy {policy.name!r} placed it nowhere"
    elif node < 0:
        reason = "no reachable node can run it (tier, execution provider, memory or profile)"
    elif best > slo:
        reason = "no candidate meets the SLO even alone: too far or too slow"
    elif assignment.fallback[d]:
        reason = "every candidate that would meet the SLO is full"
    elif policy.slo_aware:
        reason = "predicted over SLO"
    else:
        reason = f"policy {policy.name!r} does not look at SLOs"
    return Violation(
        module=problem.module_names[problem.demand_module[d]],
        site=problem.sites[problem.demand_site[d]],
        node=problem.node_names[node] if node >= 0 else None,
        slo_p95_ms=slo,
        predicted_p95_ms=float(p95[d]),
        best_p95_ms=best,
        reason=reason,
    )


def advance(plan: Plan, now_s: float, previous: CurrentPlacement | None = None) -> CurrentPlacement:
    """The placement in force once ``plan`` is applied at ``now_s``.

    Routes that stay on their node keep their start time; the others start now.

    Example:
        >>> current = advance(p, now_s=60.0, previous=current)  # doctest: +SKIP
    """
    previous = previous if previous is not None else CurrentPlacement()
    cols = plan.routes.columns()
    routes = []
    for module, site, node, epoch in zip(
        cols.module, cols.site, cols.node, cols.epoch, strict=True
    ):
        before = previous.get(module, site)
        since = before.since_s if before is not None and before.node == node else now_s
        routes.append(CurrentRoute(module, site, node, since, epoch))
    return CurrentPlacement(tuple(routes))
