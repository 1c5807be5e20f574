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
   predicted p95 is lowest; the plan reports it as a violation.

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

from ._problem import Problem

__all__ = ["Assignment", "Ranking", "assign"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

EPS_RHO = 1e-9
"""Utilisation slack kept below every cap: cumulative sums over 10^5 loads drift ~1e-12."""

KIND_PINNED, KIND_FITS, KIND_FALLBACK, KIND_NO_FIT, KIND_EXCLUDED = range(5)

_EXCHANGE_WIDTH = 16
"""Residents of a node fully checked per exchange attempt."""

_EXCHANGE_MIN_COST = 500
"""Budget charged per exchange attempt at least (its fixed overhead, in element-steps)."""

_SKIP_ROUNDS = 8
"""Misfits per node that admission skips before turning the rest of the queue away."""


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
    state = _State(problem, order, node, load, eff_cap, primary, kind == KIND_PINNED, n_fit)
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
    _repair(state, ptr, ranking.by_regret)
    _fill(state, ptr, ranking.by_regret)
    if ranking.by_regret and _exchange(state, ptr, problem.settings.exchange_budget):
        _fill(state, ptr, ranking.by_regret)

    rows = np.arange(n_demands)
    placed = ptr < n_fit
    cols = np.full(n_demands, -1, dtype=np.int64)
    cols[placed] = order[rows[placed], ptr[placed]]
    fallback = ~placed & (kind < KIND_EXCLUDED).any(axis=1)
    if fallback.any():
        cols[fallback] = _fallback(problem, cols, fallback, kind)
    return Assignment(cols=cols, order=order, kind=kind, fallback=fallback, ranking=ranking)


class _State:
    """Candidate arrays read by rank position: ``x(d, pos)`` is ``x[d, order[d, pos]]``."""

    __slots__ = ("_cap", "_key", "_load", "_node", "_pin", "n_fit", "order", "problem", "sticky")

    def __init__(
        self,
        problem: Problem,
        order: IntArray,
        node: IntArray,
        load: FloatArray,
        cap: FloatArray,
        key: FloatArray,
        pin: BoolArray,
        n_fit: IntArray,
    ) -> None:
        self.problem = problem
        self.order = order
        self._node, self._load, self._cap, self._key, self._pin = node, load, cap, key, pin
        self.n_fit = n_fit
        self.sticky = False  # residents keep their place before newcomers (hysteresis)

    def node(self, d: IntArray, pos: IntArray) -> IntArray:
        out: IntArray = self._node[d, self.order[d, pos]]
        return out

    def load(self, d: IntArray, pos: IntArray) -> FloatArray:
        out: FloatArray = self._load[d, self.order[d, pos]]
        return out

    def cap(self, d: IntArray, pos: IntArray) -> FloatArray:
        out: FloatArray = self._cap[d, self.order[d, pos]]
        return out

    def key(self, d: IntArray, pos: IntArray) -> FloatArray:
        out: FloatArray = self._key[d, self.order[d, pos]]
        return out

    def pin(self, d: IntArray, pos: IntArray) -> BoolArray:
        out: BoolArray = self._pin[d, self.order[d, pos]]
        return out


def _rank_key(pinned: BoolArray, gain: FloatArray, staying: BoolArray | None = None) -> FloatArray:
    """Sub-key in [0, 1) for ordering demands on a node; lower keeps its place first.

    Pinned incumbents first; then, under hysteresis, routes already on the
    node before newcomers (a full node turns newcomers away before it evicts
    residents: no displacement chains); within each group by gain descending
    (what moving would cost, per unit of load), infinite first.
    """
    squash = 0.5 - np.arctan(np.nan_to_num(gain, nan=0.0, posinf=1e300)) / np.pi  # [0, 1)
    squash = np.where(np.isinf(gain) & (gain > 0), 0.0, 0.01 + 0.98 * squash)
    group = 0.5 if staying is None else np.where(staying, 0.0, 0.5)
    out: FloatArray = np.where(pinned, 0.0, 0.01 + group + 0.48 * squash)
    return out


def _priority(state: _State, d: IntArray, ptr: IntArray, by_regret: bool) -> FloatArray:
    """Rank sub-key of each placed demand on its current node.

    With ``by_regret``: what moving to its next choice *that has room* would
    cost (an equally cheap node that is full is no way out), per unit of the
    node's contended resources it uses (the fractional-knapsack rule, with
    utilisation and memory each counted only where the node is short of it).
    """
    pos = ptr[d]
    pinned = state.pin(d, pos)
    if not by_regret:
        return _rank_key(pinned, np.zeros(len(d)))
    problem = state.problem
    n_nodes = len(problem.node_names)
    n_modules = len(problem.module_names)
    node = state.node(d, pos)
    load = state.load(d, pos)
    module = problem.demand_module[d]
    # How short each node is of utilisation and of memory as things stand.
    cap = np.full(n_nodes, np.inf)
    np.minimum.at(cap, node, state.cap(d, pos))
    room = np.maximum(cap - problem.node_background, 1e-12)
    short_util = problem.node_background + np.bincount(node, load, minlength=n_nodes) > cap
    # (node, module) pairs as dense keys: n_nodes x n_modules is small next to
    # sorting 10^5 keys (np.unique), and scatter/gather on it is O(routes).
    pair = node * n_modules + module
    sharing = pair_counts(pair, n_nodes * n_modules)
    memory = replica_memory(sharing > 0, problem.module_memory)
    short_mem = memory > problem.node_memory
    use = np.where(short_util[node], load / room[node], 0.0) + np.where(
        short_mem[node],
        problem.module_memory[module] / sharing[pair] / problem.node_memory[node],
        0.0,
    )
    # Room left on each node as things stand (over-full nodes have none).
    slack = cap - problem.node_background - np.bincount(node, load, minlength=n_nodes)
    regret = _regret_to_room(state, d, pos, slack, problem.node_memory - memory, sharing > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_use = regret / np.maximum(use, 1e-12)
    staying = state.order[d, pos] == problem.incumbent_col[d] if state.sticky else None
    return _rank_key(pinned, np.nan_to_num(per_use, nan=0.0, posinf=np.inf), staying)


def _regret_to_room(
    state: _State,
    d: IntArray,
    pos: IntArray,
    slack: FloatArray,
    memory_left: FloatArray,
    present: BoolArray,
) -> FloatArray:
    """Key increase from ``pos`` to the next ranked candidate with room; inf if none."""
    problem = state.problem
    n_modules = len(problem.module_names)
    regret = np.full(len(d), np.inf)
    here = state.key(d, pos)
    todo = np.arange(len(d))
    q = pos + 1
    # Most demands settle at the next position: scan position by position on
    # the shrinking set of those still looking.
    while len(todo):
        todo = todo[q[todo] < state.n_fit[d[todo]]]
        if len(todo) == 0:
            break
        dd, qq = d[todo], q[todo]
        node = state.node(dd, qq)
        module = problem.demand_module[dd]
        fits = (slack[node] >= state.load(dd, qq)) & (
            present[node * n_modules + module]
            | (memory_left[node] >= problem.module_memory[module] - 1e-9)
        )
        with np.errstate(invalid="ignore"):
            regret[todo[fits]] = state.key(dd[fits], qq[fits]) - here[todo[fits]]
        todo = todo[~fits]
        q[todo] += 1
    return regret


def _order_by_node(nodes: IntArray, sub: FloatArray) -> IntArray:
    """Stable order by node, then rank sub-key, then demand order."""
    out: IntArray = np.argsort(nodes + sub, kind="stable").astype(np.int64)
    return out


def _admit(
    problem: Problem,
    nodes: IntArray,
    prio: FloatArray,
    loads: FloatArray,
    caps: FloatArray,
    modules: IntArray,
    base_load: FloatArray,
    base_cap: FloatArray,
    memory_left: FloatArray,
    present: BoolArray | None,
) -> BoolArray:
    """Per node, admit demands in priority order while they fit; returns a mask.

    First fit: a demand that does not fit is skipped and the next ones are
    still tried, so one tight demand never evicts everyone behind it. It runs
    as rounds over all nodes at once (admit the fitting prefix, skip the first
    misfit, go on); past ``_SKIP_ROUNDS`` misfits on a node the rest of its
    queue is turned away in one go, which bounds the work on a node that
    everyone wants.
    """
    n = len(nodes)
    admitted = np.zeros(n, dtype=bool)
    if n == 0:
        return admitted
    n_modules = len(problem.module_names)
    order = _order_by_node(nodes, prio)
    load = base_load.copy()
    cap = base_cap.copy()
    memory = memory_left.copy()
    held = (
        present.copy()
        if present is not None
        else np.zeros(len(problem.node_names) * n_modules, dtype=bool)
    )
    held_memory = replica_memory(held, problem.module_memory)
    for _round in range(_SKIP_ROUNDS + 1):
        if len(order) == 0:
            break
        ok = _fitting_prefix(problem, order, nodes, loads, caps, modules, load, cap, memory, held)
        taken = order[ok]
        admitted[taken] = True
        # The node state with the admitted prefix in it.
        np.add.at(load, nodes[taken], loads[taken])
        np.minimum.at(cap, nodes[taken], caps[taken])
        held[nodes[taken] * n_modules + modules[taken]] = True
        memory = memory_left - (replica_memory(held, problem.module_memory) - held_memory)
        # Skip each node's first misfit; its followers queue for the next round.
        rest = order[~ok]
        if len(rest) == 0 or _round == _SKIP_ROUNDS:
            break
        head = np.ones(len(rest), dtype=bool)
        head[1:] = nodes[rest[1:]] != nodes[rest[:-1]]
        order = rest[~head]
    return admitted


def _fitting_prefix(
    problem: Problem,
    order: IntArray,
    nodes: IntArray,
    loads: FloatArray,
    caps: FloatArray,
    modules: IntArray,
    load: FloatArray,
    cap: FloatArray,
    memory: FloatArray,
    held: BoolArray,
) -> BoolArray:
    """For ``order`` (grouped by node, best first): the longest prefix per node that fits."""
    n = len(order)
    n_s, a_s, c_s, m_s = nodes[order], loads[order], caps[order], modules[order]
    start = np.ones(n, dtype=bool)
    start[1:] = n_s[1:] != n_s[:-1]
    group = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    counts = np.diff(np.append(starts, n))
    cum = np.cumsum(a_s)
    cum_group = cum - np.repeat(cum[starts] - a_s[starts], counts)
    # Segmented running minimum: shifting each group below all earlier ones.
    shift = group * 4.0
    run_cap = np.minimum.accumulate(c_s - shift) + shift
    run_cap = np.minimum(run_cap, cap[n_s])
    ok = load[n_s] + cum_group <= run_cap - EPS_RHO
    # Memory: a module's replica is counted at its first demand on the node.
    n_modules = len(problem.module_names)
    pair = n_s * n_modules + m_s
    first = np.full(len(problem.node_names) * n_modules, n, dtype=np.int64)
    np.minimum.at(first, pair, np.arange(n))
    new_replica = (first[pair] == np.arange(n)) & ~held[pair]
    mem = np.where(new_replica, problem.module_memory[m_s], 0.0)
    mem_cum = np.cumsum(mem)
    mem_group = mem_cum - np.repeat(mem_cum[starts] - mem[starts], counts)
    ok &= mem_group <= memory[n_s] + 1e-9
    bad = (~ok).astype(np.int64)
    bad_cum = np.cumsum(bad)
    bad_group = bad_cum - np.repeat(bad_cum[starts] - bad[starts], counts)
    out: BoolArray = bad_group == 0
    return out


def _repair(state: _State, ptr: IntArray, by_regret: bool) -> None:
    problem = state.problem
    n_nodes = len(problem.node_names)
    no_cap = np.full(n_nodes, np.inf)
    while True:
        d = np.flatnonzero(ptr < state.n_fit)
        if len(d) == 0:
            return
        pos = ptr[d]
        admitted = _admit(
            problem,
            state.node(d, pos),
            _priority(state, d, ptr, by_regret),
            state.load(d, pos),
            state.cap(d, pos),
            problem.demand_module[d],
            problem.node_background,
            no_cap,
            problem.node_memory,
            None,
        )
        if admitted.all():
            return
        ptr[d[~admitted]] += 1


def _fill(state: _State, ptr: IntArray, by_regret: bool) -> None:
    problem = state.problem
    n_nodes = len(problem.node_names)
    n_modules = len(problem.module_names)
    k_cols = state.order.shape[1]
    while True:
        movers = np.flatnonzero(ptr > 0)
        if len(movers) == 0:
            return
        # Current loads, running caps and replicas of every node.
        placed = np.flatnonzero(ptr < state.n_fit)
        p_node = state.node(placed, ptr[placed])
        load = np.bincount(p_node, weights=state.load(placed, ptr[placed]), minlength=n_nodes)
        cap = np.full(n_nodes, np.inf)
        np.minimum.at(cap, p_node, state.cap(placed, ptr[placed]))
        present = (
            pair_counts(p_node * n_modules + problem.demand_module[placed], n_nodes * n_modules) > 0
        )
        mem_used = replica_memory(present, problem.module_memory)
        # Each mover's best better-ranked candidate that fits as things stand:
        # the (mover, position) pairs ahead of where it is, flattened.
        ahead = np.minimum(ptr[movers], state.n_fit[movers])
        who = np.repeat(movers, ahead)
        starts = np.cumsum(ahead) - ahead
        pos = np.arange(len(who)) - np.repeat(starts, ahead)
        node = state.node(who, pos)
        module = problem.demand_module[who]
        has_replica = present[node * n_modules + module]
        mem_fits = has_replica | (
            mem_used[node] + problem.module_memory[module] <= problem.node_memory[node] + 1e-9
        )
        room = problem.node_background[node] + load[node] + state.load(who, pos) <= (
            np.minimum(cap[node], state.cap(who, pos)) - EPS_RHO
        )
        ok = np.flatnonzero(room & mem_fits)
        if len(ok) == 0:
            return
        # Pairs are in (mover, position) order: the first ok pair of a mover is its best.
        first = np.ones(len(ok), dtype=bool)
        first[1:] = who[ok[1:]] != who[ok[:-1]]
        d = who[ok[first]]
        target = pos[ok[first]]
        stays = ptr[d] < state.n_fit[d]
        cur_key = np.where(stays, state.key(d, np.minimum(ptr[d], k_cols - 1)), np.inf)
        with np.errstate(invalid="ignore"):
            gain = (cur_key - state.key(d, target)) / np.maximum(state.load(d, target), 1e-12)
        if not by_regret:
            gain = np.where(stays, 0.0, np.inf)
        prio = _rank_key(state.pin(d, target), np.nan_to_num(gain, nan=0.0))
        admitted = _admit(
            problem,
            state.node(d, target),
            prio,
            state.load(d, target),
            state.cap(d, target),
            problem.demand_module[d],
            problem.node_background + load,
            cap,
            problem.node_memory - mem_used,
            present,
        )
        if not admitted.any():  # pragma: no cover - the top newcomer of a node always fits
            return
        ptr[d[admitted]] = target[admitted]


def _exchange(state: _State, ptr: IntArray, budget: int) -> bool:
    """Move a route to a better-ranked node by sending one resident elsewhere.

    Tries, best potential gain first, each route not at its first choice
    against each better-ranked node: is there a resident whose removal lets
    the route in, and who fits elsewhere for less than the route gains? The
    first such exchange is made, and the search starts over. ``budget`` bounds
    the residents examined. Returns whether anything changed.
    """
    problem = state.problem
    n_nodes = len(problem.node_names)
    n_modules = len(problem.module_names)
    k_cols = state.order.shape[1]
    changed = False
    rounds = 0
    # Each round starts with a pass over all routes: when even one does not
    # fit the budget, the pass is not worth starting.
    while budget > problem.n_demands and rounds < 64:
        rounds += 1
        placed = np.flatnonzero(ptr < state.n_fit)
        pos_p = ptr[placed]
        node_p = state.node(placed, pos_p)
        load_p = state.load(placed, pos_p)
        cap_p = state.cap(placed, pos_p)
        module_p = problem.demand_module[placed]
        load: FloatArray = np.bincount(node_p, load_p, minlength=n_nodes).astype(np.float64)
        # Recomputing this state costs a pass over all routes: charge it.
        budget -= len(placed)
        by_node = np.lexsort((cap_p, node_p))  # per node, tightest cap first
        node_sorted = node_p[by_node]
        starts = np.searchsorted(node_sorted, np.arange(n_nodes + 1))
        cap1 = np.full(n_nodes, np.inf)
        cap2 = np.full(n_nodes, np.inf)
        has1 = starts[1:] > starts[:-1]
        has2 = starts[1:] - starts[:-1] >= 2
        cap1[has1] = cap_p[by_node[starts[:-1][has1]]]
        cap2[has2] = cap_p[by_node[starts[:-1][has2] + 1]]
        count = pair_counts(node_p * n_modules + module_p, n_nodes * n_modules)
        present = count > 0
        mem_used = replica_memory(present, problem.module_memory)

        movers = np.flatnonzero((ptr > 0) & (state.n_fit > 0))
        if len(movers) == 0:
            return changed
        stays = ptr[movers] < state.n_fit[movers]
        cur = np.where(stays, state.key(movers, np.minimum(ptr[movers], k_cols - 1)), np.inf)
        potential = cur - state.key(movers, np.zeros(len(movers), dtype=np.int64))
        found = None
        for d in movers[np.argsort(-potential, kind="stable")].tolist():
            d_arr = np.array([d])
            cur_key = float(
                state.key(d_arr, np.array([min(int(ptr[d]), k_cols - 1)]))[0]
                if ptr[d] < state.n_fit[d]
                else np.inf
            )
            for j in range(min(int(ptr[d]), int(state.n_fit[d]))):
                j_arr = np.array([j])
                target = int(state.node(d_arr, j_arr)[0])
                gain = cur_key - float(state.key(d_arr, j_arr)[0])
                if not gain > 0:
                    continue
                lo, hi = int(starts[target]), int(starts[target + 1])
                if lo == hi:
                    continue
                residents = placed[by_node[lo:hi]]
                # Each attempt costs numpy call overhead as well as its size.
                budget -= max(len(residents) + _EXCHANGE_WIDTH * k_cols, _EXCHANGE_MIN_COST)
                found = _try_exchange(
                    state,
                    ptr,
                    d,
                    j,
                    target,
                    gain,
                    residents,
                    load,
                    cap1,
                    cap2,
                    count,
                    mem_used,
                    present,
                )
                if found is not None or budget <= 0:
                    break
            if found is not None or budget <= 0:
                break
        if found is None:
            return changed
        e, k = found
        ptr[d] = j
        ptr[e] = k
        changed = True
    return changed


def _try_exchange(
    state: _State,
    ptr: IntArray,
    d: int,
    j: int,
    target: int,
    gain: float,
    residents: IntArray,
    load: FloatArray,
    cap1: FloatArray,
    cap2: FloatArray,
    count: IntArray,
    mem_used: FloatArray,
    present: BoolArray,
) -> tuple[int, int] | None:
    """Best resident of ``target`` to send elsewhere so that ``d`` fits there, if it pays."""
    problem = state.problem
    n_modules = len(problem.module_names)
    d_arr, j_arr = np.array([d]), np.array([j])
    a_d = float(state.load(d_arr, j_arr)[0])
    cap_d = float(state.cap(d_arr, j_arr)[0])
    m_d = int(problem.demand_module[d])
    e = residents[~state.pin(residents, ptr[residents])]
    if len(e) == 0:
        return None
    pos_e = ptr[e]
    a_e = state.load(e, pos_e)
    cap_e = state.cap(e, pos_e)
    m_e = problem.demand_module[e]
    # The target without e and with d: load, tightest remaining cap, memory.
    new_load = problem.node_background[target] + load[target] - a_e + a_d
    cap_without = np.where(cap_e <= cap1[target], cap2[target], cap1[target])
    fits_load = new_load <= np.minimum(cap_without, cap_d) - EPS_RHO
    last_of_module = count[target * n_modules + m_e] == 1
    mem = mem_used[target] - np.where(last_of_module, problem.module_memory[m_e], 0.0)
    d_replica_gone = (m_e == m_d) & last_of_module
    needs_d = ~present[target * n_modules + m_d] | d_replica_gone
    mem = mem + np.where(needs_d, problem.module_memory[m_d], 0.0)
    ok = fits_load & (mem <= problem.node_memory[target] + 1e-9)
    e, pos_e = e[ok], pos_e[ok]
    if len(e) == 0:
        return None
    if len(e) > _EXCHANGE_WIDTH:
        # Only the residents cheapest to displace (by their next choice) are
        # worth the full check: a popular node has thousands.
        nxt = np.minimum(pos_e + 1, np.maximum(state.n_fit[e] - 1, 0))
        with np.errstate(invalid="ignore"):
            regret = np.where(
                pos_e + 1 < state.n_fit[e], state.key(e, nxt) - state.key(e, pos_e), np.inf
            )
        keep = np.argsort(regret, kind="stable")[:_EXCHANGE_WIDTH]
        e, pos_e = e[keep], pos_e[keep]
    # Where each candidate resident could go instead, as things stand.
    k_cols = state.order.shape[1]
    positions = np.broadcast_to(np.arange(k_cols), (len(e), k_cols))
    rows = np.broadcast_to(e[:, None], positions.shape)
    valid = positions < state.n_fit[e][:, None]
    safe_pos = np.where(valid, positions, 0)
    alt_node = state.node(rows, safe_pos)
    alt_load = state.load(rows, safe_pos)
    alt_cap = state.cap(rows, safe_pos)
    alt_module = problem.demand_module[rows]
    cap_node = np.where(alt_node >= 0, cap1[np.maximum(alt_node, 0)], np.inf)
    alt_used = load[alt_node]
    if ptr[d] < state.n_fit[d]:
        # d leaves its node in the exchange: a resident may take its place (a swap).
        here = np.array([int(ptr[d])])
        d_node = int(state.node(d_arr, here)[0])
        d_cap = float(state.cap(d_arr, here)[0])
        leaving = alt_node == d_node
        alt_used = np.where(leaving, alt_used - float(state.load(d_arr, here)[0]), alt_used)
        freed_cap = cap2[d_node] if d_cap <= cap1[d_node] else cap1[d_node]
        cap_node = np.where(leaving, freed_cap, cap_node)
    room = problem.node_background[alt_node] + alt_used + alt_load <= (
        np.minimum(cap_node, alt_cap) - EPS_RHO
    )
    mem_ok = present[alt_node * n_modules + alt_module] | (
        mem_used[alt_node] + problem.module_memory[alt_module]
        <= problem.node_memory[alt_node] + 1e-9
    )
    usable = valid & (alt_node != target) & (alt_node >= 0) & room & mem_ok
    loss = np.where(usable, state.key(rows, safe_pos) - state.key(e, pos_e)[:, None], np.inf)
    best_k = loss.argmin(axis=1)
    best_loss = loss[np.arange(len(e)), best_k]
    with np.errstate(invalid="ignore"):
        net = np.where(np.isfinite(best_loss), gain - best_loss, -np.inf)
    i = int(np.argmax(net))
    # A strict improvement, beyond rounding, or nothing.
    if not net[i] > 1e-12 * max(1.0, abs(gain)):
        return None
    return int(e[i]), int(best_k[i])


def pair_counts(keys: IntArray, size: int) -> IntArray:
    """How many times each dense key in ``0..size-1`` occurs."""
    counts = np.zeros(size, dtype=np.int64)
    np.add.at(counts, keys, 1)
    return counts


def replica_memory(present: BoolArray, module_memory: FloatArray) -> FloatArray:
    """Memory per node of the replicas marked in a dense (node, module) mask."""
    if len(module_memory) == 0:
        return np.zeros(0)
    out: FloatArray = present.reshape(-1, len(module_memory)) @ module_memory
    return out


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
    out: IntArray = best.astype(np.int64)
    return out
