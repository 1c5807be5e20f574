"""The planning problem as arrays: demands, their candidate nodes, and the numbers.

A *demand* is one (module, source site) pair with its request rate; a plan
gives every demand one node (the route of that site for that module). For each
demand the candidates are the nodes at its own site and the nearest fog and
cloud nodes it can reach, and for each candidate the problem holds what the
policies need: network time, service time, the load the demand adds to the
node, its cost, and the highest node utilisation at which it still meets its
SLO (its *cap*). Everything is a numpy array so that 10,000 sites by 20
modules plan in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from ._latency import MAX_RHO, SlowdownTables, tables_for
from ._model import (
    TIERS,
    CurrentPlacement,
    Metrics,
    Module,
    PlacementError,
    PlannerSettings,
    Source,
    Topology,
)

__all__ = ["Problem", "build_problem"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_TIER_CODE = {tier: code for code, tier in enumerate(TIERS)}  # edge 0, fog 1, cloud 2
_MODULE = attrgetter("module")
_SITE = attrgetter("site")
_RATE = attrgetter("rate_per_s")
_EDGE = _TIER_CODE["edge"]


@dataclass(frozen=True, slots=True, eq=False)
class Problem:
    """One planning round, vectorised. Indices are into the sorted name tuples.

    Node arrays have length N, module arrays M, demand arrays D, candidate
    arrays shape (D, K) with ``cand_node == -1`` as padding. Loads and caps are
    node utilisations (busy fraction of all its servers); costs are per hour.

    Attributes:
        node_names: nodes sorted by name.
        node_tier: 0 edge, 1 fog, 2 cloud.
        node_servers: parallel servers ``c``.
        node_row: row of the node's server count in ``tables``.
        node_price: cost per hour of the whole node.
        node_max_util: overload threshold.
        node_background: utilisation not caused by this plan (from metrics).
        node_memory: memory for replicas, MB.
        module_names: modules sorted by name.
        module_memory: memory per replica, MB.
        module_slo: p95 target, ms.
        sites: every site name, sorted.
        demand_module: module index of each demand.
        demand_site: site index of each demand.
        demand_rate: requests per second.
        demand_slo: p95 target of each demand, ms.
        incumbent_node: node serving it now, or -1.
        incumbent_col: that node's candidate column, or -1 if it is no candidate.
        since_s: when the current route started (nan when none).
        epoch: current route epoch (0 when none).
        cand_node: candidate node index, -1 for padding.
        cand_valid: the module can run there (tier, providers, profile, memory).
        cand_rtt: round-trip time to the node, ms.
        cand_transfer: payload transfer time, ms.
        cand_service: service p95 on an idle node, ms.
        cand_load: utilisation the demand adds to the node.
        cand_cost: cost per hour of serving the demand there.
        cand_cap: largest node utilisation at which the demand meets its SLO
            (already capped by the node's overload threshold; -1 if never).
        cand_cap_entry: the same for ``slo * (1 - slo_margin)`` (hysteresis).
        tables: slowdown tables used for predictions and caps.
        settings: planner settings of this round.
        now_s: the planning time (for dwell).
    """

    node_names: tuple[str, ...]
    node_tier: IntArray
    node_servers: IntArray
    node_row: IntArray
    node_price: FloatArray
    node_max_util: FloatArray
    node_background: FloatArray
    node_memory: FloatArray
    module_names: tuple[str, ...]
    module_memory: FloatArray
    module_slo: FloatArray
    sites: tuple[str, ...]
    demand_module: IntArray
    demand_site: IntArray
    demand_rate: FloatArray
    demand_slo: FloatArray
    incumbent_node: IntArray
    incumbent_col: IntArray
    since_s: FloatArray
    epoch: IntArray
    cand_node: IntArray
    cand_valid: BoolArray
    cand_rtt: FloatArray
    cand_transfer: FloatArray
    cand_service: FloatArray
    cand_load: FloatArray
    cand_cost: FloatArray
    cand_cap: FloatArray
    cand_cap_entry: FloatArray
    tables: SlowdownTables
    settings: PlannerSettings
    now_s: float

    @property
    def n_demands(self) -> int:
        """Number of (module, site) demands."""
        return len(self.demand_module)

    def demand_index(self, module: str, site: str) -> int | None:
        """Index of the demand for (module, site), or None."""
        try:
            m = self.module_names.index(module)
        except ValueError:
            return None
        s = _bisect(self.sites, site)
        if s is None:
            return None
        key = m * len(self.sites) + s
        keys = self.demand_module * len(self.sites) + self.demand_site
        i = int(np.searchsorted(keys, key))
        return i if i < len(keys) and int(keys[i]) == key else None

    def predict(self, cols: IntArray, rho: FloatArray) -> FloatArray:
        """Predicted p95 (ms) of each demand on candidate ``cols`` at node utilisation ``rho``."""
        d = np.arange(self.n_demands)
        node = self.cand_node[d, cols]
        slow = self.tables.slowdown(self.node_row[node], rho)
        out: FloatArray = (
            self.cand_rtt[d, cols] + self.cand_transfer[d, cols] + self.cand_service[d, cols] * slow
        )
        return out


def _bisect(names: tuple[str, ...], name: str) -> int | None:
    lo, hi = 0, len(names)
    while lo < hi:
        mid = (lo + hi) // 2
        if names[mid] < name:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(names) and names[lo] == name else None


def build_problem(
    topology: Topology,
    modules: Sequence[Module],
    sources: Sequence[Source],
    *,
    metrics: Metrics,
    current: CurrentPlacement,
    now_s: float,
    settings: PlannerSettings,
) -> Problem:
    """Turn the model objects into a :class:`Problem` (canonical: input order does not matter)."""
    nodes = sorted(topology.nodes, key=lambda n: n.name)
    node_names = tuple(n.name for n in nodes)
    node_index = {name: i for i, name in enumerate(node_names)}
    mods = sorted(modules, key=lambda m: m.name)
    module_names = tuple(m.name for m in mods)
    if len(set(module_names)) != len(module_names):
        raise PlacementError("modules: a module name appears twice")
    module_index = {name: i for i, name in enumerate(module_names)}

    site_set = {n.site for n in nodes}
    site_set.update(link.a for link in topology.links)
    site_set.update(link.b for link in topology.links)
    src_sites = list(map(_SITE, sources))
    src_modules = list(map(_MODULE, sources))
    site_set.update(src_sites)
    sites = tuple(sorted(site_set))
    site_index = {name: i for i, name in enumerate(sites)}
    n_sites = len(sites)

    node_tier = np.array([_TIER_CODE[n.tier] for n in nodes], dtype=np.int64)
    node_site = np.array([site_index[n.site] for n in nodes], dtype=np.int64)
    node_servers = np.array([n.servers for n in nodes], dtype=np.int64)
    node_price = np.array([n.cost_per_h for n in nodes], dtype=np.float64)
    node_max_util = np.array([n.max_utilisation for n in nodes], dtype=np.float64)
    node_memory = np.array([n.memory_mb for n in nodes], dtype=np.float64)
    tables = tables_for(tuple(np.unique(node_servers).tolist()) if len(nodes) else (1,))
    node_row = tables.row_of(node_servers)

    # Service time of each module on each *kind* of node: edge fleets are made of
    # a few kinds, so this is M x (few) profile look-ups, not M x 10,000.
    kinds: dict[tuple[str, frozenset[str], float], int] = {}
    node_kind = np.empty(len(nodes), dtype=np.int64)
    for i, n in enumerate(nodes):
        node_kind[i] = kinds.setdefault((n.tier, n.providers, n.memory_mb), len(kinds))
    service_by_kind = np.full((len(mods), max(len(kinds), 1)), np.inf)
    for (tier, providers, memory), k in kinds.items():
        for m, mod in enumerate(mods):
            if tier not in mod.tiers or not mod.required_providers <= providers:
                continue
            if mod.profile.memory_mb > memory:
                continue
            measured = mod.profile.service_time_ms(tier, providers)
            if measured is not None:
                service_by_kind[m, k] = measured
    module_memory = np.array([m.profile.memory_mb for m in mods], dtype=np.float64)
    module_slo = np.array([m.slo_p95_ms for m in mods], dtype=np.float64)
    module_bytes = np.array([m.request_bytes + m.response_bytes for m in mods], dtype=np.float64)

    # Demands: one per (module, site), rates of repeated sources added up.
    # (map/attrgetter: 200,000 sources is the one Python-level loop that counts.)
    unknown = set(src_modules) - module_index.keys()
    if unknown:
        known = ", ".join(module_names) or "none"
        raise PlacementError(f"sources name unknown modules {sorted(unknown)} (modules: {known})")
    src_module = np.array(list(map(module_index.__getitem__, src_modules)), np.int64)
    src_site = np.array(list(map(site_index.__getitem__, src_sites)), np.int64)
    src_rate = np.array(list(map(_RATE, sources)), dtype=np.float64)
    keys, inverse = np.unique(src_module * n_sites + src_site, return_inverse=True)
    rate = np.bincount(inverse, weights=src_rate, minlength=len(keys)).astype(np.float64)
    demand_module = keys // max(n_sites, 1)
    demand_site = keys % max(n_sites, 1)
    if metrics.source_rates:
        pairs = list(metrics.source_rates.items())
        found, j = _lookup(
            keys,
            [module_index.get(m, -1) for (m, _), _ in pairs],
            [site_index.get(s, -1) for (_, s), _ in pairs],
            n_sites,
        )
        observed_rate = np.array([max(float(r), 0.0) for _, r in pairs], dtype=np.float64)
        rate[j[found]] = observed_rate[found]
    demand_slo = module_slo[demand_module]
    if len(keys) and not nodes:
        raise PlacementError("topology has no nodes: there is nowhere to place the sources")

    site_node, site_rtt, site_bw = _site_candidates(
        topology, node_site, node_tier, site_index, n_sites, settings.candidates_per_tier
    )

    # Candidates of each demand: its site's row.
    cand_node = site_node[demand_site]
    has = cand_node >= 0
    safe_node = np.where(has, cand_node, 0)
    service = np.where(has, service_by_kind[demand_module[:, None], node_kind[safe_node]], np.inf)
    valid = has & np.isfinite(service)
    rtt = np.where(valid, site_rtt[demand_site], np.inf)
    bw = site_bw[demand_site]
    payload = module_bytes[demand_module][:, None]
    transfer = np.where(valid & (payload > 0), payload * 8.0 / (bw * 1000.0), 0.0)
    servers = node_servers[safe_node]
    service_or_0 = np.where(valid, service, 0.0)
    load = rate[:, None] * service_or_0 / 1000.0 / servers
    cost = np.where(valid, load * node_price[safe_node], np.inf)
    row = node_row[safe_node]
    max_util = node_max_util[safe_node]
    slo = demand_slo[:, None]
    slow_at_max = tables.slowdown(node_row, node_max_util)[safe_node]
    cap = _caps(tables, row, slo, rtt + transfer, service, max_util, valid, slow_at_max)

    # Current placement: incumbent node and column, start time, epoch.
    n_demands = len(keys)
    incumbent_node = np.full(n_demands, -1, dtype=np.int64)
    since = np.full(n_demands, np.nan)
    epoch = np.zeros(n_demands, dtype=np.int64)
    if current.routes:
        routes = current.routes
        found, j = _lookup(
            keys,
            [module_index.get(r.module, -1) for r in routes],
            [site_index.get(r.site, -1) for r in routes],
            n_sites,
        )
        inc = np.array([node_index.get(r.node, -1) for r in routes], dtype=np.int64)
        incumbent_node[j[found]] = inc[found]
        since[j[found]] = np.array([r.since_s for r in routes], dtype=np.float64)[found]
        epoch[j[found]] = np.array([r.epoch for r in routes], dtype=np.int64)[found]
    match = (cand_node == incumbent_node[:, None]) & (incumbent_node[:, None] >= 0) & valid
    incumbent_col = np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)
    # The tighter hysteresis caps matter only where there is something to keep.
    cap_entry = cap
    held = np.flatnonzero(incumbent_node >= 0)
    if len(held):
        cap_entry = cap.copy()
        cap_entry[held] = _caps(
            tables,
            row[held],
            slo[held] * (1.0 - settings.slo_margin),
            rtt[held] + transfer[held],
            service[held],
            max_util[held],
            valid[held],
            slow_at_max[held],
        )

    # Background load: what the monitors see minus what the current routes
    # are predicted to put there, so the plan does not count its own load twice.
    observed = np.zeros(len(nodes))
    for name, value in metrics.node_utilisation.items():
        i_node = node_index.get(name)
        if i_node is not None:
            observed[i_node] = min(max(float(value), 0.0), MAX_RHO)
    placed = incumbent_node >= 0
    inc_service = service_by_kind[demand_module[placed], node_kind[incumbent_node[placed]]]
    inc_load = np.where(
        np.isfinite(inc_service),
        rate[placed]
        * np.where(np.isfinite(inc_service), inc_service, 0.0)
        / 1000.0
        / node_servers[incumbent_node[placed]],
        0.0,
    )
    current_load = np.bincount(incumbent_node[placed], weights=inc_load, minlength=len(nodes))
    if not metrics.utilisation_includes_current:
        current_load[:] = 0.0
    background = np.clip(observed - current_load, 0.0, MAX_RHO)

    return Problem(
        node_names=node_names,
        node_tier=node_tier,
        node_servers=node_servers,
        node_row=node_row,
        node_price=node_price,
        node_max_util=node_max_util,
        node_background=background,
        node_memory=node_memory,
        module_names=module_names,
        module_memory=module_memory,
        module_slo=module_slo,
        sites=sites,
        demand_module=demand_module.astype(np.int64),
        demand_site=demand_site.astype(np.int64),
        demand_rate=rate,
        demand_slo=demand_slo,
        incumbent_node=incumbent_node,
        incumbent_col=incumbent_col,
        since_s=since,
        epoch=epoch,
        cand_node=cand_node,
        cand_valid=valid,
        cand_rtt=rtt,
        cand_transfer=transfer,
        cand_service=service,
        cand_load=load,
        cand_cost=cost,
        cand_cap=cap,
        cand_cap_entry=cap_entry,
        tables=tables,
        settings=settings,
        now_s=float(now_s),
    )


def _lookup(
    keys: IntArray, modules: list[int], sites: list[int], n_sites: int
) -> tuple[BoolArray, IntArray]:
    """Demand index of each (module, site) given as indices (-1: unknown name)."""
    m = np.array(modules, dtype=np.int64)
    s = np.array(sites, dtype=np.int64)
    wanted = m * n_sites + s
    j = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    found = (m >= 0) & (s >= 0) & (len(keys) > 0)
    if len(keys):
        found &= keys[j] == wanted
    return found, j.astype(np.int64)


def _caps(
    tables: SlowdownTables,
    row: IntArray,
    slo: FloatArray,
    network: FloatArray,
    service: FloatArray,
    max_util: FloatArray,
    valid: BoolArray,
    slow_at_max: FloatArray,
) -> FloatArray:
    """Highest node utilisation at which each candidate meets ``slo``; -1 if none.

    ``slow_at_max`` is the slowdown of each candidate's node at its overload threshold.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(valid, (slo - network) / np.where(valid, service, 1.0), -np.inf)
    # Where the SLO still holds at the overload threshold, that threshold is the
    # cap: only the rest needs the (costlier) inversion of the slowdown.
    out: FloatArray = np.where(valid, max_util, -1.0)
    binds = np.flatnonzero((ratio < slow_at_max).ravel())
    flat = out.reshape(-1)
    flat[binds] = np.minimum(
        tables.cap(row.ravel()[binds], ratio.ravel()[binds]), max_util.ravel()[binds]
    )
    return out


def _site_candidates(
    topology: Topology,
    node_site: IntArray,
    node_tier: IntArray,
    site_index: dict[str, int],
    n_sites: int,
    per_tier: int,
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Candidate nodes of every site with RTT and bottleneck bandwidth.

    Returns arrays of shape (sites, K): node index (-1 padding), rtt ms, bandwidth Mbit/s.
    """
    # Hubs: sites that host a fog or cloud node. Paths transit only through hubs.
    hub_sites = np.unique(node_site[node_tier != _EDGE])
    n_hubs = len(hub_sites)
    hub_of_site = np.full(n_sites, -1, dtype=np.int64)
    hub_of_site[hub_sites] = np.arange(n_hubs)

    links = topology.links
    link_a = np.array([site_index[link.a] for link in links], dtype=np.int64)
    link_b = np.array([site_index[link.b] for link in links], dtype=np.int64)
    link_rtt = np.array([link.rtt_ms for link in links], dtype=np.float64)
    link_bw = np.array([link.bandwidth_mbps for link in links], dtype=np.float64)
    dist, band = _hub_paths(n_hubs, hub_of_site, link_a, link_b, link_rtt, link_bw)

    # Entry points of each site into the hub graph: itself if it is a hub, and
    # every direct link to a hub.
    e_site = [hub_sites]
    e_hub = [np.arange(n_hubs)]
    e_rtt = [np.zeros(n_hubs)]
    e_bw = [np.full(n_hubs, np.inf)]
    for x, y in ((link_a, link_b), (link_b, link_a)):
        to_hub = hub_of_site[y] >= 0
        e_site.append(x[to_hub])
        e_hub.append(hub_of_site[y[to_hub]])
        e_rtt.append(link_rtt[to_hub])
        e_bw.append(link_bw[to_hub])
    es, eh, er, eb = (np.concatenate(v) for v in (e_site, e_hub, e_rtt, e_bw))
    order = np.lexsort((eb, er, eh, es))
    es, eh, er, eb = es[order], eh[order], er[order], eb[order]

    # Sites with the same entry points see the remote nodes alike: work per
    # distinct pattern (a district's junctions share one), not per site.
    bounds = np.searchsorted(es, np.arange(n_sites + 1)).tolist()
    eh_l, er_l, eb_l = eh.tolist(), er.tolist(), eb.tolist()
    patterns: dict[tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]], int] = {}
    pattern_of_site = np.full(n_sites, -1, dtype=np.int64)
    for site in range(n_sites):
        lo, hi = bounds[site], bounds[site + 1]
        if lo < hi:
            key = (tuple(eh_l[lo:hi]), tuple(er_l[lo:hi]), tuple(eb_l[lo:hi]))
            pattern_of_site[site] = patterns.setdefault(key, len(patterns))
    n_patterns = len(patterns)
    pat_dist = np.full((n_patterns, n_hubs), np.inf)
    pat_band = np.zeros((n_patterns, n_hubs))
    for p_i, (p_hubs, p_rtts, p_bws) in enumerate(patterns):
        h = np.array(p_hubs, dtype=np.int64)
        tot = np.array(p_rtts)[:, None] + dist[h]
        bw = np.minimum(np.array(p_bws)[:, None], band[h])
        best = tot.min(axis=0)
        pat_dist[p_i] = best
        pat_band[p_i] = np.where(tot == best[None, :], bw, 0.0).max(axis=0)

    # Remote candidates: fog and cloud nodes (0 ms at the source's own site),
    # the nearest `per_tier` of each tier.
    remote = np.flatnonzero(node_tier != _EDGE)
    remote_hub = hub_of_site[node_site[remote]]
    sites = np.arange(n_sites)
    has_pattern = pattern_of_site >= 0
    pat = np.where(has_pattern, pattern_of_site, 0)
    kept: list[IntArray] = []
    kept_rtt: list[FloatArray] = []
    kept_bw: list[FloatArray] = []
    for tier in sorted(set(node_tier[remote].tolist())):
        members = np.flatnonzero(node_tier[remote] == tier)
        rt = pat_dist[:, remote_hub[members]]
        bw = pat_band[:, remote_hub[members]]
        by_rtt = np.argsort(rt, axis=1, kind="stable")
        sorted_rtt = np.take_along_axis(rt, by_rtt, axis=1)
        k = min(per_tier, len(members))
        # Ties at the cut (a data centre of identical nodes) rotate with the
        # site, so that sites spread over those nodes instead of all taking
        # the same first few.
        edge_value = sorted_rtt[:, k - 1 : k]
        first = (sorted_rtt < edge_value).sum(axis=1)
        last = (sorted_rtt <= edge_value).sum(axis=1)
        i = np.arange(k)[None, :]
        a, b = first[pat][:, None], last[pat][:, None]
        width = np.maximum(b - a, 1)
        pos = np.where(i < a, i, a + (i - a + sites[:, None]) % width)
        col = by_rtt[pat[:, None], pos]
        site_rtt = rt[pat[:, None], col]
        ok = has_pattern[:, None] & np.isfinite(site_rtt)
        kept.append(np.where(ok, remote[members][col], -1))
        kept_rtt.append(np.where(ok, site_rtt, np.inf))
        kept_bw.append(np.where(ok, bw[pat[:, None], col], np.inf))

    # Edge devices serve only their own site: all of them are candidates there.
    edge = np.flatnonzero(node_tier == _EDGE)
    edge_site = node_site[edge]
    by_site = np.argsort(edge_site, kind="stable")
    counts = np.bincount(edge_site, minlength=n_sites)
    n_local = int(counts.max()) if len(edge) else 0
    local = np.full((n_sites, n_local), -1, dtype=np.int64)
    if len(edge):
        starts = np.cumsum(counts) - counts
        rank = np.arange(len(edge)) - starts[edge_site[by_site]]
        local[edge_site[by_site], rank] = edge[by_site]
    local_rtt = np.where(local >= 0, 0.0, np.inf)
    local_bw = np.full(local.shape, np.inf)

    cand = np.concatenate([local, *kept], axis=1)
    rtt = np.concatenate([local_rtt, *kept_rtt], axis=1)
    bws = np.concatenate([local_bw, *kept_bw], axis=1)
    if cand.shape[1] == 0:
        cand = np.full((n_sites, 1), -1, dtype=np.int64)
        rtt = np.full((n_sites, 1), np.inf)
        bws = np.full((n_sites, 1), np.inf)
    # Unreached columns are -1 already; their bandwidth must not read as 0.
    bws = np.where((cand >= 0) & (bws > 0), bws, math.inf)
    return cand.astype(np.int64), rtt, bws


def _hub_paths(
    n_hubs: int,
    hub_of_site: IntArray,
    link_a: IntArray,
    link_b: IntArray,
    link_rtt: FloatArray,
    link_bw: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """All-pairs lowest RTT between hubs, and each chosen path's bandwidth.

    Floyd-Warshall, as hubs are few; a path's bandwidth is its narrowest link,
    and among equal RTTs the widest path wins.
    """
    dist = np.full((n_hubs, n_hubs), np.inf)
    band = np.zeros((n_hubs, n_hubs))
    np.fill_diagonal(dist, 0.0)
    np.fill_diagonal(band, np.inf)
    ha, hb = hub_of_site[link_a], hub_of_site[link_b]
    both = (ha >= 0) & (hb >= 0)
    for x, y in ((ha, hb), (hb, ha)):
        dist[x[both], y[both]] = link_rtt[both]
        band[x[both], y[both]] = link_bw[both]
    for k in range(n_hubs):
        through = dist[:, k : k + 1] + dist[k : k + 1, :]
        through_bw = np.minimum(band[:, k : k + 1], band[k : k + 1, :])
        better = (through < dist) | ((through == dist) & (through_bw > band))
        dist = np.where(better, through, dist)
        band = np.where(better, through_bw, band)
    return dist, band
