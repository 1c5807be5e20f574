"""The control plane's fresh data: agents' sampled inputs and their labels into the store.

:class:`FreshDataService` follows every agent's sample uploads
(``{p}/agents/+/samples/+``, :class:`~edge_agent.protocol.SampleUpload` frames)
and, for each tracked module with a ``drift.labels`` topic, that topic with
``{site}`` as ``+`` (JSON ``{"site", "ts", "values"}``, ``ts`` the frame's
``source_ts``), and writes both to :class:`~mesh.models._fresh_data.FreshData`,
which joins them. The edge bus's dispatcher thread only queues each message
(a bounded queue: past it a message is dropped and counted); one thread,
``mesh-fresh-data``, parses and writes them. Bad messages are dropped with one
log line per kind of fault (:class:`~mesh.core._log_repeats.RepeatLog`) and counted.

:meth:`FreshDataService.track` turns sampling on (through the installer's
desired states) for a module with a drift check or a canary, or with an explicit
policy. Counts go to ``/metrics``, read at scrape time:
``mesh_fresh_samples_total{module}`` (stored since start),
``mesh_fresh_labelled{module}`` (labelled samples in the store now) and
``mesh_fresh_dropped_total{module,reason}`` (``budget``: what the agents' upload
budgets dropped, as they last reported; ``store``: the oldest rows past the
store's bound; ``queue``; ``invalid``).

Example:
    >>> store = FreshData.open(settings)                                   # doctest: +SKIP
    >>> service = FreshDataService(edge, store, installer=installer)       # doctest: +SKIP
    >>> service.start().track(spec, sites={"cam-1": "j1"})                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from edge_agent.protocol import (
    ProtocolError,
    SampleUpload,
    SamplingPolicy,
    Topics,
    decode_frame,
    parse_header,
)
from mesh.control._live_error import parse_label
from mesh.core._log_repeats import RepeatLog
from mesh.core._metrics import MetricsRegistry
from mesh.models._fresh_data import FreshData, InvalidSampleError
from mesh.sdk._specs import ModuleSpec

__all__ = ["FreshDataService", "start_fresh_data"]

logger = logging.getLogger(__name__)

#: Messages waiting for the writer thread, at most.
_QUEUE_MAX = 4096
#: The largest sample frame accepted.
_MAX_SAMPLE_BYTES = 8 * 1024 * 1024


class _Bus(Protocol):
    """The edge bus's part used here."""

    @property
    def prefix(self) -> str:
        """The contract's topic prefix."""
        ...

    def subscribe(self, pattern: str, handler: Callable[[str, bytes], None]) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each matching message; returns the undo."""
        ...


class _Sampling(Protocol):
    """What turns agents' sampling on (``EdgeInstaller.set_sampling``)."""

    def set_sampling(self, module: str, policy: SamplingPolicy | None) -> list[str]:
        """Set the module's policy on every agent holding it."""
        ...


@dataclass(frozen=True, slots=True)
class _Tracked:
    spec: ModuleSpec
    sites: Mapping[str, str] | None
    unsubscribe: Callable[[], None] | None


