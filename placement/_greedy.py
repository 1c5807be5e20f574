"""The assignment engine shared by all policies: ranked greedy with capacity repair.

A policy ranks each demand's candidates and says which utilisation each may
reach (its *cap*: the SLO turned into a utilisation bound, or just the
overload threshold). The engine then assigns, all demands at once:

1. **Rank.** Each demand's candidates are sorted: a pinned incumbent first
   (hysteresis), then those that fit alone (background load + own load within
   the cap, replica within memory) by the policy's key, then those that fit
   only the fallback cap, then the rest.
2. **Repair.** Every demand takes its best remaining candidate (under
   hysteresis it starts where it is now). On each node the demands are
   ordered by priority: pinned first, then (under hysteresis) residents
   before newcomers, then by what moving to their next candidate *with room*
   would cost per unit of the node's scarce resources (the fractional-knapsack
   rule). They are admitted in that order while they fit (cumulative load
   within every admitted demand's cap, replicas within memory); a misfit is
   skipped and moves to its next candidate. Pointers only move down the
   list, so this ends.
3. **Fill.** A demand that moved may now fit on a better candidate that
   others left or never filled. Each round every such demand picks its best
   candidate that fits given the current loads; per node the newcomers are
   admitted the same way. Every move is to a strictly better rank, so this
   ends too.
4. **Exchange** (bounded by ``PlannerSettings.exchange_budget``): a demand
   may take a better node by sending one resident elsewhere when the pair's
   total cost drops; fill runs again after it.
5. **Fallback.** A demand left with no candidate that fits goes where its
   predicted p95 is lowest, unless that is not clearly better than where it
   runs now (:data:`FALLBACK_MIN_GAIN` lower p95 and :data:`FALLBACK_MIN_RHO_GAP`
   lower utilisation): then it stays, since moving between nodes that are all
   overloaded (fog nodes sharing one busy host, whose readings differ only by
   noise) only adds migrations; the plan reports it as a violation.

Guarantee (tested against the brute-force solver): the result respects every
cap and memory limit it admitted under; no single demand can move to a
candidate its policy ranks higher without breaking a cap or memory limit (it
is 1-move optimal); and when the demands' first choices do not contend for
capacity, the result is exactly their first choices, i.e. optimal for the
policy's key. The plan's ``cost_lower_bound_per_h`` bounds the remaining gap
(``Plan.optimal`` certifies a zero gap). It is not optimal in general (this
is a generalised assignment problem with shared replica memory, NP-hard);
on random small instances it matches brute force on ~99 % of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._admission import fill, repair
from ._exchange import exchange
from ._problem import Problem
from ._ranked import EPS_RHO, RankedState

__all__ = ["Assignment", "Ranking", "assign"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

KIND_PINNED, KIND_FITS, KIND_FALLBACK, KIND_NO_FIT, KIND_EXCLUDED = range(5)

#: A demand that fits nowhere leaves its node only for a predicted p95 this much lower...
FALLBACK_MIN_GAIN = 0.25
#: ...on a node at least this much less utilised.
FALLBACK_MIN_RHO_GAP = 0.1


@dataclass(frozen=True, slots=True, eq=False)
class Ranking:
    """A policy's preferences for one problem, shape (D, K) unless noted.

    Attributes:
        allowed: candidates the policy may use at all.
        cap: utilisation the node may reach with the demand there.
        cap_fallback: cap accepted when no candidate fits under ``cap``.
        primary: ranking key, lower is better.
        secondary: tie-break key, lower is better.
        pinned: (D,) column to keep while it fits ``cap_fallback``, or -1.
        start: (D,) column each demand starts from (its incumbent), or -1 for
            its first choice. Starting where things are means an unchanged
            input moves nothing: only overloads evict, and only moves that
            pay (under the policy's key) are made.
        by_regret: admission priority on a full node: what the demand would
            lose by moving, per unit of load (True), or demand order (False).
    """

    allowed: BoolArray
    cap: FloatArray
    cap_fallback: FloatArray
    primary: FloatArray
    secondary: FloatArray
    pinned: IntArray
    by_regret: bool
    start: IntArray | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Assignment:
    """What the engine decided.

    Attributes:
        cols: (D,) chosen candidate column, -1 when no candidate exists.
        order: (D, K) columns in the policy's order of preference.
        kind: (D, K) per column: 0 pinned, 1 fits, 2 fits the fallback cap only,
            3 does not fit even alone, 4 excluded by the policy.
        fallback: (D,) placed without fitting (the plan reports these).
        ranking: the policy's ranking it was made from.
    """

    cols: IntArray
    order: IntArray
    kind: IntArray
    fallback: BoolArray
    ranking: Ranking


def assign(problem: Problem, ranking: Ranking) -> Assignment:
    """Assign every demand of ``problem`` to one candidate following ``ranking``."""
    n_demands, k_cols = problem.cand_node.shape
    node = problem.cand_node
    safe = np.where(node >= 0, node, 0)
    dmod = problem.demand_module
    background = problem.node_background[safe]
    load = problem.cand_load
    memory_ok = problem.module_memory[dmod][:, None] <= problem.node_memory[safe]
    base_ok = ranking.allowed & memory_ok
    fits = base_ok & (background + load <= ranking.cap - EPS_RHO)
    fits_fallback = base_ok & (background + load <= ranking.cap_fallback - EPS_RHO)
    pinned = (np.arange(k_cols)[None, :] == ranking.pinned[:, None]) & fits_fallback
    kind = np.full((n_demands, k_cols), KIND_NO_FIT, dtype=np.int64)
    kind[fits_fallback] = KIND_FALLBACK
    kind[fits] = KIND_FITS
    kind[pinned] = KIND_PINNED
    kind[~ranking.allowed] = KIND_EXCLUDED
    eff_cap = np.where(kind == KIND_FITS, ranking.cap, ranking.cap_fallback)
    primary = np.where(ranking.allowed, ranking.primary, np.inf)
    secondary = np.where(ranking.allowed, ranking.secondary, np.inf)
    order = np.lexsort((secondary, primary, kind), axis=1).astype(np.int64)
    n_fit = (kind <= KIND_FALLBACK).sum(axis=1)
    if n_demands == 0:
        none = np.zeros(0, dtype=np.int64)
        return Assignment(none, order, kind, np.zeros(0, dtype=bool), ranking)
    # Everything below works on "rank positions": ptr[d] indexes order[d].
    state = RankedState(problem, order, node, load, eff_cap, primary, kind == KIND_PINNED, n_fit)
    state.sticky = ranking.start is not None
    ptr = np.zeros(n_demands, dtype=np.int64)
    if ranking.start is not None:
        held = np.flatnonzero(ranking.start >= 0)
        held_col = ranking.start[held]
        usable = kind[held, held_col] <= KIND_FALLBACK
        held, held_col = held[usable], held_col[usable]
        rank_of = np.empty_like(order)
        np.put_along_axis(rank_of, order, np.arange(k_cols)[None, :], axis=1)
        ptr[held] = rank_of[held, held_col]
    repair(state, ptr, ranking.by_regret)
    fill(state, ptr, ranking.by_regret)
    if ranking.by_regret and exchange(state, ptr, problem.settings.exchange_budget):
        fill(state, ptr, ranking.by_regret)

    rows = np.arange(n_demands)
    placed = ptr < n_fit
    cols = np.full(n_demands, -1, dtype=np.int64)
    cols[placed] = order[rows[placed], ptr[placed]]
    fallback = ~placed & (kind < KIND_EXCLUDED).any(axis=1)
    if fallback.any():
        cols[fallback] = _fallback(problem, cols, fallback, kind)
    return Assignment(cols=cols, order=order, kind=kind, fallback=fallback, ranking=ranking)


def _fallback(problem: Problem, cols: IntArray, fallback: BoolArray, kind: IntArray) -> IntArray:
    """Lowest predicted p95 given the loads of the placed demands."""
    n_nodes = len(problem.node_names)
    placed = np.flatnonzero(cols >= 0)
    p_node = problem.cand_node[placed, cols[placed]]
    load = problem.node_background + np.bincount(
        p_node, weights=problem.cand_load[placed, cols[placed]], minlength=n_nodes
    )
    d = np.flatnonzero(fallback)
    node = problem.cand_node[d]
    safe = np.where(node >= 0, node, 0)
    rho = load[safe] + problem.cand_load[d]
    slow = problem.tables.slowdown(problem.node_row[safe].ravel(), rho.ravel()).reshape(rho.shape)
    with np.errstate(invalid="ignore"):
        p95 = problem.cand_rtt[d] + problem.cand_transfer[d] + problem.cand_service[d] * slow
    usable = kind[d] < KIND_EXCLUDED
    p95 = np.where(usable & ~np.isnan(p95), p95, np.inf)
    # Unstable everywhere: at least pick the least loaded usable candidate.
    tie = np.where(usable, rho, np.inf)
    best = np.where(np.isfinite(p95).any(axis=1), p95.argmin(axis=1), tie.argmin(axis=1))
    # Hysteresis: where it runs now, it stays unless the best is clearly better.
    rows = np.arange(len(d))
    inc = problem.incumbent_col[d]
    here = np.where(inc >= 0, inc, 0)
    stays_usable = (inc >= 0) & usable[rows, here]
    best_p95, here_p95 = p95[rows, best], p95[rows, here]
    with np.errstate(invalid="ignore"):
        not_better = (
            ~np.isfinite(best_p95)
            | (best_p95 >= here_p95 * (1.0 - FALLBACK_MIN_GAIN))
            | (rho[rows, best] > rho[rows, here] - FALLBACK_MIN_RHO_GAP)
        )
    out: IntArray = np.where(stays_usable & not_better, here, best).astype(np.int64)
    return out
