"""Exhaustive solver for small instances: the yardstick for the fast planner.

It tries every assignment of demands to candidates (vectorised, so a few
hundred thousand plans take well under a second), judges each with the same
model as the planner, and returns the cheapest feasible plan, then the one
with the most headroom. With no feasible plan it returns the one with the
fewest SLO violations, then the cheapest. Not for production sizes: the number
of plans is the product of the candidate counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._evaluate import SLO_TOLERANCE
from ._greedy import KIND_EXCLUDED, KIND_FITS, Assignment, Ranking
from ._model import (
    TIERS,
    CurrentPlacement,
    Metrics,
    Module,
    PlacementError,
    PlannerSettings,
    Source,
    Tier,
    Topology,
)
from ._plan import Plan
from ._planner import make_plan
from ._problem import Problem, build_problem

__all__ = ["plan_exhaustive"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Exhaustive:
    """Stands in for a policy in plans and explanations."""

    name: str = "exhaustive"
    rule: str = "cheapest feasible plan over all assignments, then most headroom"
    slo_aware: bool = True

    def rank(self, problem: Problem) -> Ranking:  # pragma: no cover - never ranks
        raise NotImplementedError


def plan_exhaustive(
    topology: Topology,
    modules: Sequence[Module],
    sources: Sequence[Source],
    *,
    metrics: Metrics | None = None,
    settings: PlannerSettings | None = None,
    tiers: frozenset[Tier] = frozenset(TIERS),
    max_plans: int = 500_000,
) -> Plan:
    """The optimal plan by exhaustive search (small instances only).

    Args:
        topology: nodes and links.
        modules: modules to place.
        sources: which sites feed which module at what rate.
        metrics: live utilisation and rates.
        settings: only ``candidates_per_tier`` matters here.
        tiers: restrict candidates to these tiers.
        max_plans: refuse instances with more assignments than this.

    Raises:
        PlacementError: the search space is larger than ``max_plans``.

    Example:
        >>> best = plan_exhaustive(topo, [counter], sources)  # doctest: +SKIP
        >>> best.cost_per_h <= plan(topo, [counter], sources).cost_per_h  # doctest: +SKIP
        True
    """
    problem = build_problem(
        topology,
        modules,
        sources,
        metrics=metrics if metrics is not None else Metrics(),
        current=CurrentPlacement(),
        now_s=0.0,
        settings=settings if settings is not None else PlannerSettings(),
    )
    tier_codes = np.array(sorted(TIERS.index(t) for t in tiers), dtype=np.int64)
    safe = np.where(problem.cand_node >= 0, problem.cand_node, 0)
    allowed = problem.cand_valid & np.isin(problem.node_tier[safe], tier_codes)
    options = [np.flatnonzero(row) for row in allowed]
    sizes = [max(len(o), 1) for o in options]
    total = math.prod(sizes)
    if total > max_plans:
        raise PlacementError(f"exhaustive search over {total} plans exceeds max_plans={max_plans}")
    # Every combination, as candidate columns (P, D); -1 where a demand has none.
    grids = np.indices(sizes).reshape(len(sizes), -1).T if sizes else np.zeros((1, 0), np.int64)
    cols = np.full((len(grids), problem.n_demands), -1, dtype=np.int64)
    for d, o in enumerate(options):
        if len(o):
            cols[:, d] = o[grids[:, d]]
    best = _pick(problem, cols.astype(np.int64))
    chosen = cols[best].astype(np.int64)
    k_cols = problem.cand_node.shape[1]
    kind = np.where(allowed, KIND_FITS, KIND_EXCLUDED).astype(np.int64)
    order = np.argsort(np.where(allowed, problem.cand_cost, np.inf), axis=1, kind="stable")
    cap = problem.cand_cap
    ranking = Ranking(
        allowed=allowed,
        cap=cap,
        cap_fallback=cap,
        primary=problem.cand_cost,
        secondary=np.zeros_like(cap),
        pinned=np.full(problem.n_demands, -1, dtype=np.int64),
        by_regret=True,
    )
    assignment = Assignment(
        cols=chosen,
        order=order.astype(np.int64).reshape(-1, k_cols),
        kind=kind,
        fallback=np.zeros(problem.n_demands, dtype=bool),
        ranking=ranking,
    )
    return make_plan(problem, assignment, _Exhaustive())


def _pick(problem: Problem, cols: IntArray) -> int:
    """Index of the best of many assignments (rows of ``cols``)."""
    n_plans, n_demands = cols.shape
    n_nodes = len(problem.node_names)
    n_modules = len(problem.module_names)
    if n_demands == 0:
        return 0
    rows = np.broadcast_to(np.arange(n_demands), cols.shape)
    placed = cols >= 0
    safe_cols = np.where(placed, cols, 0)
    node = np.where(placed, problem.cand_node[rows, safe_cols], 0)
    load = np.where(placed, problem.cand_load[rows, safe_cols], 0.0)
    plan_idx = np.broadcast_to(np.arange(n_plans)[:, None], cols.shape)
    flat = (plan_idx * n_nodes + node).ravel()
    util = problem.node_background[None, :] + np.bincount(
        flat, load.ravel(), minlength=n_plans * n_nodes
    ).reshape(n_plans, n_nodes)
    used = np.bincount(flat[placed.ravel()], minlength=n_plans * n_nodes).reshape(n_plans, n_nodes)
    module = np.broadcast_to(problem.demand_module, cols.shape)
    triple = np.unique(((plan_idx * n_nodes + node) * n_modules + module)[placed])
    mem = np.bincount(
        triple // n_modules, problem.module_memory[triple % n_modules], minlength=n_plans * n_nodes
    ).reshape(n_plans, n_nodes)
    rho = np.take_along_axis(util, node, axis=1)
    slow = problem.tables.slowdown(problem.node_row[node].ravel(), rho.ravel()).reshape(rho.shape)
    with np.errstate(invalid="ignore"):
        p95 = (
            problem.cand_rtt[rows, safe_cols]
            + problem.cand_transfer[rows, safe_cols]
            + problem.cand_service[rows, safe_cols] * slow
        )
    p95 = np.where(placed & ~np.isnan(p95), p95, np.inf)
    slo = problem.demand_slo[None, :]
    slo_ok = placed & (p95 <= slo * (1.0 + SLO_TOLERANCE))
    over = (used > 0) & (
        (util > problem.node_max_util[None, :] + SLO_TOLERANCE)
        | (mem > problem.node_memory[None, :] * (1.0 + SLO_TOLERANCE))
    )
    misses = (~slo_ok).sum(axis=1) + over.sum(axis=1)
    cost = np.where(placed, problem.cand_cost[rows, safe_cols], 0.0).sum(axis=1)
    headroom = np.where(placed, (slo - p95) / slo, np.inf).min(axis=1)
    fewest = misses == misses.min()
    cheapest = cost[fewest].min()
    near = fewest & (cost <= cheapest + 1e-12 * max(1.0, abs(cheapest)))
    score = np.where(near, headroom, -np.inf)
    return int(np.argmax(score))