class FreshDataService:
    """Agents' samples and the modules' labels into the fresh-data store.

    Args:
        edge: the edge bus (its dispatcher thread calls the handlers).
        store: the fresh-data store.
        installer: turns sampling on in agents' desired states (None: never).
        policy: the policy a tracked module gets unless its ``track`` names one.
        metrics: where the counts are exposed (None: not exposed).
    """

    def __init__(
        self,
        edge: _Bus,
        store: FreshData,
        *,
        installer: _Sampling | None = None,
        policy: SamplingPolicy | None = None,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        """Nothing subscribed until :meth:`start`."""
        self._edge = edge
        self.store = store
        self._installer = installer
        self._policy = policy or SamplingPolicy()
        self._topics = Topics(edge.prefix)
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(_QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._quiet = RepeatLog(logger, every_s=60.0)
        self._stored: dict[str, int] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        self._budget: dict[tuple[str, str], int] = {}  # (module, agent) -> dropped, last said
        self._syncs: dict[str, threading.Event] = {}
        if metrics is not None:
            self._expose(metrics)

    def start(self) -> FreshDataService:
        """Follow the agents' sample uploads; start the writer thread."""
        self._thread = threading.Thread(target=self._loop, name="mesh-fresh-data", daemon=True)
        self._thread.start()
        self._unsubscribe = self._edge.subscribe(self._topics.all_samples(), self._on_sample)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following; write what is queued; end the thread. Idempotent."""
        undo, self._unsubscribe = self._unsubscribe, None
        if undo is not None:
            undo()
        for module in list(self._tracked):
            self.untrack(module)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def track(
        self,
        spec: ModuleSpec,
        *,
        sites: Mapping[str, str] | None = None,
        policy: SamplingPolicy | None = None,
    ) -> None:
        """Keep ``spec``'s samples and labels; turn its agents' sampling on.

        Sampling is turned on with ``policy`` when given, else with the service's
        default when the module has a drift check or a canary. Labels are read
        from ``spec.drift.labels`` when set. Tracking a module again replaces
        what was tracked.

        Args:
            spec: the module.
            sites: agent id -> site; a sample whose agent is listed is stored under
                that site, whatever it says (one that is not listed is dropped).
                None: the site the sample names.
            policy: the sampling policy (None: the default, if sampled at all).
        """
        self.untrack(spec.name)
        labels = spec.drift.labels if spec.drift is not None else None
        undo = None
        if labels is not None:
            pattern = labels.replace("{site}", "+")
            undo = self._edge.subscribe(
                pattern, lambda topic, payload: self._put("label", spec.name, payload)
            )
        with self._lock:
            self._tracked[spec.name] = _Tracked(spec, dict(sites) if sites else None, undo)
        wanted = policy or (
            self._policy if spec.drift is not None or spec.canary is not None else None
        )
        if wanted is not None and self._installer is not None:
            self._installer.set_sampling(spec.name, wanted)
        logger.info(
            "fresh data of %s: tracked (labels %s, sampling %s)",
            spec.name,
            labels or "none",
            f"{wanted.samples_per_min}/min" if wanted else "off",
        )

    def untrack(self, module: str) -> None:
        """Stop keeping ``module``'s samples and labels (its store stays)."""
        with self._lock:
            tracked = self._tracked.pop(module, None)
        if tracked is not None and tracked.unsubscribe is not None:
            tracked.unsubscribe()

    def tracked(self) -> list[str]:
        """The tracked modules, sorted."""
        with self._lock:
            return sorted(self._tracked)

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued message is written (tests and shutdown)."""
        done = threading.Event()
        key = str(id(done))
        with self._lock:
            self._syncs[key] = done
        try:
            self._queue.put(("sync", key, b""), timeout=timeout_s)
            return done.wait(timeout_s)
        except queue.Full:
            return False
        finally:
            with self._lock:
                self._syncs.pop(key, None)

    # ------------------------------------------------------------------ messages

    def _on_sample(self, topic: str, payload: bytes) -> None:
        """On the dispatcher thread: queue it."""
        self._put("sample", topic, payload)

    def _put(self, kind: str, key: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((kind, key, payload))
        except queue.Full:
            module = key if kind == "label" else key.rsplit("/", 1)[-1]
            self._count(module, "queue")
            self._quiet.warning("fresh data: the writer is behind; a %s was dropped", kind)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, key, payload = item
            try:
                if kind == "sample":
                    self._sample(key, payload)
                elif kind == "label":
                    self._label(key, payload)
                else:
                    with self._lock:
                        synced = self._syncs.get(key)
                    if synced is not None:
                        synced.set()
            except Exception as exc:  # the writer outlives any message
                self._quiet.exception("fresh data: a %s failed", kind, exc=exc)

    def _sample(self, topic: str, payload: bytes) -> None:
        rest = topic[len(self._topics.prefix) + 1 :].split("/")
        if len(rest) != 4:
            return  # the subscription's filter lets no other topic through
        agent, module = rest[1], rest[3]
        with self._lock:
            tracked = self._tracked.get(module)
        if tracked is None:
            return  # sampled for someone else (or before a restart): not ours to keep
        try:
            header, tensors = decode_frame(payload, max_bytes=_MAX_SAMPLE_BYTES)
            upload = parse_header(header, SampleUpload)
            if (upload.agent, upload.module) != (agent, module):
                raise InvalidSampleError(
                    f"header names agent {upload.agent!r} and module {upload.module!r}, "
                    f"the topic {agent!r} and {module!r}"
                )
            site = upload.site
            if tracked.sites is not None:
                if agent not in tracked.sites:
                    raise InvalidSampleError(f"agent {agent!r} is not one of the module's")
                site = tracked.sites[agent]
            self.store.add_sample(module, site, upload.source_ts, upload.version, tensors)
        except (ProtocolError, InvalidSampleError) as exc:
            self._count(module, "invalid")
            self._quiet.warning(
                "fresh data of %s: a sample from %s refused: %s", module, agent, exc
            )
            return
        with self._lock:
            self._stored[module] = self._stored.get(module, 0) + 1
            self._budget[(module, agent)] = upload.dropped

    def _label(self, module: str, payload: bytes) -> None:
        try:
            label = parse_label(payload)
            self.store.add_label(module, label.site, label.ts, label.values)
        except ValueError as exc:  # InvalidSampleError is one
            self._count(module, "invalid")
            self._quiet.warning("fresh data of %s: a label refused: %s", module, exc)

    def _count(self, module: str, reason: str) -> None:
        with self._lock:
            self._dropped[(module, reason)] = self._dropped.get((module, reason), 0) + 1

    # ------------------------------------------------------------------ metrics

    def counts(self) -> dict[str, dict[str, int]]:
        """Per module: ``stored`` since start and ``dropped_<reason>`` counts."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for module, n in self._stored.items():
                out.setdefault(module, {})["stored"] = n
            for (module, reason), n in self._dropped.items():
                out.setdefault(module, {})[f"dropped_{reason}"] = n
            for (module, _), n in self._budget.items():
                entry = out.setdefault(module, {})
                entry["dropped_budget"] = entry.get("dropped_budget", 0) + n
        for module in self.tracked():
            stats = self.store.stats(module)
            entry = out.setdefault(module, {})
            entry["dropped_store"] = stats.samples_dropped
            entry["labelled"] = stats.labelled
        return out

    def _expose(self, metrics: MetricsRegistry) -> None:
        metrics.gauge_callback(
            "mesh_fresh_samples_total",
            "Sampled pipeline inputs stored per module since the control plane started.",
            ("module",),
            lambda: [((m,), float(c.get("stored", 0))) for m, c in self.counts().items()],
        )
        metrics.gauge_callback(
            "mesh_fresh_labelled",
            "Labelled samples per module in the fresh-data store now.",
            ("module",),
            lambda: [
                ((m,), float(c["labelled"])) for m, c in self.counts().items() if "labelled" in c
            ],
        )
        metrics.gauge_callback(
            "mesh_fresh_dropped_total",
            "Samples dropped per module: by agents' upload budgets, the store's bound, "
            "the writer's queue, or as invalid.",
            ("module", "reason"),
            lambda: [
                ((m, k.removeprefix("dropped_")), float(n))
                for m, c in self.counts().items()
                for k, n in c.items()
                if k.startswith("dropped_")
            ],
        )


def start_fresh_data(
    store: FreshData,
    edge: _Bus,
    installer: _Sampling | None,
    metrics: MetricsRegistry | None,
    undo: list[tuple[str, Callable[[], object]]],
) -> FreshDataService:
    """Start the service on ``store``; its stop and the store's close go on ``undo``."""
    undo.append(("fresh data store", store.close))
    service = FreshDataService(edge, store, installer=installer, metrics=metrics).start()
    undo.append(("fresh data", service.stop))
    return service
