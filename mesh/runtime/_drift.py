"""The control plane's drift detection: each tracked module's score per site, and its events.

:class:`DriftService` follows what a tracked module's drift check
(:class:`~mesh.sdk._specs.Drift`) needs over the edge bus:

- ``error``: the module's pipeline events (their outputs, version, site and
  ``source_ts``) on the event topics given to :meth:`~DriftService.track`, and
  the labels on ``drift.labels`` (``{site}`` as ``+``, the topic as declared:
  app topics are not under the bus's prefix, as stream and trigger topics and
  the fresh-data service's labels), joined in
  :class:`~mesh.control._live_error.LiveErrors`;
- ``outputs`` / ``inputs``: the agents' heartbeats, whose ``ModuleStats.summary``
  holds each inference's mean output and input since the last one, and the
  cloud/fog replicas' windows, which
  :class:`~mesh.runtime._replica_drift.ReplicaDriftFeed` reads and hands to
  :meth:`~DriftService.add_summary` under the replicas' tier. Summaries cost an
  inference ~20 us: given an ``installer``, tracking turns agents' on
  (``EdgeInstaller.set_drift_stats``) and untracking off; a replica summarises
  while the feed reads it.

About once a second (thread ``mesh-drift``) each site's score is computed
against the reference of the version serving there (the registry's
``lineage.extra["drift_reference"]`` and selection metric), and when a score
reaches the threshold with at least ``min_samples`` in the window, one drift
event (QoS 1) goes to :func:`~mesh.sdk._specs.drift_topic` as it is, the topic
an event trigger (``topic=drift_topic(module)``) subscribes to (re-armed below
0.8 x threshold or when the site's version changes)::

    {"module", "model", "version", "site", "statistic", "score", "threshold",
     "samples", "window_s", "ts"}

Label message (JSON): ``{"site": str, "ts": float (the frame's source_ts),
"values": [float, ...]}``; a bad one is dropped with one log line (then counted).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.protocol import Event, Heartbeat, ProtocolError, parse_json
from edge_agent.protocol._reports import DriftSummary
from mesh.control._drift import (
    DriftLatch,
    DriftReference,
    DriftScore,
    Moments,
    MomentWindow,
    drift_hold,
    error_score,
    moment_score,
)
from mesh.control._live_error import LiveErrors, parse_label
from mesh.core._log_repeats import RepeatLog
from mesh.core._topics import topic_matches
from mesh.runtime._drift_seams import (
    CandidateSource,
    DriftBus,
    DriftStatsSwitch,
    ScoreWindow,
    VersionSource,
    expose_drift,
)
from mesh.sdk._specs import Drift, ModuleSpec, drift_topic

__all__ = [
    "DriftBus",
    "DriftService",
    "DriftStatsSwitch",
    "ScoreWindow",
    "VersionSource",
    "expose_drift",
]

logger = logging.getLogger(__name__)


@dataclass
class _Tracked:
    spec: ModuleSpec
    drift: Drift
    version: str
    sites: dict[str, str]  # agent -> site
    patterns: tuple[str, ...]
    undo: list[Callable[[], None]] = field(default_factory=list)
    latch: DriftLatch = field(default_factory=DriftLatch)
    windows: dict[str, MomentWindow] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)  # site -> version seen last


class DriftService:
    """Drift scores per tracked module and site; one drift event per drift.

    Args:
        bus: the edge bus (started).
        registry: where each version's reference is read.
        clock: the control plane's clock (``time.time``).
        period_s: how often scores are evaluated by :meth:`start`'s thread.
        topic_prefix: what label topics and drift topics are under (default:
            nothing, the topics as declared, where triggers and the fresh-data
            service read them).
        installer: tells agents which modules to summarise (their desired
            state's ``drift_stats``); None: agents are told by someone else.

    Example:
        >>> drift = DriftService(edge, registry).start()  # doctest: +SKIP
        >>> drift.track(spec, version="v3", event_topics=["mesh/v1/events/+/counts"])
        ... # doctest: +SKIP
        >>> [(s.site, s.score) for s in drift.scores()]  # doctest: +SKIP
        [('j1', 0.93), ('j2', 2.41)]
    """

    def __init__(
        self,
        bus: DriftBus,
        registry: VersionSource,
        *,
        clock: Callable[[], float] = time.time,
        period_s: float = 1.0,
        topic_prefix: str | None = None,
        installer: DriftStatsSwitch | None = None,
        candidates: CandidateSource | None = None,
    ) -> None:
        """Nothing tracked yet; :meth:`start` starts the evaluation thread.

        ``candidates`` (the registry): events wait as :func:`drift_hold` says (None: never).
        """
        self._bus = bus
        self._candidates = candidates
        self._installer = installer
        self._registry = registry
        self._clock = clock
        self._period_s = period_s
        self.topic_prefix = topic_prefix or ""
        self._live = LiveErrors(clock=clock)
        self._lock = threading.RLock()
        self._tracked: dict[str, _Tracked] = {}
        self._references: dict[tuple[str, str], tuple[float, DriftReference | None, str]] = {}
        self._scores: list[DriftScore] = []
        self._quiet = RepeatLog(logger, every_s=300.0)
        self._undo_events: Callable[[], None] | None = None
        self._undo_beats: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Drift events published since start.
        self.fired = 0

    @property
    def live_errors(self) -> LiveErrors:
        """Outputs joined with labels (the canary reads each version's error here)."""
        return self._live

    def event_topic(self, module: str) -> str:
        """The full topic ``module``'s drift events go to."""
        return f"{self.topic_prefix}{drift_topic(module)}"

    def labels_topic(self, drift: Drift) -> str | None:
        """The pattern a check's labels are read from (None without labels)."""
        if drift.labels is None:
            return None
        return f"{self.topic_prefix}{drift.labels.replace('{site}', '+')}"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> DriftService:
        """Start evaluating on the thread ``mesh-drift``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mesh-drift", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and every subscription; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for module in self.tracked():
            self.untrack(module)
        for undo in (self._undo_events, self._undo_beats):
            if undo is not None:
                undo()
        self._undo_events = self._undo_beats = None

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):  # bounded by stop
            try:
                self.evaluate()
            except Exception as exc:  # the next pass tries again
                self._quiet.exception("drift: a pass failed", exc=exc)

    # ---------------------------------------------------------------- tracking

    def track(
        self,
        spec: ModuleSpec,
        *,
        version: str,
        event_topics: Sequence[str] | None = None,
        sites: Mapping[str, str] | None = None,
    ) -> None:
        """Watch ``spec``'s drift check.

        Tracking a module again replaces its check, topics and sites and keeps
        what was seen (samples, which sites are in drift), so a scenario or a
        promotion may call it again; the new subscriptions are made first.

        Args:
            spec: the module (its ``drift`` must be set).
            version: the version serving now (``v3``, or a stage the registry
                resolves); a site's events and heartbeats name the version there.
            event_topics: topic patterns its pipeline events arrive on, e.g.
                ``f"{prefix}/events/+/{stream}"``; None: every event under the
                prefix that names the module.
            sites: agent id -> site, for events and heartbeats that name no site.

        Raises:
            ValueError: ``spec`` declares no drift check.
        """
        drift = spec.drift
        if drift is None:
            raise ValueError(f"module {spec.name}: no drift check declared (drift=None)")
        patterns = (
            (f"{self._bus.prefix}/events/+/+",) if event_topics is None else tuple(event_topics)
        )
        tracked = _Tracked(
            spec, drift, self._resolve(spec.model, version), dict(sites or {}), patterns
        )
        self._ensure_feeds(tracked)  # subscribes: not under the lock handlers take
        with self._lock:
            old = self._tracked.get(spec.name)
            if old is not None:
                tracked.latch, tracked.windows, tracked.serving = (
                    old.latch,
                    old.windows,
                    old.serving,
                )
            self._tracked[spec.name] = tracked
        for undo in old.undo if old is not None else ():
            undo()
        self._summaries(spec.name, drift.statistic != "error")
        logger.info(
            "drift: tracking %s (%s, threshold %g over %g s) at %s",
            spec.name,
            drift.statistic,
            drift.threshold,
            drift.window_s,
            tracked.version,
        )

    def untrack(self, module: str) -> None:
        """Stop watching ``module`` (its samples are forgotten); a no-op when not tracked."""
        with self._lock:
            tracked = self._tracked.pop(module, None)
            self._scores = [s for s in self._scores if s.module != module]
        if tracked is None:
            return
        for undo in tracked.undo:
            undo()
        self._live.forget(module)
        self._summaries(module, False)

    def _summaries(self, module: str, on: bool) -> None:
        """Turn agents' summaries of ``module`` on or off (each costs an inference ~20 us)."""
        if self._installer is None:
            return
        try:
            self._installer.set_drift_stats(module, on)
        except Exception as exc:  # the agents keep what they had; tracking goes on
            logger.warning("drift: %s: agents' summaries not turned %s: %s", module, on, exc)

    def tracked(self) -> list[str]:
        """The modules tracked, by name."""
        with self._lock:
            return sorted(self._tracked)

    def summarised(self) -> list[str]:
        """The modules tracked on ``inputs`` or ``outputs`` (those read from summaries)."""
        with self._lock:
            return sorted(m for m, t in self._tracked.items() if t.drift.statistic != "error")

    def _resolve(self, model: str, version: str) -> str:
        if version.startswith("v") and version[1:].isdigit():
            return version
        try:
            return self._registry.get(model, version).version
        except Exception as exc:
            logger.warning("drift: %s@%s not resolved (%s); kept as given", model, version, exc)
            return version

    def _ensure_feeds(self, tracked: _Tracked) -> None:
        under_prefix = f"{self._bus.prefix}/events/"
        with self._lock:
            if self._undo_events is None:
                self._undo_events = self._bus.on_event(self._on_event)
        for pattern in tracked.patterns:
            if not pattern.startswith(under_prefix):  # on_event sees only the prefix's
                tracked.undo.append(self._bus.subscribe(pattern, self._on_raw_event))
        labels = self.labels_topic(tracked.drift)
        if labels is not None and tracked.drift.statistic == "error":
            module = tracked.spec.name
            tracked.undo.append(
                self._bus.subscribe(labels, lambda t, p: self._on_label(module, t, p))
            )
        if tracked.drift.statistic != "error" and self._undo_beats is None:
            beats = f"{self._bus.prefix}/agents/+/heartbeat"
            self._undo_beats = self._bus.subscribe(beats, self._on_heartbeat)

    # ---------------------------------------------------------------- inputs

    def _on_raw_event(self, topic: str, payload: bytes) -> None:
        try:
            event = parse_json(payload, Event)
        except ProtocolError as exc:
            self._quiet.warning("drift: a bad event on %s dropped: %s", topic, exc)
            return
        self._take_event(event, topic)

    def _on_event(self, event: Event) -> None:
        if event.site is not None:
            self._take_event(event, f"{self._bus.prefix}/events/{event.site}/{event.stream}")

    def _take_event(self, event: Event, topic: str) -> None:
        with self._lock:
            wanted = [
                t
                for t in self._tracked.values()
                if (event.module is None or event.module == t.spec.name)
                and any(topic_matches(p, topic) for p in t.patterns)
            ]
        for tracked in wanted:
            site = event.site or tracked.sites.get(event.agent or "")
            version = event.version or tracked.version
            if site is None:
                continue
            with self._lock:
                tracked.serving[site] = version
            if tracked.drift.statistic != "error" or event.source_ts is None:
                continue
            name = tracked.drift.output or next(iter(event.outputs), None)
            tensor = event.outputs.get(name) if name is not None else None
            if tensor is not None:
                self._live.add_output(
                    tracked.spec.name, site, version, event.source_ts, tensor.data
                )

    def _on_label(self, module: str, topic: str, payload: bytes) -> None:
        try:
            label = parse_label(payload)
        except ValueError as exc:
            self._quiet.warning("drift: %s: a bad label on %s dropped: %s", module, topic, exc)
            return
        self._live.add_label(module, label.site, label.ts, label.values)

    def _on_heartbeat(self, topic: str, payload: bytes) -> None:
        try:
            beat = parse_json(payload, Heartbeat)
        except ProtocolError:
            return  # the registry logged it
        for name, stats in beat.modules.items():
            tracked = self._tracked.get(name)
            site = beat.site or (tracked.sites.get(beat.agent) if tracked else None)
            if stats.summary is not None and site is not None:
                self.add_summary(name, site, stats.summary)

    def add_summary(self, module: str, site: str, summary: DriftSummary) -> None:
        """Fold one window of ``module``'s inputs and outputs at ``site`` in.

        Agents' heartbeats come in here, and replicas' windows through
        :class:`~mesh.runtime._replica_drift.ReplicaDriftFeed`; a module not
        tracked, or tracked on ``error``, ignores them.
        """
        now = self._clock()
        with self._lock:
            tracked = self._tracked.get(module)
            if tracked is None or tracked.drift.statistic == "error":
                return
            window = tracked.windows.setdefault(site, MomentWindow())
            window.add(
                now,
                summary.version,
                Moments(summary.inputs.count, summary.inputs.mean, summary.inputs.m2),
                {k: Moments(m.count, m.mean, m.m2) for k, m in summary.outputs.items()},
            )
            window.prune(now - 2 * tracked.drift.window_s)
            if summary.version is not None:
                tracked.serving[site] = summary.version

    # ---------------------------------------------------------------- scores

    def version_score(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> ScoreWindow:
        """``version``'s drift score since ``since`` (at ``site``; all sites: None).

        Against that version's own reference: the canary's measure for a module
        without labels (a candidate retrained on the new data sits closer to its
        reference than production to its old one). Error checks give none.
        """
        with self._lock:
            t = self._tracked.get(module)
            windows = [] if t is None else [w for s, w in t.windows.items() if site in (None, s)]
        if t is None or t.drift.statistic == "error" or version is None:
            return ScoreWindow(0, None)
        total = Moments()
        for window in windows:
            total = total.merge(window.moments(t.drift.statistic, t.drift.output, since=since,
                                               version=version))  # fmt: skip
        reference, _ = self._reference(t.spec.model, version, self._clock())
        stats = reference.stats_for(t.drift.statistic, t.drift.output) if reference else None
        score = moment_score(total, stats) if stats is not None and total.count else None
        return ScoreWindow(total.count, score)

    def scores(self) -> list[DriftScore]:
        """Each tracked module's score per site, as the last evaluation left them."""
        with self._lock:
            return list(self._scores)

    def evaluate(self) -> list[dict[str, Any]]:
        """Score every site now; publish (and return) the drift events that fire."""
        now = self._clock()
        with self._lock:
            tracked = list(self._tracked.values())
        scores: list[DriftScore] = []
        fired: list[dict[str, Any]] = []
        for t in tracked:
            for score, fire in self._score_module(t, now):
                scores.append(score)
                if fire:
                    fired.append(self._fire(t, score, now))
        with self._lock:
            live = set(self._tracked)
            self._scores = [s for s in scores if s.module in live]
        return fired

    def _score_module(self, t: _Tracked, now: float) -> list[tuple[DriftScore, bool]]:
        drift, module = t.drift, t.spec.name
        since = now - drift.window_s
        with self._lock:
            sites = sorted(set(t.sites.values()) | set(t.serving) | set(t.windows))
            serving = dict(t.serving)
        out = []
        for site in sites:
            version = serving.get(site, t.version)
            reference, reason = self._reference(t.spec.model, version, now)
            score: float | None = None
            if drift.statistic == "error":
                window = self._live.window(module, since=since, site=site, version=version)
                samples = window.n
                if reference is not None and reference.error is not None:
                    score = error_score(window.mae, reference.error)
                elif reason is None:
                    reason = f"{t.spec.model}@{version} has no reference error"
            else:
                with self._lock:
                    moments = t.windows.get(site, MomentWindow()).moments(
                        drift.statistic, drift.output, since=since, version=version
                    )
                samples = moments.count
                stats = reference.stats_for(drift.statistic, drift.output) if reference else None
                if stats is not None:
                    score = moment_score(moments, stats)
                elif reason is None:
                    reason = f"{t.spec.model}@{version} has no {drift.statistic} reference"
            scored = score is not None and samples >= drift.min_samples
            if score is not None and not scored:
                reason = f"{samples} of {drift.min_samples} samples"
            elif score is None and reason is None:
                reason = "no samples"
            fire = t.latch.update(
                site,
                version,
                score,
                samples=samples,
                threshold=drift.threshold,
                min_samples=drift.min_samples,
            )
            if fire and self._on_trial(t.spec.model, version):
                fire = False  # the canary judges a candidate against production
                logger.info(
                    "drift: %s at %s: %s is a candidate beside production; no drift event",
                    module,
                    site,
                    version,
                )
            if fire and (hold := self._hold(t, version)) is not None:
                fire = False
                t.latch.release(site)  # armed: it fires once the hold lifts
                self._quiet.warning(
                    "drift: %s at %s: no drift event: %s",
                    module,
                    site,
                    hold,
                    key=f"{module}@{site}: {hold}",
                )
            drifting = t.latch.drifting(site)
            out.append(
                (
                    DriftScore(
                        module,
                        site,
                        version,
                        drift.statistic,
                        score,
                        samples,
                        drift.threshold,
                        drifting,
                        None if scored else reason,
                    ),
                    fire,
                )
            )
        return out

    def _reference(
        self, model: str, version: str, now: float
    ) -> tuple[DriftReference | None, str | None]:
        cached = self._references.get((model, version))
        if cached is not None and (cached[1] is not None or now - cached[0] < 30.0):
            return cached[1], cached[2] or None
        try:
            found = self._registry.get(model, version)
        except Exception as exc:  # not registered (yet): asked again in 30 s
            reason = f"no reference for {model}@{version}: {exc}"
            self._references[(model, version)] = (now, None, reason)
            self._quiet.warning("drift: %s", reason)
            return None, reason
        metric = (found.metric.value, found.metric.mode) if found.metric is not None else None
        reference = DriftReference.from_version(found.lineage.extra, metric)
        self._references[(model, version)] = (now, reference, "")
        return reference, None

    def _hold(self, t: _Tracked, serving: str) -> str | None:
        """Why ``t``'s event at a site ``serving`` must wait (:func:`drift_hold`)."""
        if self._candidates is None:
            return None
        try:
            versions = self._candidates.versions(t.spec.model)
        except Exception:  # an unknown model: nothing holds
            return None
        stages = ((v.version, str(v.stage)) for v in versions)
        return drift_hold(stages, t.drift.max_rollbacks, serving=serving)

    def _on_trial(self, model: str, version: str) -> bool:
        """Whether ``version`` is a candidate while another version is in production."""
        try:
            found = self._registry.get(model, version)
            if found.stage != "candidate":
                return False
            production = self._registry.get(model, "production")
        except Exception:  # no production version: the candidate serves as the module
            return False
        return production.version != found.version

    def _fire(self, t: _Tracked, score: DriftScore, now: float) -> dict[str, Any]:
        event = {
            "module": t.spec.name,
            "model": t.spec.model,
            "version": score.version,
            "site": score.site,
            "statistic": score.statistic,
            "score": round(score.score or 0.0, 4),
            "threshold": t.drift.threshold,
            "samples": score.samples,
            "window_s": t.drift.window_s,
            "ts": now,
        }
        topic = self.event_topic(t.spec.name)
        try:
            self._bus.publish(topic, json.dumps(event).encode(), qos=1)
        except Exception as exc:  # the site stays fired: the bus resends QoS 1 after a reconnect
            logger.error(
                "drift: %s at %s: the drift event to %s failed: %s",
                t.spec.name,
                score.site,
                topic,
                exc,
            )
        else:
            self.fired += 1
            logger.warning(
                "drift: %s at %s (%s) scores %.3g >= %g over %d samples; event on %s",
                t.spec.name,
                score.site,
                score.version,
                score.score or 0.0,
                t.drift.threshold,
                score.samples,
                topic,
            )
        return event

    def describe(self) -> list[dict[str, Any]]:
        """The scores as JSON-ready dicts (the dashboard's ``drift`` list)."""
        return [s.to_dict() for s in self.scores()]
