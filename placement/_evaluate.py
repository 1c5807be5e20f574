"""The exact check of an assignment: loads, predicted p95, cost, feasibility.

Independent of how an assignment was found: the planner reports from it and
the brute-force solver ranks with it, so both are judged by the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._problem import Problem

__all__ = ["Evaluation", "best_alone_p95", "evaluate", "lower_bound"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SLO_TOLERANCE = 1e-9
"""Relative slack on SLO and capacity checks, for float rounding only."""


@dataclass(frozen=True, slots=True, eq=False)
class Evaluation:
    """An assignment judged by the model.

    Attributes:
        node_of: (D,) node of each demand, -1 when unplaced.
        utilisation: (N,) background plus assigned load.
        memory_used: (N,) MB of the replicas placed there.
        p95: (D,) predicted p95 ms (inf when unplaced or unstable).
        slo_ok: (D,) placed and predicted within its SLO.
        overloaded: (N,) used by the plan and over its threshold or memory.
        cost_per_h: total cost.
        headroom: the smallest (SLO - p95) / SLO over placed demands.
        feasible: every demand within SLO and no node overloaded.
        replicas: sorted ``node * n_modules + module`` of every replica.
    """

    node_of: IntArray
    utilisation: FloatArray
    memory_used: FloatArray
    p95: FloatArray
    slo_ok: BoolArray
    overloaded: BoolArray
    cost_per_h: float
    headroom: float
    feasible: bool
    replicas: IntArray


def evaluate(problem: Problem, cols: IntArray) -> Evaluation:
    """Judge the assignment of demand ``d`` to candidate column ``cols[d]`` (-1: none)."""
    n_nodes = len(problem.node_names)
    n_modules = len(problem.module_names)
    rows = np.arange(problem.n_demands)
    placed = cols >= 0
    safe_cols = np.where(placed, cols, 0)
    node_of = np.where(placed, problem.cand_node[rows, safe_cols], -1)
    load = np.where(placed, problem.cand_load[rows, safe_cols], 0.0)
    used = node_of[placed]
    utilisation = problem.node_background + np.bincount(used, load[placed], minlength=n_nodes)
    present = np.zeros(n_nodes * n_modules, dtype=bool)
    present[used * n_modules + problem.demand_module[placed]] = True
    pairs = np.flatnonzero(present)
    memory_used = np.bincount(
        pairs // n_modules, problem.module_memory[pairs % n_modules], minlength=n_nodes
    ).astype(np.float64)
    safe_node = np.where(placed, node_of, 0)
    slow = problem.tables.slowdown(problem.node_row[safe_node], utilisation[safe_node])
    with np.errstate(invalid="ignore"):
        p95 = (
            problem.cand_rtt[rows, safe_cols]
            + problem.cand_transfer[rows, safe_cols]
            + problem.cand_service[rows, safe_cols] * slow
        )
    p95 = np.where(placed & ~np.isnan(p95), p95, np.inf)
    slo = problem.demand_slo
    slo_ok = placed & (p95 <= slo * (1.0 + SLO_TOLERANCE))
    in_use = np.bincount(used, minlength=n_nodes) > 0
    overloaded = in_use & (
        (utilisation > problem.node_max_util + SLO_TOLERANCE)
        | (memory_used > problem.node_memory * (1.0 + SLO_TOLERANCE))
    )
    cost = float(np.sum(np.where(placed, problem.cand_cost[rows, safe_cols], 0.0)))
    headroom = float(np.min((slo - p95)[placed] / slo[placed])) if placed.any() else 0.0
    return Evaluation(
        node_of=node_of.astype(np.int64),
        utilisation=utilisation,
        memory_used=memory_used,
        p95=p95,
        slo_ok=slo_ok,
        overloaded=overloaded,
        cost_per_h=cost,
        headroom=headroom,
        feasible=bool(slo_ok.all() and not overloaded.any()),
        replicas=pairs.astype(np.int64),
    )


def lower_bound(problem: Problem) -> float:
    """A lower bound on the cost of any feasible plan.

    Each demand on its own, with only the background load on the node, must
    still meet its SLO, so its cheapest such candidate bounds its cost.
    """
    safe = np.where(problem.cand_node >= 0, problem.cand_node, 0)
    rho = problem.node_background[safe] + problem.cand_load
    mem_ok = problem.module_memory[problem.demand_module][:, None] <= problem.node_memory[safe]
    alone_ok = problem.cand_valid & mem_ok & (rho <= problem.cand_cap)
    best_cost = np.where(alone_ok, problem.cand_cost, np.inf).min(axis=1, initial=np.inf)
    return float(np.sum(best_cost[np.isfinite(best_cost)]))


def best_alone_p95(problem: Problem, demands: IntArray) -> FloatArray:
    """The best p95 each of ``demands`` could get anywhere, alone on a node.

    The figure reported for a route that cannot meet its SLO.
    """
    node = problem.cand_node[demands]
    safe = np.where(node >= 0, node, 0)
    rho = problem.node_background[safe] + problem.cand_load[demands]
    slow = problem.tables.slowdown(problem.node_row[safe].ravel(), rho.ravel()).reshape(rho.shape)
    with np.errstate(invalid="ignore"):
        p95 = (
            problem.cand_rtt[demands]
            + problem.cand_transfer[demands]
            + problem.cand_service[demands] * slow
        )
    p95 = np.where(problem.cand_valid[demands] & ~np.isnan(p95), p95, np.inf)
    best: FloatArray = p95.min(axis=1, initial=np.inf)
    return best
