"""Events of the modules that agents run on a source: every input answered, on time.

An agent runs a module on a pipeline fed by a source (a camera's MQTT topic,
a replay file); each result comes back to the control plane as an event.
:class:`EventTally` counts one module's events by sender and sequence number
(gaps) and by route (local, offload, remote), against inputs announced with
:meth:`EventTally.sent` (an input never answered is lost); :class:`ModuleEvents`
turns each event into the module's latency sample, judging an event made long
after its input's capture (:data:`STALE_AFTER_S`) late by its age.

Example:
    >>> tally = EventTally(slo_ms=25.0)
    >>> tally.add("j-A0", 1, "local", 3.0); tally.add("j-A0", 3, "local", 40.0)
    >>> tally.gaps(), tally.by_route, tally.over_slo
    (1, {'local': 2}, {'local': 1})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.scenario._report import ModuleLatency

__all__ = ["STALE_AFTER_S", "EventTally", "ModuleEvents"]

#: An event made this long after its frame's capture counts over the SLO, as
#: late by its age, whatever latency the module reports (that is timed from
#: the frame's arrival: a frame queued in the broker while its agent was down
#: would otherwise look timely). Cameras and agents share this host's clock.
STALE_AFTER_S = 1.0


@dataclass(slots=True)
class EventTally:
    """One module's events by sender and sequence number (to find gaps) and by route.

    Attributes:
        slo_ms: the module's SLO (None: no latency is judged).
        received: events seen.
        by_route: events by where they ran (``local``, ``offload``, ``remote``).
        over_slo: of those, the ones whose latency was over ``slo_ms``.
        stale: events made over :data:`STALE_AFTER_S` after their frame's capture.
    """

    slo_ms: float | None = None
    received: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    over_slo: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    seqs: dict[str, set[int]] = field(default_factory=dict)
    frames: dict[str, set[float]] = field(default_factory=dict)
    answered: dict[str, set[float]] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, site: str, ts: float) -> None:
        """An input of ``site`` stamped ``ts`` went out: some event should answer it."""
        with self.lock:
            self.frames.setdefault(site, set()).add(ts)

    def add(
        self,
        sender: str,
        seq: int,
        route: str,
        latency_ms: float | None,
        *,
        site: str | None = None,
        source_ts: float | None = None,
        stale: bool = False,
    ) -> None:
        """Count one event of ``sender`` (an agent, or a replica holding its source)."""
        where = route.partition(":")[0]
        late = self.slo_ms is not None and latency_ms is not None and latency_ms > self.slo_ms
        with self.lock:
            self.seqs.setdefault(sender, set()).add(seq)
            self.received += 1
            self.stale += stale
            self.by_route[where] = self.by_route.get(where, 0) + 1
            if late:
                self.over_slo[where] = self.over_slo.get(where, 0) + 1
            if site is not None and source_ts is not None:
                self.answered.setdefault(site, set()).add(source_ts)

    def expect(self, site: str, inputs: int) -> None:
        """``site``'s source holds ``inputs`` inputs (a replay file): each must be answered."""
        with self.lock:
            self.expected[site] = inputs

    def inputs(self) -> int:
        """Inputs announced: sent one by one, or expected of a finite source."""
        with self.lock:
            return sum(len(ts) for ts in self.frames.values()) + sum(self.expected.values())

    def gaps(self) -> int:
        """Sequence numbers missing between each sender's first and last event."""
        with self.lock:
            return sum(max(s) - min(s) + 1 - len(s) for s in self.seqs.values() if s)

    def unanswered(self) -> int:
        """Frames :meth:`sent` that no event answered (dropped, or their event lost)."""
        with self.lock:
            sent = sum(len(ts - self.answered.get(site, set())) for site, ts in self.frames.items())
            short = sum(
                max(0, n - len(self.answered.get(site, ()))) for site, n in self.expected.items()
            )
            return sent + short

    def unanswered_by_site(self) -> dict[str, list[float]]:
        """Each site's frames that no event answered (capture times), for the report."""
        with self.lock:
            return {
                site: sorted(missing)
                for site, ts in sorted(self.frames.items())
                if (missing := ts - self.answered.get(site, set()))
            }

    def lost(self) -> int:
        """Events lost: frames never answered, or sequence gaps where frames were not recorded."""
        return max(self.gaps(), self.unanswered())


class ModuleEvents:
    """Tally and latency samples of one module's pipeline events.

    Args:
        module: the module's name.
        stream: the stream its pipelines publish events on.
        latency: where its latency samples and failures go (the report's).
        sim_time_at: wall time -> sim second (0 before the live phase).
    """

    def __init__(
        self,
        module: str,
        stream: str,
        latency: ModuleLatency,
        sim_time_at: Callable[[float], float],
    ) -> None:
        """Nothing counted yet."""
        self.module = module
        self.stream = stream
        self.latency = latency
        self.tally = EventTally(slo_ms=latency.slo_ms)
        self._sim_time_at = sim_time_at

    def on_event(self, event: Any) -> float | None:
        """Count one event of this module's stream; returns its sim second (None: not ours)."""
        if event.stream != self.stream or event.agent is None:
            return None
        # A replica holding a site's source numbers its events itself.
        remote = event.route.startswith("remote:")
        sender = f"{event.agent}@{event.route}" if remote else event.agent
        latency = event.latency_ms
        age_s = event.ts - event.source_ts if event.source_ts is not None else 0.0
        stale = latency is not None and age_s > STALE_AFTER_S
        if stale:
            latency = max(latency or 0.0, age_s * 1e3)
        self.tally.add(
            sender,
            event.seq,
            event.route,
            latency,
            site=event.site,
            source_ts=event.source_ts,
            stale=stale,
        )
        sim_t = self._sim_time_at(event.source_ts or time.time())
        if latency is not None:
            self.latency.samples.append((sim_t, latency))
        return sim_t
