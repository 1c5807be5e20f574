"""Local pipelines: source -> module (local or offloaded, per its route) -> events.

The outputs become events, published through the outbox. Each input that ran
is then offered to the agent's sampler (:mod:`edge_agent._samples`), which keeps
and uploads some for retraining when the module's desired state asks for it.

Each pipeline is one thread. The route is read for every sample, so a route
switch (a new route epoch in the desired state) applies to the next sample
without restarting the pipeline: the sample in flight finishes where it started
(make-before-break, as the control plane switches it).

A ``remote`` route hands the source itself to a replica, which subscribes to
it and publishes the events. The route's ``since_ts`` splits the frames by
capture time: frames from before it still run on the previous route here;
later ones are held (the newest 128, in a ring) and not run. When the route
comes back (local or offload), held frames captured at or after the new
route's ``since_ts`` run first, and frames from before it are left to the
replica, which ran them: a switch either way loses none and runs none twice.
A replica can die, though (its node gone): while remote the pipeline follows
its own event topic, where the replica's answers appear, and frames it left
unanswered (once it had :data:`_ANSWER_GRACE_S` to answer) run here, late but
not lost. Moving from one replica to another does the same at once, and a
frame the replica got past without answering (it answers in order) runs here
while the route stays remote.

A sample that fails is retried once on the other side, so none is lost to a
switch: a failed offload runs locally when the module is installed here and
the route allows it, or on the new route when the route switched meanwhile
(e.g. to a new replica); a failed local run goes to the new route when the
route switched to offload meanwhile (e.g. the module became remote-only).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ._runtime import JobResult
from ._sources import Sample, Source
from ._supervisor import Supervisor
from .protocol import Event, PipelineSpec, Route, Tensor, json_tensor

__all__ = ["Pipeline", "PipelineHost", "SampleSink"]

logger = logging.getLogger(__name__)

#: How long a pipeline waits for its module on this device.
_LOCAL_TIMEOUT_S = 30.0

#: After a remote route ends, how long the replica has to answer the frames it
#: was given before the agent runs the unanswered ones itself.
_ANSWER_GRACE_S = 2.0

#: Frames held while the source is remote, to run when the route comes back.
_HELD_FRAMES = 128  # a minute at 2 frames a second


class SampleSink(Protocol):
    """Where a pipeline offers each input its module ran on (the agent's ``Sampler``)."""

    def offer(self, module: str, version: str, source_ts: float, tensors: Sequence[Tensor]) -> None:
        """Hold (and maybe upload) one input; never blocks on the network."""
        ...


class PipelineHost(Protocol):
    """What a pipeline needs from the agent."""

    agent_id: str
    site: str

    def route_for(self, module: str) -> Route | None:
        """The module's current route, or None if the module is no longer desired."""
        ...

    def run_local(self, module: str, tensors: Sequence[Tensor], timeout_s: float) -> JobResult:
        """Run the module on this device and wait for the result."""
        ...

    def run_offload(self, module: str, route: Route, tensors: Sequence[Tensor]) -> JobResult:
        """Run the module on ``route.target`` and wait for the result."""
        ...

    def has_local(self, module: str) -> bool:
        """Whether the module is loaded on this device."""
        ...

    def emit(self, topic: str, make_payload: Callable[[int], bytes], qos: int) -> int:
        """Put an event in the outbox; ``make_payload(seq)`` builds it. Returns the seq."""
        ...

    def watch(self, topic: str, handler: Callable[[bytes], None]) -> Callable[[], None]:
        """Pass each message on ``topic`` to ``handler``; returns the undo."""
        ...


class Pipeline:
    """Runs one :class:`PipelineSpec` on its own thread."""

    def __init__(
        self,
        spec: PipelineSpec,
        source: Source,
        host: PipelineHost,
        topic: str,
        *,
        supervisor: Supervisor | None = None,
        clock: Callable[[], float] = time.time,
        sampler: SampleSink | None = None,
    ) -> None:
        """Events go to ``topic`` (``{p}/events/{site}/{stream}``).

        The thread runs under ``supervisor`` (its own if None): a source that
        fails is asked for samples again after a backoff, not abandoned.
        ``clock`` is the control plane's time as this device reads it (the agent
        corrects its own by the offset it estimates): a route's split time is in
        that clock, so the replica's grace period is timed in it too.
        ``sampler`` is offered each input that ran, after its event is out.
        """
        self._sampler = sampler
        self._supervisor = supervisor or Supervisor()
        self._clock = clock
        self.spec = spec
        self._source = source
        self._host = host
        self._topic = topic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self.failed = 0
        self.offloaded = 0
        self.retried = 0
        self.handed_over = 0
        self._held: collections.deque[Sample] = collections.deque(maxlen=_HELD_FRAMES)
        # Frames captured before this ran on the replica the source came back from.
        self._remote_until: float | None = None
        self._last: Route | None = None
        # While remote: capture times the replica answered (its events on our topic).
        self._answered: set[float] = set()
        self._answered_lock = threading.Lock()
        self._unwatch: Callable[[], None] | None = None

    def start(self) -> None:
        """Start the source and the thread."""
        self._source.start()
        self._thread = self._supervisor.spawn(f"pipeline-{self.spec.name}", self._run)
        logger.info(
            "pipeline %s: started (%s source -> module %s -> stream %s)",
            self.spec.name,
            self.spec.source.kind,
            self.spec.module,
            self.spec.stream_name,
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the sample in progress."""
        self._stop.set()
        self._source.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self._source.get(0.25)  # if it raises, the supervisor tries again
            if sample is None:
                if self._source.exhausted:
                    logger.info("pipeline %s: source exhausted", self.spec.name)
                    return
                continue
            try:
                self._process(sample)
            except Exception:
                self.failed += 1
                logger.exception("pipeline %s: sample failed", self.spec.name)
            finally:
                # Its event is out (or in the outbox), or a replica holds the frame.
                sample.done()

    def _run_on(self, route: Route, sample: Sample, timeout_s: float) -> tuple[JobResult, str]:
        module = self.spec.module
        if route.mode == "offload" and route.target:
            return self._host.run_offload(module, route, sample.tensors), f"offload:{route.target}"
        return self._host.run_local(module, sample.tensors, timeout_s), "local"

    def _other_side(self, tried: Route) -> Route | None:
        """Where a sample that failed on ``tried`` goes next (None: nowhere)."""
        now = self._host.route_for(self.spec.module)
        moved = now is not None and (now.mode, now.target) != (tried.mode, tried.target)
        if now is not None and moved and now.mode != "remote":
            return now  # switched while the sample was in flight: follow the switch
        offloaded = tried.mode == "offload" and tried.fallback_local
        if offloaded and self._host.has_local(self.spec.module):
            return Route(mode="local", epoch=tried.epoch)
        return None

    def _route_for(self, sample: Sample) -> Route | None:
        """The route this sample runs on (None: not here, it is the replica's or undesired)."""
        route = self._host.route_for(self.spec.module)
        if route is None:
            return None
        last, self._last = self._last, route
        if last is None or (last.epoch, last.mode) != (route.epoch, route.mode):
            logger.info(
                "pipeline %s: route %s%s (epoch %d%s)",
                self.spec.name,
                route.mode,
                f" to {route.target}" if route.target else "",
                route.epoch,
                f", frames from {route.since_ts:.3f}" if route.since_ts is not None else "",
            )
        at = sample.split_ts
        if route.mode == "remote":
            if last is None or last.mode != "remote":
                self._remote_until = None
                self._watch()
            elif last.epoch != route.epoch:
                # To another replica from since_ts: what the last one left unanswered is ours.
                self._run_unanswered(route, before=route.since_ts)
            if route.since_ts is None or at >= route.since_ts:
                self._held.append(sample)
                self.handed_over += 1
                self._run_skipped(route)
                return None
            # Captured before the switch: it belongs to the route before.
            return self._here(route)
        if last is not None and last.mode == "remote":
            # Back from remote: held frames from since_ts on are ours; earlier ones
            # the replica's, unless it does not answer them (its node gone): those
            # wait a grace period, then run here, late but not lost.
            since = route.since_ts if route.since_ts is not None else at
            self._remote_until = since
            ours = [s for s in self._held if s.split_ts >= since]
            self._held = collections.deque(
                (s for s in self._held if s.split_ts < since), maxlen=self._held.maxlen
            )
            for s in ours:
                self._process_on(s, route)
        if self._remote_until is not None:
            if at < self._remote_until:
                self._held.append(sample)  # in flight at the switch: the replica's too
                return None
            if self._clock() >= self._remote_until + _ANSWER_GRACE_S:
                self._remote_until = None
                self._run_unanswered(route, before=None)
                self._unwatch_events()
        return route

    def _here(self, route: Route) -> Route:
        """Where this device runs a frame of a remote route itself: locally, else offloaded."""
        if self._host.has_local(self.spec.module):
            return Route(mode="local", epoch=route.epoch)
        return Route(mode="offload", epoch=route.epoch, target=route.target)

    def _watch(self) -> None:
        """Follow the replica's answers on the pipeline's own event topic."""
        if self._unwatch is None:
            with self._answered_lock:
                self._answered.clear()
            try:
                self._unwatch = self._host.watch(self._topic, self._on_answer)
            except Exception:
                logger.exception("pipeline %s: cannot follow the replica's events", self.spec.name)

    def _unwatch_events(self) -> None:
        undo, self._unwatch = self._unwatch, None
        if undo is not None:
            try:
                undo()
            except Exception:
                logger.exception("pipeline %s: cannot stop following events", self.spec.name)

    def _on_answer(self, payload: bytes) -> None:
        """An event on our topic (network thread): note the frames a replica answered."""
        try:
            body = json.loads(payload)
            route, captured = body.get("route", ""), body.get("source_ts")
        except (ValueError, AttributeError):
            return
        if isinstance(route, str) and route.startswith("remote:") and captured is not None:
            with self._answered_lock:
                self._answered.add(float(captured))

    def _run_skipped(self, route: Route) -> None:
        """While remote: run the held frames the replica got past without answering.

        Its worker answers in order, so a frame older than one it answered either
        has its answer or failed there (a full queue, a replica stopping). With
        no answers seen (the replica gone, or this device cut off) nothing runs:
        the control plane moves the route, and :meth:`_run_unanswered` follows.
        """
        with self._answered_lock:
            if not self._answered:
                return
            latest = max(self._answered)
            skipped = [
                s for s in self._held if s.split_ts < latest and s.split_ts not in self._answered
            ]
            if len(self._answered) > 4 * (self._held.maxlen or 1) and self._held:
                oldest = min(s.split_ts for s in self._held)
                self._answered = {t for t in self._answered if t >= oldest}
        if not skipped:
            return
        gone = {id(s) for s in skipped}
        self._held = collections.deque(
            (s for s in self._held if id(s) not in gone), maxlen=self._held.maxlen
        )
        logger.warning(
            "pipeline %s: the replica skipped %d frame(s); they run here, late",
            self.spec.name,
            len(skipped),
        )
        here = self._here(route)
        for s in skipped:
            self._process_on(s, here)

    def _run_unanswered(self, route: Route, before: float | None) -> None:
        """Run the held frames no replica answered: all, or those captured before ``before``."""
        with self._answered_lock:
            answered = set(self._answered)
        mine = [
            s
            for s in self._held
            if s.split_ts not in answered and (before is None or s.split_ts < before)
        ]
        keep = [] if before is None else [s for s in self._held if s.split_ts >= before]
        self._held = collections.deque(keep, maxlen=self._held.maxlen)
        late = sum(1 for s in mine if route.since_ts is None or s.split_ts < route.since_ts)
        if late:
            logger.warning(
                "pipeline %s: %d held frame(s) the replica did not answer run here, late",
                self.spec.name,
                late,
            )
        here = route if route.mode != "remote" else self._here(route)
        for s in mine:
            self._process_on(s, here)

    def _process(self, sample: Sample) -> None:
        route = self._route_for(sample)
        if route is not None:
            self._process_on(sample, route)

    def _process_on(self, sample: Sample, route: Route) -> None:
        name, module = self.spec.name, self.spec.module
        started = time.perf_counter()
        result, where = self._run_on(route, sample, _LOCAL_TIMEOUT_S)
        if result.error is not None:
            retry = self._other_side(route)
            if retry is not None:
                # A fallback to local keeps within the offload's time budget.
                timeout_s = route.timeout_ms / 1e3 if route.mode == "offload" else _LOCAL_TIMEOUT_S
                self.retried += 1
                failed_where, reason = where, result.error.reason
                result, where = self._run_on(retry, sample, timeout_s)
                logger.warning(
                    "pipeline %s: %s of %s failed (%s); retried %s: %s",
                    name,
                    failed_where,
                    module,
                    reason,
                    where,
                    "failed" if result.error else "ok",
                )
        if result.error is not None or result.outputs is None:
            self.failed += 1
            logger.warning(
                "pipeline %s: module %s (%s) failed: %s",
                name,
                module,
                where,
                result.error.reason if result.error else "no outputs",
            )
            return
        if where != "local":
            self.offloaded += 1
        event = Event(
            agent=self._host.agent_id,
            site=self._host.site,
            stream=self.spec.stream_name,
            pipeline=name,
            module=module,
            version=result.version,
            route=where,
            source_ts=sample.split_ts,  # when the camera took it, where the frame says
            # From the sample's arrival, not the module's start: time spent waiting
            # for a busy device's CPU is part of what the pipeline's user sees.
            latency_ms=round(max(time.perf_counter() - started, time.time() - sample.ts) * 1e3, 3),
            outputs={t.name: json_tensor(t) for t in result.outputs},
        )
        body = event.model_dump(mode="json", exclude_none=True)
        if self.spec.qos >= 1:  # kept until the control plane confirms it (edge_agent._confirm)
            body["ack"] = True

        def make_payload(seq: int) -> bytes:
            body["seq"] = seq
            return json.dumps(body, separators=(",", ":")).encode()

        self._host.emit(self._topic, make_payload, self.spec.qos)
        self.processed += 1
        if self._sampler is not None:
            try:
                self._sampler.offer(module, result.version or "", sample.split_ts, sample.tensors)
            except Exception:  # sampling is for later: it never fails the pipeline
                logger.exception("pipeline %s: sampling an input of %s failed", name, module)
