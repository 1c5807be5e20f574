"""Steady inference through the gateway, counted request by request, for the chaos suite.

:class:`Load` sends to each module from its own thread at a steady rate and
puts every request in one :class:`Tally` bucket: answered, failed (with the
reason), or apart: ``unavailable`` (sent while the gateway itself was down)
and ``broker_outage`` (an edge module's request between a broker kill and the
module answering again). Used by :mod:`tests.support.chaos`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["WIDTH", "Load", "Tally", "request_body"]

#: The width of the model's input: float32[N, 4].
WIDTH = 4


@dataclass
class Tally:
    """Requests of one module: sent, answered, failed (with reasons); outages' failures apart."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    unavailable: int = 0
    broker_outage: int = 0
    slowest_ms: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "unavailable": self.unavailable,
            "broker_outage": self.broker_outage,
            "slowest_ms": round(self.slowest_ms, 1),
            "reasons": dict(self.reasons.most_common(8)),
        }


def request_body(rows: int = 1) -> bytes:
    """An OIP JSON request for the tiny model."""
    data = [float(i % 7) for i in range(rows * WIDTH)]
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, WIDTH], "data": data}]}
    return json.dumps(doc).encode()


class Load:
    """Steady inference through the gateway, one thread per module; counts every request.

    Args:
        gateway: the gateway's URL (``http://host:port``); :meth:`repoint` changes it.
        token: a bearer token with the invoke scope.
        modules: module names to send to.
        rate_hz: requests per second per module.
        deadline_s: a request not answered within this is failed.
        over_mqtt: the modules the gateway reaches over the broker (edge modules).
    """

    def __init__(
        self,
        gateway: str,
        token: str,
        modules: list[str],
        *,
        rate_hz: float = 10.0,
        deadline_s: float = 2.0,
        over_mqtt: tuple[str, ...] = (),
    ) -> None:
        self._gateway = gateway
        self._token = token
        self.modules = modules
        self.rate_hz = rate_hz
        self.deadline_s = deadline_s
        self.tallies = {m: Tally() for m in modules}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Set while the control plane (and so the gateway) is known to be down.
        self.gateway_down = threading.Event()
        self.over_mqtt = frozenset(over_mqtt)
        # Broker outages: [kill, every module answering again] (end None while open).
        self._outages: list[list[float | None]] = []

    def broker_outage_began(self) -> None:
        """Mark a broker kill now (:meth:`broker_outage_ended` once every module answers)."""
        with self._lock:
            self._outages.append([time.monotonic(), None])

    def broker_outage_ended(self) -> None:
        """Close the open broker outage, if any."""
        with self._lock:
            for outage in self._outages:
                if outage[1] is None:
                    outage[1] = time.monotonic()

    def _in_broker_outage(self, started: float, ended: float) -> bool:
        # Under the lock: the request's time overlaps an outage (in flight at the kill too).
        return any(b is not None and b <= ended and (e is None or started <= e)
                   for b, e in self._outages)  # fmt: skip

    def repoint(self, gateway: str) -> None:
        """Send to this gateway from now on (a restarted control plane)."""
        with self._lock:
            self._gateway = gateway

    def start(self) -> Load:
        """Start the senders."""
        for module in self.modules:
            t = threading.Thread(target=self._run, args=(module,), name=f"load-{module}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop the senders (each ends within one request's deadline)."""
        self._stop.set()
        for t in self._threads:
            t.join(self.deadline_s + 5)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each module's tally so far."""
        with self._lock:
            return {m: t.as_dict() for m, t in self.tallies.items()}

    def _run(self, module: str) -> None:
        body = request_body()
        period = 1.0 / self.rate_hz
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += period
            down = self.gateway_down.is_set()
            started = time.monotonic()
            outcome: str | None
            try:
                if conn is None:
                    with self._lock:
                        parts = urlsplit(self._gateway)
                    conn = http.client.HTTPConnection(
                        parts.hostname or "127.0.0.1", parts.port, timeout=self.deadline_s
                    )
                conn.request(
                    "POST",
                    f"/v2/models/{module}/infer",
                    body,
                    {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
                )
                answer = conn.getresponse()
                data = answer.read()
                outcome = None if answer.status == 200 else f"{answer.status}: {data[:120]!r}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
            elapsed_ms = (time.monotonic() - started) * 1e3
            if outcome is None and elapsed_ms > self.deadline_s * 1e3:
                outcome = "answered after its deadline"
            self._record(module, outcome, started, down or self.gateway_down.is_set())
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - period)  # no burst to catch up
        if conn is not None:
            conn.close()

    def _record(self, module: str, outcome: str | None, started: float, down: bool) -> None:
        ended = time.monotonic()
        elapsed_ms = (ended - started) * 1e3
        with self._lock:
            tally = self.tallies[module]
            tally.sent += 1
            if outcome is None:
                tally.answered += 1
                tally.slowest_ms = max(tally.slowest_ms, elapsed_ms)
            elif down:
                tally.unavailable += 1
                tally.reasons[f"gateway down: {outcome}"] += 1
            elif module in self.over_mqtt and self._in_broker_outage(started, ended):
                tally.broker_outage += 1
                tally.reasons[f"broker down: {outcome}"] += 1
            else:
                tally.failed += 1
                tally.reasons[outcome] += 1
