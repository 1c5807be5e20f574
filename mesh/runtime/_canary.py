"""The canary service: a new candidate version is tried on a few sites, then promoted or not.

For each tracked module (:meth:`CanaryService.track`, with its ``Canary``
policy), the thread ``mesh-canary`` reads the registry about once a second.
When a ``candidate`` version of the module's model newer than ``production``
appears:

1. ``candidate_seen``; the candidate is installed make-before-break
   (:meth:`~mesh.edge._install.EdgeInstaller.install`: the agent serves the old
   version until the new one is loaded) on the agents the decision picks
   (:func:`mesh.control._canary.canary_agents`) among those serving the module;
   a failed install puts production back where it went and archives the
   candidate (``rolled_back``). A lone agent tries it alone: production's side
   is then its own figures over the window before the canary. Where replicas
   serve the module and the service has :class:`ReplicaTrials`, a candidate
   replica serves beside them, weighed into the route at ``fraction`` of the
   requests once ready (:mod:`mesh.runtime._canary_replicas`); one that does
   not start rolls the canary back.
2. ``canary_started`` (the policy, and whether live errors are scored) and
   ``canary_sites`` (which agents on which sites; the candidate replica's node,
   tier and share, or without trials: replicas change at promotion).
3. Each second both sides' figures (:class:`~mesh.control._canary.SideFigures`)
   are gathered: live error per version from a :class:`LiveErrorSource`
   (Part 1's ``LiveErrors.window``; production's at the canary agents' sites
   over the window before the canary, so both sides are judged on the same
   sites: :func:`~mesh.runtime._canary_figures.error_at`); p95 and request
   counts per version from the agents' heartbeats (``ModuleStats``) and from
   what the gateway counted per version on the replicas since the candidate
   replica took traffic (its p95 joins the agents' in the median);
   :func:`~mesh.control._canary.decide` says wait, promote or roll back (at
   once if the gateway marked the candidate replica down). A module whose
   check is on ``inputs``/``outputs`` (no labels) is compared on each version's
   drift score against its own reference instead (``drift_scores``); without
   the source of its measure, or an error check no agent tries, p95 and failed
   requests decide alone (:func:`~mesh.runtime._canary_figures.measure_of`).
4. ``compared`` (both sides' figures), then ``promoted`` (registry promote,
   the candidate on every other agent serving the module; the candidate
   replica out of the route, drained and stopped, then production's replicas
   redeployed with its version, make-before-break) or ``rolled_back`` (the
   canary agents reinstall production, the candidate replica leaves the route,
   drains and stops, the candidate is archived with the reason). An agent
   offline then, or whose install failed, gets its version when back
   (:mod:`mesh.runtime._catch_up`).

Every step goes to the registry's lifecycle (:mod:`mesh.models._steps`). A
canary under way when the control plane stops starts again after it (the
candidate is still a candidate). Installs are made on the service's thread,
one agent at a time, each bounded by ``install_timeout_s``.

Example:
    >>> canary = CanaryService(registry, installer, edge, manager=manager,
    ...                        replicas=ReplicaCanary(routes, launcher)).start()  # doctest: +SKIP
    >>> canary.track(app.modules["counter"].spec)                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.control._canary import SideFigures, Verdict, canary_agents, decide
from mesh.core._errors import MeshError, SpecError
from mesh.core._log_repeats import RepeatLog
from mesh.core._metrics import MetricsRegistry
from mesh.edge._records import AgentView
from mesh.models._registry import ModelNotFoundError, ModelRegistry, ModelVersion, Stage
from mesh.runtime._canary_figures import (
    AgentSource,
    ErrorWindowLike,
    LiveErrorSource,
    agent_figures,
    counters,
    error_at,
    measure_note,
    measure_of,
    p95s,
)
from mesh.runtime._canary_replicas import (
    ReplicaDeployer,
    ReplicaRun,
    ReplicaTrials,
    redeploy,
    replica_share,
    replicas_serving,
    start_beside,
)
from mesh.runtime._catch_up import CatchUp
from mesh.sdk._specs import Canary, ModuleSpec
from mesh.serving._contract import AgentInstaller, ModelArtifact
from mesh.serving._deployment import DeploymentView

__all__ = ["CanaryService", "ErrorWindowLike", "LiveErrorSource", "ReplicaTrials"]

logger = logging.getLogger(__name__)

#: Why replicas do not serve the candidate beside production (a service without trials).
FOG_NOT_TRIED = (
    "not tried: no candidate replica beside production's (the service has no "
    "replica trials); replicas take the candidate at promotion"
)
#: Where production's side comes from when every agent tries the candidate (a lone agent).
BEFORE = "the canary agents before the canary (no agent is left serving production)"


@dataclass(slots=True)
class _Run:
    """One canary under way."""

    spec: ModuleSpec
    policy: Canary
    candidate: str
    production: str
    agents: dict[str, str | None]  # canary agent -> site
    others: dict[str, str | None]  # production agent -> site
    started_at: float  # when the candidate serves (after the installs)
    chosen_at: float = 0.0  # when the agents were chosen (before the installs)
    baseline: dict[str, tuple[int, int]] = field(default_factory=dict)  # agent -> counters
    before_p95: list[float] = field(default_factory=list)  # canary agents' p95 on production
    replica: ReplicaRun | None = None  # the candidate replica beside production's


class CanaryService:
    """Tries each tracked module's new candidate on a few sites, then promotes or rolls back.

    Args:
        registry: the model registry (versions, stages, lifecycle steps).
        installer: puts a version on an agent, make-before-break.
        agents: the agents and their heartbeats (the edge bus).
        manager: redeploys replicas at promotion (None: no replicas to move).
        replicas: starts a candidate replica beside the manager's (None: replicas
            are not tried, they take the candidate at promotion).
        live_errors: live error per version, read for modules whose drift check
            is ``statistic="error"`` (the only ones whose outputs are joined with
            labels).
        drift_scores: drift score per version (``DriftService.version_score``),
            read for modules whose check is on ``inputs``/``outputs``; without
            the source for a module's measure, p95 and failures decide alone.
        clock: Unix seconds (injected in tests).
        period_s: seconds between passes.
        install_timeout_s: how long one agent may take to install a version.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        installer: AgentInstaller,
        agents: AgentSource,
        *,
        manager: ReplicaDeployer | None = None,
        replicas: ReplicaTrials | None = None,
        live_errors: LiveErrorSource | None = None,
        drift_scores: LiveErrorSource | None = None,
        clock: Callable[[], float] = time.time,
        period_s: float = 1.0,
        install_timeout_s: float = 60.0,
    ) -> None:
        """Track nothing yet; :meth:`start` runs the passes."""
        self._registry = registry
        self._installer = installer
        self._agents = agents
        self._manager = manager
        self._trials = replicas if manager is not None else None
        self.live_errors, self.drift_scores = live_errors, drift_scores
        self._clock = clock
        self._period_s = period_s
        self._install_timeout_s = install_timeout_s
        # Agents offline (or failing) when a decision moved the others: later.
        self.catch_up = CatchUp(registry, installer, install_timeout_s=install_timeout_s)
        self._tracked: dict[str, tuple[ModuleSpec, dict[str, str] | None]] = {}
        self._runs: dict[str, _Run] = {}
        self._done: set[tuple[str, str]] = set()  # (model, version) decided here
        self._lock = threading.Lock()
        self._quiet = RepeatLog(logger, every_s=300.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mesh-canary", daemon=True)

    # -- life

    def start(self) -> CanaryService:
        """Start the passes on the thread ``mesh-canary``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the passes (an install under way finishes first) and candidate replicas.

        The canaries start again after a restart (their candidates are still candidates).
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._install_timeout_s + 5)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self._stop_replica(run)

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):  # bounded by stop
            self.tick()

    # -- tracking

    def track(self, spec: ModuleSpec, *, sites: Mapping[str, str] | None = None) -> None:
        """Watch ``spec``'s model for new candidates and canary each on its agents.

        Args:
            spec: the module; its ``canary`` policy says how.
            sites: agent id -> site of the agents that may take part (default:
                every agent serving the module, with the site it reports).

        Raises:
            SpecError: the module declares no canary policy.
        """
        if spec.canary is None:
            raise SpecError(
                f"module {spec.name!r} declares no canary policy: add "
                "canary=Canary(...) to @app.module"
            )
        with self._lock:
            self._tracked[spec.name] = (spec, dict(sites) if sites is not None else None)
        logger.info("canary: tracking module %s (model %s)", spec.name, spec.model)

    def untrack(self, module: str) -> bool:
        """Stop watching ``module`` (a canary's agents are left as they are); False if unknown.

        A candidate replica under way leaves the route and stops.
        """
        self.catch_up.forget(module)
        with self._lock:
            run = self._runs.pop(module, None)
            known = self._tracked.pop(module, None) is not None
        if run is not None:
            self._stop_replica(run)
        return known

    def active(self) -> list[dict[str, Any]]:
        """Canaries under way: module, model, candidate, production, agents, replica, started_at."""
        with self._lock:
            runs = list(self._runs.values())
        return [
            {
                "module": r.spec.name,
                "model": r.spec.model,
                "candidate": r.candidate,
                "production": r.production,
                "agents": dict(r.agents),
                "replica": r.replica.describe() if r.replica is not None else None,
                "started_at": r.started_at,
            }
            for r in runs
        ]

    def describe(self, limit: int = 50) -> dict[str, Any]:
        """The dashboard's data: canaries under way and the newest lifecycle steps."""
        steps = [s.to_dict() for s in self._registry.lifecycle.recent(limit)]
        return {"active": self.active(), "steps": steps}

    def expose(self, metrics: MetricsRegistry) -> None:
        """Register ``mesh_canary_active{module,version}`` on ``metrics`` (read at scrape)."""
        metrics.gauge_callback(
            "mesh_canary_active",
            "1 for each module whose candidate version is being tried on a canary now.",
            ("module", "version"),
            lambda: [((r["module"], r["candidate"]), 1.0) for r in self.active()],
        )

    # -- one pass

    def tick(self) -> None:
        """One pass over the tracked modules (each one's failure is logged, not raised)."""
        with self._lock:
            tracked = list(self._tracked.values())
        try:
            self.catch_up.settle(self._agents.agents())
        except Exception as exc:  # the next pass tries again
            self._quiet.exception("canary: catching agents up: %s", exc, exc=exc)
        for spec, sites in tracked:
            try:
                with self._lock:
                    run = self._runs.get(spec.name)
                if run is None:
                    self._maybe_start(spec, sites)
                else:
                    self._observe(run)
            except Exception as exc:  # the next pass tries again
                self._quiet.exception("canary: module %s: %s", spec.name, exc, exc=exc)

    def _versions(self, spec: ModuleSpec) -> tuple[ModelVersion, ModelVersion] | None:
        """The newest candidate newer than production, and production; None if none."""
        try:
            versions = self._registry.versions(spec.model)
        except ModelNotFoundError:
            return None
        production = next((v for v in versions if v.stage == Stage.PRODUCTION), None)
        if production is None:
            return None
        newer = [
            v
            for v in versions
            if v.stage == Stage.CANDIDATE
            and v.number > production.number
            and (spec.model, v.version) not in self._done
        ]
        return (newer[-1], production) if newer else None

    def _serving(
        self, spec: ModuleSpec, sites: Mapping[str, str] | None, *, online: bool = True
    ) -> dict[str, AgentView]:
        """Agents (online ones only unless ``online`` is False) that have the module installed."""
        out: dict[str, AgentView] = {}
        for view in self._agents.agents():
            if (online and view.state != "online") or view.observed is None:
                continue
            if sites is not None and view.agent_id not in sites:
                continue
            if any(m.name == spec.name for m in view.observed.installed):
                out[view.agent_id] = view
        return out

    def _measure(self, spec: ModuleSpec, run: _Run | None = None) -> tuple[str, Any] | None:
        """What ``spec``'s canary compares and where (:func:`measure_of`); None: p95 alone."""
        agents_try = run is None or bool(run.agents)
        return measure_of(spec.drift, live_errors=self.live_errors,
                          drift_scores=self.drift_scores, agents_try=agents_try)  # fmt: skip

    def _replicas(self, spec: ModuleSpec) -> DeploymentView | None:
        """The replicas serving ``spec`` beside which a candidate replica is tried, if any."""
        if self._trials is None or self._manager is None:
            return None
        return replicas_serving(self._manager.deployments(), spec.name)

    def _stop_replica(self, run: _Run) -> dict[str, Any] | None:
        """The candidate replica out of the route, drained and stopped; its record."""
        if run.replica is None or self._trials is None:
            return None
        return run.replica.stop(self._trials)

    def _record(self, model: str, version: str, step: str, detail: Mapping[str, Any]) -> None:
        self._registry.lifecycle.record(model, version, step, detail)

    def _maybe_start(self, spec: ModuleSpec, sites: Mapping[str, str] | None) -> None:
        found = self._versions(spec)
        if found is None:
            return
        candidate, production = found
        model, policy = spec.model, spec.canary
        assert policy is not None  # track() checked
        seen = {s.step for s in self._registry.lifecycle.steps(model, version=candidate.version)}
        serving = self._serving(spec, sites)
        beside = self._replicas(spec)
        if "candidate_seen" not in seen:
            self._record(
                model,
                candidate.version,
                "candidate_seen",
                {
                    "module": spec.name,
                    "production": production.version,
                    "lineage": dict(candidate.lineage.extra),
                    "agents_serving": len(serving),
                    "replicas_serving": list(beside.nodes) if beside is not None else [],
                },
            )
        if not serving and beside is None:
            self._quiet.info(
                "canary: module %s: candidate %s waits for an agent or replicas serving it",
                spec.name,
                candidate.version,
            )
            return

        def site(agent: str) -> str | None:
            return sites[agent] if sites is not None else serving[agent].site

        chosen = canary_agents(list(serving), policy.fraction)
        run = _Run(
            spec,
            policy,
            candidate.version,
            production.version,
            agents={a: site(a) for a in chosen},
            others={a: site(a) for a in serving if a not in chosen},
            started_at=self._clock(),
        )
        run.before_p95 = p95s(serving, chosen, spec.name, production.version)
        self.catch_up.forget(spec.name, chosen)  # they take the candidate now
        artifact = ModelArtifact.from_registry(self._registry, model, candidate.version)
        done: list[str] = []
        for agent in chosen:
            try:
                self._installer.install(agent, spec.name, artifact, self._install_timeout_s)
            except MeshError as exc:
                # That agent too: its retained desired state names the candidate,
                # which it would take later (a timed-out install) unless replaced.
                reason = f"install on agent {agent} failed: {exc}"
                self._roll_back(run, reason, [*done, agent])
                return
            done.append(agent)
        if beside is not None:
            assert self._trials is not None  # _replicas() checked
            share = replica_share(policy.fraction)
            try:
                run.replica = start_beside(
                    self._trials, beside, artifact, production=production.version, share=share
                )
            except MeshError as exc:
                reason = f"candidate replica on {beside.tier} did not start: {exc}"
                self._roll_back(run, reason, done)
                return
        run.chosen_at, run.started_at = run.started_at, self._clock()
        # Counted from now: the views read before the installs are stale.
        views = self._agents.agents()
        fresh = {v.agent_id: v for v in views if v.agent_id in serving}
        run.baseline = {a: counters(fresh.get(a, serving[a]), spec.name) for a in serving}
        if run.replica is not None and self._trials is not None:
            run.replica.mark(self._trials, skip_nodes={v.agent_id for v in views})
        self._record(
            model,
            candidate.version,
            "canary_started",
            {
                "module": spec.name,
                "production": production.version,
                "policy": policy.model_dump(),
                "live_error": measure_note(self._measure(spec, run)),
            },
        )
        self._record(
            model,
            candidate.version,
            "canary_sites",
            {
                "canary": run.agents,
                "production": run.others or (BEFORE if run.agents else {}),
                **(
                    {"fog": FOG_NOT_TRIED}
                    if self._trials is None
                    else {"replicas": run.replica.describe() if run.replica else "none serve it"}
                ),
            },
        )
        with self._lock:
            self._runs[spec.name] = run

    # -- watching and deciding

    def _side(
        self, run: _Run, version: str, agents: Mapping[str, str | None], views: Mapping[str, Any]
    ) -> SideFigures:
        module = run.spec.name
        latencies, requests, failures = agent_figures(
            views, agents, module, version, since=run.started_at, baseline=run.baseline
        )
        if run.replica is not None and self._trials is not None:
            tally = run.replica.window(self._trials, version, skip_nodes=views)
            requests, failures = requests + tally.requests, failures + tally.failures
            if tally.p95_ms is not None:
                latencies.append(tally.p95_ms)
        p95 = statistics.median(latencies) if latencies else None
        if (measure := self._measure(run.spec, run)) is None:
            return SideFigures(version, requests, None, p95, requests, failures)
        if version == run.production:  # where the candidate serves, before it did
            since = run.chosen_at - run.policy.window_s
            sites = {s for s in run.agents.values() if s is not None}
        else:
            since, sites = run.started_at, set()
        n, mae = error_at(measure[1], module, version, since=since, sites=sites)
        return SideFigures(version, n, mae, p95, requests, failures)

    def _observe(self, run: _Run) -> None:
        views = {v.agent_id: v for v in self._agents.agents()}
        candidate = self._side(run, run.candidate, run.agents, views)
        # p95 and failures: the other agents now (or the canary agents' own before it).
        production = self._side(run, run.production, run.others, views)
        if run.replica is not None and self._trials is not None:
            if self._trials.is_down(run.replica.candidate):
                reason = "the candidate replica refused or reset connections (marked down)"
                self._roll_back(run, reason, list(run.agents))
                return
        elif not run.others:
            before = statistics.median(run.before_p95) if run.before_p95 else None
            production = SideFigures(
                run.production, production.samples, production.mae, before, 0, 0
            )
        elapsed = self._clock() - run.started_at
        verdict = decide(
            run.policy,
            candidate=candidate,
            production=production,
            elapsed_s=elapsed,
            scored=(measure := self._measure(run.spec, run)) is not None,
            measure=measure[0] if measure is not None else "live error",
        )
        if verdict.action == "wait":
            return
        self._record(
            run.spec.model,
            run.candidate,
            "compared",
            {
                "module": run.spec.name,
                "candidate": candidate.to_dict(),
                "production": production.to_dict(),
                "elapsed_s": round(elapsed, 3),
                "verdict": verdict.action,
                "reason": verdict.reason,
            },
        )
        if verdict.action == "promote":
            self._promote(run, verdict)
        else:
            self._roll_back(run, verdict.reason, list(run.agents))

    def _promote(self, run: _Run, verdict: Verdict) -> None:
        spec, model = run.spec, run.spec.model
        self._registry.promote(model, run.candidate)
        artifact = ModelArtifact.from_registry(self._registry, model, run.candidate)
        failures: dict[str, str] = {}
        installed: list[str] = []
        self.catch_up.forget(spec.name)  # what was owed before is replaced: the new version
        holders = self._serving(spec, self._sites(spec), online=False)
        for agent, holder in sorted(holders.items()):
            if agent in run.agents:
                continue
            try:
                if holder.state != "online":
                    raise MeshError(f"agent {agent} is {holder.state}: installed when back")
                self._installer.install(agent, spec.name, artifact, self._install_timeout_s)
                installed.append(agent)
            except MeshError as exc:
                failures[agent] = str(exc)
                self.catch_up.owe(model, spec.name, agent, run.candidate, "promoted")
        # Its share back to production first, drained: room for production's redeploy.
        candidate_replica = self._stop_replica(run)
        replicas = redeploy(self._manager, spec.name, run.candidate, failures)
        self._record(
            model,
            run.candidate,
            "promoted",
            {
                "module": spec.name,
                "previous": run.production,
                "reason": verdict.reason,
                "agents": sorted([*run.agents, *installed]),
                "replicas": replicas,
                "candidate_replica": candidate_replica,
                "failures": failures,
            },
        )
        self._finish(run)

    def _roll_back(self, run: _Run, reason: str, agents: Iterable[str]) -> None:
        """Production back on ``agents``; the candidate archived with ``reason``."""
        spec, model = run.spec, run.spec.model
        failures: dict[str, str] = {}
        reinstalled: list[str] = []
        targets = list(agents)
        if targets:
            artifact = ModelArtifact.from_registry(self._registry, model, run.production)
            for agent in targets:
                try:
                    self._installer.install(agent, spec.name, artifact, self._install_timeout_s)
                    reinstalled.append(agent)
                except MeshError as exc:
                    failures[agent] = str(exc)
                    self.catch_up.owe(model, spec.name, agent, run.production, "rolled back")
        candidate_replica = self._stop_replica(run)
        self._record(
            model,
            run.candidate,
            "rolled_back",
            {
                "module": spec.name,
                "production": run.production,
                "reason": reason,
                "agents": reinstalled,
                "candidate_replica": candidate_replica,
                "failures": failures,
            },
        )
        self._registry.lifecycle.archive(model, run.candidate, reason=reason)
        self._finish(run)

    def _finish(self, run: _Run) -> None:
        with self._lock:
            self._runs.pop(run.spec.name, None)
            self._done.add((run.spec.model, run.candidate))

    def _sites(self, spec: ModuleSpec) -> Mapping[str, str] | None:
        with self._lock:
            entry = self._tracked.get(spec.name)
        return entry[1] if entry is not None else None
