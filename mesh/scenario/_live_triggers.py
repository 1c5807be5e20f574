"""A scenario's timed and chained triggers, fired during its live phase.

The start triggers (no ``at_s`` past 0, no ``every_s``, no ``after``) run
before training (:mod:`mesh.scenario._models_stage`); the rest become
:class:`~mesh.sdk._triggers.TriggerSpec` s for a
:class:`~mesh.compute._scheduler.TriggerEngine` whose clock is the live loop's
simulated time, stepped on its own thread until the loop ends. A chained
trigger (``after: <trigger>``) fires when a run of that trigger's function
finishes, with no argument added (a scenario's functions take only their
``args``). A topic trigger (``topic: <pattern>``) fires on the messages there
(through ``subscribe``, the control plane's bus), debounced in simulated
seconds, the message passed as ``message`` (e.g. a retraining function on
``lifecycle/drift/<module>``). Runs still going when the live phase ends
get ``drain_s`` to finish (a chained one may start meanwhile), then are
cancelled: none outlives the mesh it runs on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mesh.compute._runner import Runner
from mesh.compute._scheduler import StartedRun, TriggerEngine
from mesh.scenario._decls import TriggerDecl
from mesh.sdk._triggers import TriggerSpec

__all__ = ["LiveTriggers", "is_start_trigger"]

#: ``(pattern, handler(topic, payload)) -> unsubscribe``: the bus, as topic triggers need it.
Subscribe = Callable[[str, Callable[[str, bytes], None]], Callable[[], None]]

logger = logging.getLogger(__name__)


def is_start_trigger(decl: TriggerDecl) -> bool:
    """Whether ``decl`` runs once before training rather than in the live phase."""
    return decl.after is None and decl.topic is None and not decl.at_s and decl.every_s is None


class _SimClock:
    def __init__(self, sim_time_at: Callable[[float], float]) -> None:
        self._sim_time_at = sim_time_at

    def now(self) -> float:
        return self._sim_time_at(time.time())


class _Tracked:
    """The runner, keeping the runs it started (to drain and cancel them at the end)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self.runs: list[StartedRun] = []

    def fire(self, name: str, kwargs: Any, *, trigger: str) -> StartedRun:
        run: StartedRun = self._runner.fire(name, kwargs, trigger=trigger)
        self.runs = [r for r in self.runs if not r.done()]
        self.runs.append(run)
        return run

    def running(self) -> list[StartedRun]:
        return [r for r in self.runs if not r.done()]


class LiveTriggers:
    """The live phase's trigger engine on simulated time; :meth:`stop` reports its counts."""

    def __init__(
        self,
        decls: Iterable[TriggerDecl],
        runner: Runner,
        sim_time_at: Callable[[float], float],
        substitutions: dict[str, str],
        subscribe: Subscribe | None = None,
    ) -> None:
        """Fire ``decls`` (all but start triggers) through ``runner`` at simulated times.

        ``subscribe`` ``(pattern, handler) -> unsubscribe`` feeds the topic triggers;
        without it they never fire.
        """
        every = list(decls)
        self._subscribe = subscribe
        self._unsubscribe: list[Callable[[], None]] = []
        by_name = {d.name: d for d in every}
        self.specs = [_spec(d, by_name, substitutions) for d in every if not is_start_trigger(d)]
        self._runs = _Tracked(runner)
        self.engine = TriggerEngine(self._runs, clock=_SimClock(sim_time_at))
        self.engine.set_triggers(self.specs)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.engine.run,
            args=(self._stop,),
            kwargs={"period_s": 0.2},
            daemon=True,
            name="mesh-live-triggers",
        )

    def start(self) -> LiveTriggers:
        """Start stepping (the clock reads 0 until the live loop runs)."""
        if self._subscribe is not None:
            for pattern in sorted(self.engine.topics()):
                self._unsubscribe.append(self._subscribe(pattern, self.engine.message))
        if self.specs:
            self._thread.start()
        return self

    def stop(self, *, drain_s: float = 60.0) -> list[str]:
        """Stop firing; one line per trigger: runs started, firings missed or skipped.

        Runs still going get ``drain_s`` (wall seconds) to finish, the engine
        still stepping (their chains fire), then the rest are cancelled.
        """
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        deadline = time.monotonic() + drain_s
        while self._thread.is_alive() and self._runs.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        lines = []
        late = self._runs.running()
        for run in late:
            run.cancel()
        if late:
            names = ", ".join(sorted({r.function for r in late}))
            lines.append(f"{len(late)} trigger run(s) still running at the end, cancelled: {names}")
        for spec in self.specs:
            counts = self.engine.counts(spec.name)
            lines.append(
                f"trigger {spec.name} ({spec.describe()}): {counts['fired']} run(s), "
                f"{counts['missed']} missed, {counts['skipped']} skipped"
            )
        return lines


def _substitute(value: Any, substitutions: dict[str, str]) -> Any:
    """``{out}`` and the simulation's names in a string argument (as the start triggers')."""
    if isinstance(value, str):
        for key, text in substitutions.items():
            value = value.replace(f"{{{key}}}", text)
    return value


def _spec(
    decl: TriggerDecl, by_name: dict[str, TriggerDecl], substitutions: dict[str, str]
) -> TriggerSpec:
    function = decl.function.partition(":")[2]
    args = {k: _substitute(v, substitutions) for k, v in decl.args.items()}
    if decl.topic is not None:
        return TriggerSpec(
            name=decl.name,
            function=function,
            topic=decl.topic,
            debounce_s=decl.debounce_s,
            pass_as="message",
            args=args,
        )
    if decl.after is not None:
        upstream = by_name.get(decl.after)
        after = upstream.function.partition(":")[2] if upstream is not None else decl.after
        return TriggerSpec(
            name=decl.name, function=function, after=after, on="finished", pass_as="", args=args
        )
    return TriggerSpec(
        name=decl.name,
        function=function,
        every_s=decl.every_s,
        at_s=decl.at_s,
        args=args,
    )
