"""The trigger engine: fires schedules, debounced MQTT events, new files and chains.

One loop owns every trigger's state; :meth:`TriggerEngine.step` is one bounded
pass of it (messages handed in, schedules due, bursts gone quiet, files settled
(:class:`~mesh.compute._file_watch.FileWatch`), runs that ended and the chains
they fire), :meth:`TriggerEngine.run` repeats it until a
stop event. Time comes from an injected :class:`~mesh.compute._triggers.Clock`,
so tests (and a scenario's simulated time) drive it without sleeping.
Messages arrive on the bus's thread and are only queued there
(:meth:`TriggerEngine.message`): a subscriber never blocks MQTT.

Chains fire on runs the engine started (with the upstream value itself) and
on runs recorded by others in the run store (``mesh invoke``: the value as
recorded, JSON, truncated past 2,000 characters).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.compute._file_watch import FileWatch
from mesh.compute._runs import RunRecord, RunStatus
from mesh.compute._triggers import (
    Clock,
    CronTimes,
    Debounce,
    FiringTimes,
    IntervalTimes,
    admit,
    schedule_decision,
)
from mesh.core._errors import MeshError
from mesh.core._topics import topic_matches
from mesh.sdk._triggers import TriggerSpec

__all__ = ["Firing", "RunHistory", "RunStarter", "StartedRun", "TriggerEngine"]

logger = logging.getLogger(__name__)

_MAX_QUEUED_MESSAGES = 10_000
_MAX_ACTIVE_PER_TRIGGER = 64
_SEEN_RUNS = 4_096
_HISTORY_LIMIT = 20


class StartedRun(Protocol):
    """A run the engine started (:class:`mesh.compute._runner.Run`)."""

    id: str
    function: str

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        ...

    def cancel(self) -> None:
        """Stop the work."""
        ...

    def result(self) -> Any:
        """The value; raises the run's error."""
        ...


class RunStarter(Protocol):
    """Starts a function for a trigger (:meth:`mesh.compute._runner.Runner.fire`)."""

    def fire(self, name: str, kwargs: Mapping[str, Any], *, trigger: str) -> StartedRun:
        """Start ``name(**kwargs)``, its run record naming ``trigger``."""
        ...


