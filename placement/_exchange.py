"""Exchange: a demand takes a better-ranked node by sending one resident elsewhere.

Step 4 of :func:`placement._greedy.assign`, under a budget
(``PlannerSettings.exchange_budget``): the first exchange whose pair cost
drops is made and the search starts over.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._ranked import EPS_RHO, RankedState, pair_counts, replica_memory

__all__ = ["exchange"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EXCHANGE_WIDTH = 16
"""Residents of a node fully checked per exchange attempt."""

_EXCHANGE_MIN_COST = 500
"""Budget charged per exchange attempt at least (its fixed overhead, in element-steps)."""


def exchange(state: RankedState, ptr: IntArray, budget: int) -> bool:
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
    state: RankedState,
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
