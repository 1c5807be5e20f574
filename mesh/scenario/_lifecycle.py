"""A scenario's model lifecycle: the modules' drift checks, fresh data and canaries, watched.

:func:`track_lifecycle` hands a rolled-out module that declares ``drift:`` or
``canary:`` to the control plane's services: ``services.drift`` (scores per
site, drift events on ``lifecycle/drift/<module>``), ``services.fresh_data``
(the agents' samples and their labels) and, when the scenario's
``lifecycle`` is on, ``services.canary`` (a candidate tried on a fraction of
the sites). A service this control plane lacks is skipped with a note.

:class:`LifecycleWatch` records, in simulated seconds, what the report shows:
each (module, site)'s drift score (polled about every ``every_s``), the drift
events, and, read from the registry at the end, the candidates registered
and the versions promoted or rolled back during the live phase (a canary's
promotion when it reached every site, not when the registry's stage changed,
which comes first). Its
:meth:`LifecycleWatch.finish` gives ``report.lifecycle``: ``drift_scores``,
``marks`` (``{"at", "label", "kind"}``) and the times ``detect_s``,
``candidate_s``, ``promoted_s``, ``rolled_back_s`` (None when it did not happen).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mesh.scenario._decls import ModuleDecl
from mesh.scenario._schema import Scenario

__all__ = ["LifecycleWatch", "track_lifecycle"]

logger = logging.getLogger(__name__)

#: The canary's lifecycle steps the report marks.
_CANARY_STEPS = ("canary_started", "promoted", "rolled_back")

#: Score samples kept per (module, site); later ones are dropped.
_MAX_POINTS = 5000


def track_lifecycle(
    scenario: Scenario,
    services: Any,
    decl: ModuleDecl,
    spec: Any,
    version: str,
    sites: Mapping[str, str],
) -> list[str]:
    """Hand ``decl`` to the lifecycle services it needs; returns notes on what was skipped."""
    notes: list[str] = []
    if decl.drift is None and decl.canary is None:
        return notes
    prefix = scenario.broker.prefix
    calls: list[tuple[str, Callable[[Any], Any]]] = []
    if decl.drift is not None:
        topics = [f"{prefix}/events/+/{decl.stream_name()}"]
        calls.append(
            ("drift", lambda s: s.track(spec, version=version, event_topics=topics, sites=sites))
        )
        policy = decl.sampling
        calls.append(("fresh_data", lambda s: s.track(spec, sites=sites, policy=policy)))
    if decl.canary is not None and scenario.lifecycle:
        calls.append(("canary", lambda s: s.track(spec, sites=sites)))
    for name, call in calls:
        service = getattr(services, name, None)
        if service is None:
            notes.append(f"{decl.name}: no {name} service in this control plane; not tracked")
            continue
        call(service)
    return notes


class LifecycleWatch:
    """Drift scores and lifecycle marks of one live phase (see the module docstring).

    Args:
        services: the control plane's services (``drift`` and ``registry`` read if there).
        models: module -> registry model of the modules with a drift check or canary.
        sim_time_at: wall time -> simulated second.
        every_s: wall seconds between two polls of the scores.
    """

    def __init__(
        self,
        services: Any,
        models: Mapping[str, str],
        sim_time_at: Callable[[float], float],
        *,
        every_s: float = 2.0,
    ) -> None:
        """Nothing recorded yet."""
        self._services = services
        self._models = dict(models)
        self._sim_time_at = sim_time_at
        self._every_s = every_s
        self._last_poll = 0.0
        self._started = time.time()
        self._scores: dict[str, list[tuple[float, float]]] = {}
        self._marks: list[dict[str, Any]] = []
        self._detect_s: float | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether any module has a lifecycle to watch."""
        return bool(self._models)

    def on_drift_event(self, _topic: str, payload: bytes) -> None:
        """A drift event (any thread): a mark, and the first one's time."""
        try:
            event = json.loads(payload)
            site, score = str(event["site"]), float(event["score"])
            at = float(event.get("ts") or time.time())
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("bad drift event %r: %s", payload[:200], exc)
            return
        t = round(self._sim_time_at(at), 1)
        with self._lock:
            if self._detect_s is None:
                self._detect_s = t
            self._marks.append({"at": t, "label": f"drift {site} ({score:.1f})", "kind": "drift"})

    def poll(self) -> None:
        """Record the drift scores (at most every ``every_s``; never raises)."""
        drift = getattr(self._services, "drift", None)
        now = time.time()
        if drift is None or now - self._last_poll < self._every_s:
            return
        self._last_poll = now
        try:
            scores = list(drift.scores())
        except Exception as exc:  # the report must not stop the run
            logger.debug("drift scores: %s", exc)
            return
        t = round(self._sim_time_at(now), 1)
        with self._lock:
            for s in scores:
                if s.score is None or s.module not in self._models:
                    continue
                points = self._scores.setdefault(f"{s.module}@{s.site}", [])
                if len(points) < _MAX_POINTS:
                    points.append((t, round(float(s.score), 3)))

    def finish(self) -> dict[str, Any]:
        """``report.lifecycle``: scores, marks and the loop's times (empty without a lifecycle)."""
        if not self.active:
            return {}
        marks = list(self._marks)
        marks.extend(self._registry_marks())
        marks.sort(key=lambda m: m["at"])

        def first(kind: str) -> float | None:
            return next((m["at"] for m in marks if m["kind"] == kind), None)

        with self._lock:
            scores = {k: [[t, v] for t, v in pts] for k, pts in self._scores.items()}
        return {
            "drift_scores": scores,
            "marks": marks,
            "detect_s": self._detect_s,
            "candidate_s": first("candidate"),
            "promoted_s": first("promoted"),
            "rolled_back_s": first("rolled_back"),
        }

    def _registry_marks(self) -> list[dict[str, Any]]:
        """Candidates registered and stage changes during the phase, from the registry."""
        registry = getattr(self._services, "registry", None)
        if registry is None:
            return []
        out: list[dict[str, Any]] = []
        for model in sorted(set(self._models.values())):
            try:
                versions = registry.versions(model)
                history = registry.history(model)
            except Exception as exc:  # a model never registered, a closed store
                logger.debug("lifecycle marks of %s: %s", model, exc)
                continue
            for v in versions:
                if v.created_at >= self._started:
                    at = round(self._sim_time_at(v.created_at), 1)
                    out.append({"at": at, "label": f"candidate {v.version}", "kind": "candidate"})
            canary = self._canary_marks(registry, model)
            rolled_out = {m["version"] for m in canary if m["kind"] == "promoted"}
            for change in history:
                action = str(change.get("action", ""))
                kind = {"promote": "promoted", "rollback": "rolled_back"}.get(action)
                if kind == "promoted" and change.get("version") in rolled_out:
                    continue  # the canary's mark: when every site had it
                if kind is not None and float(change.get("at") or 0) >= self._started:
                    at = round(self._sim_time_at(float(change["at"])), 1)
                    out.append({"at": at, "label": f"{kind} {change['version']}", "kind": kind})
            out.extend({k: v for k, v in m.items() if k != "version"} for m in canary)
        return out

    def _canary_marks(self, registry: Any, model: str) -> list[dict[str, Any]]:
        """The canary's own steps: started, promoted at every site, rolled back (and why)."""
        lifecycle = getattr(registry, "lifecycle", None)
        if lifecycle is None:
            return []
        try:
            steps = lifecycle.steps(model)
        except Exception as exc:  # a closed store
            logger.debug("canary steps of %s: %s", model, exc)
            return []
        out: list[dict[str, Any]] = []
        for step in steps:
            if step.at < self._started or step.step not in _CANARY_STEPS:
                continue
            at = round(self._sim_time_at(step.at), 1)
            if step.step == "canary_started":
                out.append({"at": at, "label": f"canary {step.version}", "kind": "canary"})
            elif step.step == "promoted":
                label = f"promoted {step.version}"
                out.append({"at": at, "label": label, "kind": "promoted", "version": step.version})
            else:
                reason = str(step.detail.get("reason", ""))[:80]
                label = f"rolled back {step.version}" + (f": {reason}" if reason else "")
                out.append({"at": at, "label": label, "kind": "rolled_back"})
        return out
