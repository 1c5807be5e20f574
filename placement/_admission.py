"""Repair and fill: admitting demands on each node in priority order while they fit.

Steps 2 and 3 of :func:`placement._greedy.assign` (see its module for the whole
algorithm). :func:`repair` starts every demand on its current choice and, per
node, admits them by priority (pinned, residents under hysteresis, then what
moving would cost per unit of the node's scarce resources) while cumulative
load and replica memory fit; a misfit moves to its next candidate.
:func:`fill` then lets demands that moved take a better candidate that has
room as things stand.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._problem import Problem
from ._ranked import EPS_RHO, RankedState, pair_counts, replica_memory

__all__ = ["fill", "repair"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_SKIP_ROUNDS = 8
"""Misfits per node that admission skips before turning the rest of the queue away."""


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


def _priority(state: RankedState, d: IntArray, ptr: IntArray, by_regret: bool) -> FloatArray:
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
    state: RankedState,
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


def repair(state: RankedState, ptr: IntArray, by_regret: bool) -> None:
    """Step 2: admit every demand on its current choice per node; misfits move down a rank."""
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


def fill(state: RankedState, ptr: IntArray, by_regret: bool) -> None:
    """Step 3: demands that moved take a better-ranked candidate with room, while any does."""
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
