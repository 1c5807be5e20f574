"""Explanations: every candidate of a decision with its prediction, and why the winner won.

Built on demand from the arrays the planner kept, so a 200,000-route plan costs
nothing until someone asks about one route.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._evaluate import Evaluation
from ._greedy import KIND_EXCLUDED, KIND_FITS, KIND_PINNED, Assignment
from ._model import TIERS
from ._plan import Candidate, Decision
from ._policies import Policy
from ._problem import Problem

__all__ = ["Explainer"]

FloatArray = npt.NDArray[np.float64]


class Explainer:
    """Builds the :class:`Decision` of one (module, site) of a plan."""

    __slots__ = ("_assignment", "_evaluation", "_member_cap", "_policy", "_problem")

    def __init__(
        self, problem: Problem, assignment: Assignment, evaluation: Evaluation, policy: Policy
    ) -> None:
        self._problem = problem
        self._assignment = assignment
        self._evaluation = evaluation
        self._policy = policy
        self._member_cap: FloatArray | None = None

    def _caps(self) -> FloatArray:
        """Per node, the tightest cap among the routes the plan put there."""
        if self._member_cap is None:
            p, a = self._problem, self._assignment
            placed = np.flatnonzero(a.cols >= 0)
            cols = a.cols[placed]
            eff = np.where(
                a.kind[placed, cols] == KIND_FITS,
                a.ranking.cap[placed, cols],
                a.ranking.cap_fallback[placed, cols],
            )
            cap = np.full(len(p.node_names), np.inf)
            np.minimum.at(cap, self._evaluation.node_of[placed], eff)
            self._member_cap = cap
        return self._member_cap

    def __call__(self, module: str, site: str) -> Decision:
        """Decision for (module, site); KeyError if there is no such demand."""
        p, a, ev = self._problem, self._assignment, self._evaluation
        d = p.demand_index(module, site)
        if d is None:
            raise KeyError((module, site))
        chosen_col = int(a.cols[d])
        chosen = int(ev.node_of[d])
        inc = int(p.incumbent_node[d])
        inc_col = int(p.incumbent_col[d])
        slo = float(p.demand_slo[d])
        moving_threshold = slo * (1.0 - p.settings.slo_margin)
        hysteresis = bool(getattr(self._policy, "hysteresis", False)) and inc >= 0
        module_idx = int(p.demand_module[d])
        present = set(ev.node_of[(p.demand_module == module_idx) & (ev.node_of >= 0)].tolist())
        candidates: list[Candidate] = []
        lost: list[str] = []
        passed_chosen = False
        # In the policy's own order (its key, then tie-break), so that everything
        # listed before the winner is something the policy would have preferred.
        ranked = np.lexsort(
            (a.ranking.secondary[d], a.ranking.primary[d], a.kind[d] == KIND_EXCLUDED)
        )
        for col in ranked.tolist():
            node = int(p.cand_node[d, col])
            if node < 0 or not p.cand_valid[d, col]:
                continue
            load = float(p.cand_load[d, col])
            rho = float(ev.utilisation[node]) + (0.0 if node == chosen else load)
            slow = p.tables.slowdown(np.array([p.node_row[node]], dtype=np.int64), np.array([rho]))[
                0
            ]
            network = p.cand_rtt[d, col] + p.cand_transfer[d, col]
            p95 = float(network + p.cand_service[d, col] * slow)
            threshold = moving_threshold if hysteresis and col != inc_col else slo
            if col == chosen_col:
                status = "chosen"
                passed_chosen = True
            elif a.kind[d, col] == KIND_EXCLUDED:
                status = "excluded by policy"
            elif self._policy.slo_aware and p95 > threshold * (1 + 1e-9):
                status = "over SLO"
            elif rho > p.node_max_util[node] + 1e-9:
                status = "over capacity"
            elif node not in present and (
                ev.memory_used[node] + p.module_memory[module_idx] > p.node_memory[node] + 1e-9
            ):
                status = "no memory"
            elif self._policy.slo_aware and rho > self._caps()[node] + 1e-9:
                status = "crowds others"
            else:
                status = "fits"
            name = p.node_names[node]
            candidates.append(
                Candidate(
                    node=name,
                    tier=TIERS[int(p.node_tier[node])],
                    predicted_p95_ms=p95,
                    cost_per_h=float(p.cand_cost[d, col]),
                    utilisation=rho,
                    status=status,
                )
            )
            if not passed_chosen and status not in ("chosen", "excluded by policy"):
                limit = f" > {threshold:.3g} ms" if status == "over SLO" else ""
                lost.append(f"{name} {status} (p95 {p95:.3g} ms{limit}, rho {rho:.2f})")
        reason = self._reason(d, chosen_col, chosen, candidates, lost, inc, inc_col)
        return Decision(
            module=module,
            site=site,
            node=p.node_names[chosen] if chosen >= 0 else None,
            previous=p.node_names[inc] if inc >= 0 else None,
            policy=self._policy.name,
            reason=reason,
            candidates=tuple(candidates),
        )

    def _reason(
        self,
        d: int,
        chosen_col: int,
        chosen: int,
        candidates: list[Candidate],
        lost: list[str],
        inc: int,
        inc_col: int,
    ) -> str:
        p, a = self._problem, self._assignment
        slo = float(p.demand_slo[d])
        if chosen < 0 and candidates:
            return f"policy {self._policy.name!r} placed it nowhere"
        if chosen < 0:
            return "no reachable node can run it (tier, execution provider, memory or profile)"
        winner = next(c for c in candidates if c.status == "chosen")
        head = (
            f"{winner.node} ({winner.tier}), predicted p95 {winner.predicted_p95_ms:.3g} ms "
            f"for an SLO of {slo:g} ms, ${winner.cost_per_h:.4g}/h"
        )
        if a.fallback[d]:
            why = "; ".join(lost) if lost else "none fits"
            if chosen_col == inc_col and inc >= 0:
                return f"no candidate fits ({why}); kept where it runs, none clearly better: {head}"
            return f"no candidate fits ({why}); placed where predicted p95 is lowest: {head}"
        if a.kind[d, chosen_col] == KIND_PINNED:
            held = p.now_s - float(p.since_s[d])
            return (
                f"kept on {head}: within the minimum dwell time "
                f"({held:.0f} s of {p.settings.min_dwell_s:.0f} s) and within SLO"
            )
        parts = [f"rule: {self._policy.rule}; chose {head}"]
        if chosen == inc and getattr(self._policy, "hysteresis", False):
            parts.append(
                f"kept (incumbent): a move needs a saving above {p.settings.cost_margin:.0%} "
                f"and p95 within {1 - p.settings.slo_margin:.0%} of the SLO"
            )
        elif inc >= 0 and inc_col < 0:
            parts.append(f"{p.node_names[inc]} is no longer a candidate")
        if lost:
            parts.append("ranked higher but unusable: " + "; ".join(lost))
        behind = [c.node for c in candidates[candidates.index(winner) + 1 :]]
        if behind:
            parts.append("ranked lower: " + ", ".join(behind))
        return "; ".join(parts)
