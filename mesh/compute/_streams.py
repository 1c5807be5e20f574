"""Stream functions: windows of messages from a topic pattern, one run per window.

A :class:`MessageBus` is where messages come from and outputs go to. The MQTT
implementation is the edge bus's; :class:`LocalBus` is an in-process bus
with the same matching rules, for the demo and for tests without a broker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.core._errors import MeshError, SpecError
from mesh.core._topics import topic_matches
from mesh.sdk._specs import FunctionKind, StreamSpec

__all__ = ["LocalBus", "MessageBus", "StreamWorker", "WindowOutcome", "topic_matches"]

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


class MessageBus(Protocol):
    """Publish/subscribe with MQTT topic semantics."""

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each message matching ``pattern``.

        Returns a function that ends the subscription.
        """
        ...

    def publish(self, topic: str, payload: bytes) -> None:
        """Send ``payload`` to ``topic``."""
        ...


class LocalBus:
    """An in-process :class:`MessageBus`; handlers run on the publisher's thread."""

    def __init__(self) -> None:
        """Create a bus with no subscribers."""
        self._lock = threading.Lock()
        self._subscriptions: list[tuple[str, Handler]] = []

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Register ``handler`` for ``pattern``; returns the unsubscribe function."""
        entry = (pattern, handler)
        with self._lock:
            self._subscriptions.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscriptions:
                    self._subscriptions.remove(entry)

        return unsubscribe

    def publish(self, topic: str, payload: bytes) -> None:
        """Deliver ``payload`` to every matching subscriber."""
        with self._lock:
            targets = [h for p, h in self._subscriptions if topic_matches(p, topic)]
        for handler in targets:
            handler(topic, payload)


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """What one window produced."""

    run_id: str | None
    messages: int
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class _Submitter(Protocol):
    def submit(self, name: str, /, **kwargs: Any) -> Any: ...


class StreamWorker:
    """Feeds a stream function with windows of JSON messages from a bus.

    Messages that are not JSON objects are logged and dropped. Every
    ``window_s`` seconds a non-empty window becomes one run through the runner
    (so it runs on the function's tier and is recorded); each output dict is
    published as JSON to the spec's ``output_topic``.

    Example:
        >>> worker = StreamWorker(runner, "signal_plan", bus)  # doctest: +SKIP
        >>> worker.start(); ...; worker.stop()  # doctest: +SKIP
    """

    def __init__(
        self, runner: Any, name: str, bus: MessageBus, *, max_window_messages: int = 10_000
    ) -> None:
        """Bind stream function ``name`` of ``runner`` to ``bus``."""
        registered = runner.get(name)
        if registered.spec.kind is not FunctionKind.STREAM:
            raise SpecError(
                f"{name!r} is not a stream function (it is registered with "
                f"@app.{registered.spec.kind.value}); use @app.stream(topic=...)"
            )
        self.spec: StreamSpec = registered.spec
        self._param = next(iter(registered.signature.parameters))
        self._runner: _Submitter = runner
        self._bus = bus
        self._max = max_window_messages
        self._lock = threading.Lock()
        self._window: list[dict[str, Any]] = []
        self.dropped = 0
        self.outcomes: list[WindowOutcome] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            logger.warning(
                "stream %s: dropped a malformed message on %s: %s", self.spec.name, topic, exc
            )
            self.dropped += 1
            return
        if not isinstance(message, dict):
            logger.warning("stream %s: dropped a non-object message on %s", self.spec.name, topic)
            self.dropped += 1
            return
        message.setdefault("_topic", topic)
        with self._lock:
            if len(self._window) >= self._max:
                self.dropped += 1
                logger.warning(
                    "stream %s: window full (%d messages), dropped one from %s",
                    self.spec.name,
                    self._max,
                    topic,
                )
                return
            self._window.append(message)

    def flush(self) -> WindowOutcome:
        """Close the current window now and run the function on it (if non-empty)."""
        with self._lock:
            window, self._window = self._window, []
        if not window:
            return WindowOutcome(run_id=None, messages=0)
        try:
            run = self._runner.submit(self.spec.name, **{self._param: window})
            outputs = run.result()
        except MeshError as exc:
            logger.error(
                "stream %s: window of %d messages failed: %s", self.spec.name, len(window), exc
            )
            outcome = WindowOutcome(
                run_id=getattr(exc, "run_id", None), messages=len(window), error=str(exc)
            )
            self.outcomes.append(outcome)
            return outcome
        outputs = list(outputs or [])
        if self.spec.output_topic:
            for output in outputs:
                self._bus.publish(self.spec.output_topic, json.dumps(output).encode())
        outcome = WindowOutcome(run_id=run.id, messages=len(window), outputs=outputs)
        self.outcomes.append(outcome)
        return outcome

    def start(self) -> None:
        """Subscribe and close a window every ``window_s`` seconds on a thread."""
        if self._thread is not None:
            return
        self._unsubscribe = self._bus.subscribe(self.spec.topic, self._on_message)
        self._thread = threading.Thread(
            target=self._loop, name=f"stream-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.spec.window_s
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline += self.spec.window_s
            try:
                self.flush()
            except Exception:  # the loop never dies: log and go on with the next window
                logger.exception("stream %s: window failed", self.spec.name)

    def stop(self, *, flush: bool = True) -> None:
        """Unsubscribe, stop the thread and (by default) run the last partial window."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if flush:
            self.flush()