class RunHistory(Protocol):
    """Runs recorded by anyone (:class:`mesh.compute._runs.SQLiteStore`)."""

    def list_runs(
        self, *, function: str | None = None, trigger: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The newest runs first."""
        ...


@dataclass(frozen=True, slots=True)
class Firing:
    """One time a trigger fired: the run it started, or why none started."""

    trigger: str
    function: str
    at: float
    run_id: str | None = None
    skipped: str | None = None


@dataclass(slots=True)
class _State:
    spec: TriggerSpec
    cursor: float = 0.0
    times: FiringTimes | None = None
    watch: FileWatch | None = None
    debounce: Debounce | None = None
    active: list[StartedRun] = field(default_factory=list)
    fired: int = 0
    missed: int = 0
    skipped: int = 0
    last_fired_at: float | None = None


class TriggerEngine:
    """Every trigger's state and the loop that fires them.

    Example:
        >>> engine = TriggerEngine(runner, clock=WallClock(), history=store)  # doctest: +SKIP
        >>> engine.set_triggers(app.triggers.values())  # doctest: +SKIP
        >>> threading.Thread(target=engine.run, args=(stop,)).start()  # doctest: +SKIP
    """

    def __init__(
        self, starter: RunStarter, *, clock: Clock, history: RunHistory | None = None
    ) -> None:
        """Fire through ``starter`` at ``clock``'s times; chain on ``history``'s runs too."""
        self.clock = clock
        self._starter = starter
        self._history = history
        self._states: dict[str, _State] = {}
        self._messages: queue.Queue[tuple[float, str, bytes]] = queue.Queue(_MAX_QUEUED_MESSAGES)
        self._seen: deque[str] = deque(maxlen=_SEEN_RUNS)
        self._seen_set: set[str] = set()
        self._detached: list[StartedRun] = []
        self._since = clock.now()
        self.dropped_messages = 0
        self.firings: deque[Firing] = deque(maxlen=1_000)

    # -- what the engine runs ---------------------------------------------------

    def set_triggers(
        self, triggers: Iterable[TriggerSpec], starter: RunStarter | None = None
    ) -> None:
        """Run these triggers from now on; one kept by name (and spec) keeps its state.

        A new schedule starts after its last recorded firing (so a restart
        catches up by its ``missed`` policy), or from now when it never fired.
        """
        if starter is not None:
            self._starter = starter
        now = self.clock.now()
        states: dict[str, _State] = {}
        for spec in triggers:
            old = self._states.pop(spec.name, None)
            if old is not None and old.spec == spec:
                states[spec.name] = old
                continue
            state = _State(spec, cursor=now)
            if spec.schedule is not None:
                state.times = CronTimes(spec.schedule)
                # Cron times are wall times, as the run store's are.
                state.cursor = self._last_fired(spec.name) or now
            elif spec.every_s is not None or spec.at_s is not None:
                start = spec.at_s if spec.at_s is not None else now
                state.times = IntervalTimes(every_s=spec.every_s, start_s=start)
                state.cursor = min(now, start - 1e-9) if spec.at_s is not None else now
            if old is not None:
                state.cursor = old.cursor
            if spec.topic is not None:
                state.debounce = Debounce(spec.debounce_s)
            if spec.path is not None:
                state.watch = (
                    old.watch
                    if old is not None and old.watch is not None and old.spec.path == spec.path
                    else FileWatch(spec.path, settle_s=spec.debounce_s, now=now)
                )
            if old is not None:  # changed: its runs still count for concurrency
                state.active = old.active
            states[spec.name] = state
        for gone in self._states.values():  # their runs are still collected (and chain)
            self._detached.extend(gone.active)
        self._states = states

    def _last_fired(self, trigger: str) -> float | None:
        if self._history is None:
            return None
        try:
            runs = self._history.list_runs(trigger=trigger, limit=1)
        except MeshError as exc:
            logger.warning("trigger %s: cannot read its last firing: %s", trigger, exc)
            return None
        return runs[0].started_at if runs else None

    @property
    def triggers(self) -> list[TriggerSpec]:
        """The triggers the engine runs."""
        return [s.spec for s in self._states.values()]

    def topics(self) -> set[str]:
        """The MQTT topic patterns the engine's event triggers listen to."""
        return {s.spec.topic for s in self._states.values() if s.spec.topic is not None}

    def next_firing(self, trigger: str) -> float | None:
        """When a schedule fires next (epoch seconds); None for other triggers."""
        state = self._states[trigger]
        if state.times is None:
            return None
        now = self.clock.now()
        at = state.times.next_after(state.cursor)
        if at < now - state.spec.grace_s:  # missed already: the next one after now
            at = state.times.next_after(now)
        return at if at != math.inf else None

    def counts(self, trigger: str) -> dict[str, int]:
        """Firings that started a run, missed schedule firings, firings skipped."""
        state = self._states[trigger]
        return {"fired": state.fired, "missed": state.missed, "skipped": state.skipped}

    # -- input from other threads ----------------------------------------------

    def message(self, topic: str, payload: bytes) -> None:
        """Queue an MQTT message for the loop; never blocks (a full queue drops it)."""
        try:
            self._messages.put_nowait((self.clock.now(), topic, payload))
        except queue.Full:
            self.dropped_messages += 1

    # -- the loop ---------------------------------------------------------------

    def run(self, stop: threading.Event, *, period_s: float = 0.5) -> None:
        """Step every ``period_s`` (wall time) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # the loop never stops; the next step tries again
                logger.exception("trigger engine: a step failed")
            stop.wait(period_s)

    def step(self) -> list[Firing]:
        """One pass: messages, schedules, quiet bursts, ended runs and their chains."""
        now = self.clock.now()
        fired: list[Firing] = []
        self._take_messages()
        for state in list(self._states.values()):
            spec = state.spec
            if state.times is not None:
                decision = schedule_decision(
                    state.times,
                    cursor=state.cursor,
                    now=now,
                    grace_s=spec.grace_s,
                    missed=spec.missed,
                )
                state.cursor = decision.cursor
                if decision.missed:
                    state.missed += decision.missed
                    logger.warning(
                        "trigger %s: %d firing(s) of %r missed (%s)",
                        spec.name,
                        decision.missed,
                        spec.describe(),
                        "one run catches up" if decision.fire_at is not None else "skipped",
                    )
                if decision.fire_at is not None:
                    fired.append(self._fire(state, now, {}))
            elif state.watch is not None:
                for path in state.watch.scan(now):
                    fired.append(self._fire(state, now, _passed(spec, path)))
            elif state.debounce is not None:
                payload = state.debounce.due(now)
                if payload is not None:
                    fired.append(self._fire(state, now, _passed(spec, payload)))
        fired.extend(self._collect_ended(now))
        fired.extend(self._chain_recorded(now))
        self.firings.extend(fired)
        return fired

    def _take_messages(self) -> None:
        for _ in range(_MAX_QUEUED_MESSAGES):
            try:
                at, topic, payload = self._messages.get_nowait()
            except queue.Empty:
                return
            event = {"topic": topic, "payload": _decode(payload)}
            for state in self._states.values():
                pattern = state.spec.topic
                if pattern is not None and state.debounce and topic_matches(pattern, topic):
                    state.debounce.message(at, event)

    def _fire(self, state: _State, now: float, payload: Mapping[str, Any]) -> Firing:
        spec = state.spec
        running = sum(1 for r in state.active if not r.done())
        action = admit(spec.concurrency, running)
        if action == "start" and len(state.active) >= _MAX_ACTIVE_PER_TRIGGER:
            action = "skip"
        if action == "skip":
            state.skipped += 1
            logger.info("trigger %s: %d run(s) still running; firing skipped", spec.name, running)
            return Firing(spec.name, spec.function, now, skipped="a run still running")
        if action == "replace":
            for run in state.active:
                if not run.done():
                    logger.info(
                        "trigger %s: cancelling run %s to replace it", spec.name, run.id[:8]
                    )
                    run.cancel()
        try:
            run = self._starter.fire(spec.function, {**spec.args, **payload}, trigger=spec.name)
        except MeshError as exc:
            state.skipped += 1
            logger.error("trigger %s: cannot start %s: %s", spec.name, spec.function, exc)
            return Firing(spec.name, spec.function, now, skipped=str(exc))
        state.active.append(run)
        state.fired += 1
        state.last_fired_at = now
        self._remember(run.id)
        logger.info("trigger %s fired: run %s of %s", spec.name, run.id[:8], spec.function)
        return Firing(spec.name, spec.function, now, run_id=run.id)

    def _collect_ended(self, now: float) -> list[Firing]:
        # One done() per run: a run ending between two checks would be in neither
        # list, and its chains would never fire.
        ended, self._detached = _split_done(self._detached)
        for state in list(self._states.values()):
            done, state.active = _split_done(state.active)
            ended.extend(done)
        fired: list[Firing] = []
        for run in ended:
            try:  # result() also records how the run ended
                value, ok = run.result(), True
            except MeshError as exc:
                value, ok = f"{type(exc).__name__}: {exc}", False
            fired.extend(self._chain(run.function, ok, value, now))
        return fired

    def _chain(self, upstream: str, ok: bool, value: Any, now: float) -> list[Firing]:
        fired = []
        for state in list(self._states.values()):
            spec = state.spec
            if spec.after != upstream:
                continue
            if spec.on == "finished" or (spec.on == "success") == ok:
                fired.append(self._fire(state, now, _passed(spec, value)))
        return fired

    def _chain_recorded(self, now: float) -> list[Firing]:
        """Chains on runs others recorded (not started here) that ended since the start."""
        if self._history is None:
            return []
        upstreams = {s.spec.after for s in self._states.values() if s.spec.after is not None}
        fired: list[Firing] = []
        for upstream in sorted(upstreams):
            try:
                runs = self._history.list_runs(function=upstream, limit=_HISTORY_LIMIT)
            except MeshError as exc:
                logger.warning("trigger engine: cannot read runs of %s: %s", upstream, exc)
                continue
            for record in reversed(runs):
                if record.id in self._seen_set or not record.status.finished:
                    continue
                self._remember(record.id)
                if record.started_at < self._since:
                    continue
                ok = record.status is RunStatus.SUCCEEDED
                value = record.error if not ok else _decode((record.result_ref or "null").encode())
                fired.extend(self._chain(upstream, ok, value, now))
        return fired

    def _remember(self, run_id: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(run_id)
        self._seen_set.add(run_id)


def _passed(spec: TriggerSpec, value: Any) -> dict[str, Any]:
    """The keyword argument a firing's message or upstream value becomes, if any."""
    return {spec.argument: value} if spec.argument else {}


def _decode(payload: bytes) -> Any:
    """A message or recorded result as JSON when it parses, else as text."""
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


def _split_done(runs: list[StartedRun]) -> tuple[list[StartedRun], list[StartedRun]]:
    """``runs`` as (ended, still running), each asked once."""
    ended: list[StartedRun] = []
    running: list[StartedRun] = []
    for run in runs:
        (ended if run.done() else running).append(run)
    return ended, running
