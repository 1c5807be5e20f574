"""The control plane's triggers: deployed apps' triggers, run by one engine thread.

:class:`TriggerService` reads the deployed functions (`mesh deploy` records
them in the run store), loads each source file once, and hands its apps'
triggers to a :class:`~mesh.compute._scheduler.TriggerEngine` that starts runs
through a :class:`~mesh.compute._runner.Runner` on the control plane's backend
and records them in the same store. Event triggers subscribe on the edge bus:
its dispatcher thread only queues each message for the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mesh.compute._backend import ComputeBackend
from mesh.compute._runner import Runner
from mesh.compute._runs import Deployment, SQLiteStore
from mesh.compute._scheduler import TriggerEngine
from mesh.compute._streams import MessageBus
from mesh.compute._triggers import Clock
from mesh.core._errors import MeshError
from mesh.sdk._app import Mesh
from mesh.sdk._loader import load_apps
from mesh.sdk._triggers import TriggerSpec, check_triggers

__all__ = ["SystemClock", "TriggerService", "start_triggers"]

logger = logging.getLogger(__name__)


class SystemClock:
    """The wall clock, for the control plane's engine."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()


class TriggerService:
    """Deployed triggers, fired by an engine on the thread ``mesh-triggers``.

    Example:
        >>> service = TriggerService(store, backend, edge).start()  # doctest: +SKIP
        >>> service.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        store: SQLiteStore,
        backend: ComputeBackend,
        bus: MessageBus,
        *,
        clock: Clock | None = None,
        period_s: float = 0.5,
        reload_s: float = 2.0,
    ) -> None:
        """Fire the triggers deployed in ``store`` on ``backend``; events from ``bus``.

        ``clock`` is the wall clock unless a test (or a scenario) brings its own.
        """
        self.store = store
        self._backend = backend
        self._bus = bus
        self._period_s = period_s
        self._reload_s = reload_s
        self.engine = TriggerEngine(
            Runner([], backend=backend, store=store), clock=clock or SystemClock(), history=store
        )
        self._apps: dict[str, list[Mesh]] = {}
        self._deployed: tuple[tuple[str, str, float], ...] = ()
        self._subscriptions: dict[str, Callable[[], None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mesh-triggers", daemon=True)

    @property
    def topics(self) -> set[str]:
        """The topic patterns subscribed to (the broker acknowledged each)."""
        return set(self._subscriptions)

    def start(self) -> TriggerService:
        """Start the engine's thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and the subscriptions; runs under way go on."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for unsubscribe in self._subscriptions.values():
            unsubscribe()
        self._subscriptions.clear()

    def _loop(self) -> None:
        next_reload = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_reload:
                    next_reload = time.monotonic() + self._reload_s
                    self.reload()
                self.engine.step()
            except Exception:  # the loop never stops; the next pass tries again
                logger.exception("triggers: a pass failed")
            self._stop.wait(self._period_s)

    def reload(self) -> None:
        """Take up the deployed apps' triggers when the deployments changed."""
        deployments = self.store.list_deployments()
        key = tuple((d.function, d.source, d.deployed_at) for d in deployments)
        if key == self._deployed:
            return
        self._deployed = key
        sources = _sources(deployments)
        apps = [app for source in sources for app in self._load(source)]
        triggers: list[TriggerSpec] = []
        for source in sources:
            for app in self._apps.get(source, []):
                try:
                    check_triggers(app.triggers.values(), app.functions, source=source)
                except MeshError as exc:
                    logger.error("triggers: %s", exc)
                    continue
                triggers.extend(app.triggers.values())
        try:
            runner = Runner(apps, backend=self._backend, store=self.store)
        except MeshError as exc:
            logger.error("triggers: deployed apps conflict, triggers unchanged: %s", exc)
            return
        self.engine.set_triggers(triggers, runner)
        self._subscribe(self.engine.topics())
        logger.info(
            "triggers: %d deployed (%s)", len(triggers), ", ".join(t.name for t in triggers)
        )

    def _load(self, source: str) -> list[Mesh]:
        # Loaded once per process: a changed file takes effect at the next `mesh up`.
        if source not in self._apps:
            try:
                self._apps[source] = load_apps(source)
            except MeshError as exc:
                logger.error("triggers: cannot load %s: %s", source, exc)
                return []
        return self._apps[source]

    def _subscribe(self, topics: set[str]) -> None:
        for topic in set(self._subscriptions) - topics:
            self._subscriptions.pop(topic)()
        for topic in sorted(topics - set(self._subscriptions)):
            try:
                self._subscriptions[topic] = self._bus.subscribe(topic, self.engine.message)
            except MeshError as exc:
                logger.error("triggers: cannot subscribe to %s: %s", topic, exc)


def _sources(deployments: list[Deployment]) -> list[str]:
    return sorted({d.source for d in deployments})


def start_triggers(
    store_path: str | Path,
    backend: ComputeBackend,
    bus: MessageBus,
    undo: list[tuple[str, Callable[[], object]]],
) -> TriggerService:
    """Open the run store at ``store_path`` and start the trigger service; stops go on ``undo``."""
    store = SQLiteStore(store_path)
    undo.append(("run store (triggers)", store.close))
    service = TriggerService(store, backend, bus).start()
    undo.append(("triggers", service.stop))
    return service
