"""Cloud and fog replicas' drift summaries, read into the drift service.

Edge agents put their summaries in their heartbeats; a replica keeps its own
(:mod:`mesh.serving.replica._drift`) until its ``GET /drift`` takes them. Once
a second (thread ``mesh-drift-replicas``) :class:`ReplicaDriftFeed` reads it on
every replica of every module the drift service follows on ``inputs`` or
``outputs`` (its route's endpoints and standby) and hands each window to
:meth:`~mesh.runtime._drift.DriftService.add_summary`. Reading is also what keeps
a replica summarising (a lease): replicas of other modules skip the work.

The site key: a replica's window is scored under its route's tier (``"fog"``,
``"cloud"``), the way an agent's is under its site. A fog replica answers
requests from many sites, so its inputs are a mix of theirs: the honest key is
where it runs, and every replica of the module on that tier is one site. (A
route is on one tier; the replicas' versions come with their windows.)

Why not ``GET /stats``: the serving manager's health checks, its drains and the
monitors' round-trip probes all read it, so a window taken there would be split
among them; ``/drift`` has one reader.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from edge_agent.protocol._reports import DriftSummary
from mesh.core._log_repeats import RepeatLog
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint

__all__ = ["DriftSink", "HttpDriftReader", "ReplicaDriftFeed", "ReplicaDriftReader"]

logger = logging.getLogger(__name__)


class DriftSink(Protocol):
    """Where windows go (:class:`~mesh.runtime._drift.DriftService`)."""

    def summarised(self) -> list[str]:
        """The modules whose drift check reads summaries."""
        ...

    def add_summary(self, module: str, site: str, summary: DriftSummary) -> None:
        """Fold one window of ``module`` at ``site`` in."""
        ...


class ReplicaDriftReader(Protocol):
    """Takes a replica's window (:class:`HttpDriftReader`; a fake in unit tests)."""

    def read(self, endpoint: ReplicaEndpoint, timeout_s: float) -> DriftSummary | None:
        """The window since the last read (None: nothing ran, or no answer)."""
        ...


class _Routes(Protocol):
    def get(self, module: str) -> ModuleRoute | None: ...


class HttpDriftReader:
    """:class:`ReplicaDriftReader` over ``http.client``: ``GET /drift`` with the replica key."""

    def read(self, endpoint: ReplicaEndpoint, timeout_s: float) -> DriftSummary | None:
        """The replica's window, or None (nothing ran, no answer, or a bad body)."""
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
        headers = {"Authorization": endpoint.authorization.decode()} if endpoint.key else {}
        try:
            conn.request("GET", "/drift", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            summary = json.loads(body).get("summary")
            return None if summary is None else DriftSummary.model_validate(summary)
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            return None  # pydantic's ValidationError is a ValueError
        finally:
            conn.close()


class ReplicaDriftFeed:
    """Reads replicas' windows into the drift service, once per ``period_s``.

    Args:
        routes: the route table (each module's replicas and tier).
        drift: the drift service.
        reader: takes a replica's window (default :class:`HttpDriftReader`).
        period_s: how often :meth:`start`'s thread reads.
        timeout_s: how long one replica may take to answer.

    Example:
        >>> feed = ReplicaDriftFeed(manager.routes, drift).start()  # doctest: +SKIP
        >>> feed.poll()  # or one pass by hand: the windows handed over   # doctest: +SKIP
        2
    """

    def __init__(
        self,
        routes: _Routes,
        drift: DriftSink,
        *,
        reader: ReplicaDriftReader | None = None,
        period_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        """Nothing read until :meth:`poll` or :meth:`start`."""
        self._routes = routes
        self._drift = drift
        self._reader = reader or HttpDriftReader()
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._quiet = RepeatLog(logger, every_s=300.0)

    def poll(self) -> int:
        """Read every followed module's replicas once; returns the windows handed over."""
        fed = 0
        for module in self._drift.summarised():
            route = self._routes.get(module)
            if route is None:
                continue
            # The canary's candidate replica too: its window is the candidate's
            # drift score, the canary's measure for a module without labels.
            for endpoint in _replicas((*route.endpoints, *route.standby, *route.canary)):
                summary = self._reader.read(endpoint, self._timeout_s)
                if summary is not None:
                    self._drift.add_summary(module, route.tier, summary)
                    fed += 1
        return fed

    def start(self) -> ReplicaDriftFeed:
        """Poll on the thread ``mesh-drift-replicas`` until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="mesh-drift-replicas", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):  # bounded by stop
            try:
                self.poll()
            except Exception as exc:  # the next pass tries again
                self._quiet.exception("drift: reading replicas' windows failed", exc=exc)


def _replicas(endpoints: Sequence[object]) -> list[ReplicaEndpoint]:
    return [e for e in endpoints if isinstance(e, ReplicaEndpoint)]
