"""Other hosts' wall clocks against the control plane's: a warning past a bound, per host.

Nothing the control plane and its fog hosts exchange needs their wall clocks to
agree: the gateway's requests carry no time (each side times them on its own
monotonic clock), replicas read an agent's offload deadline in that agent's
clock (:class:`edge_agent._clock.SenderClocks`), health and liveness are timed
where they are observed. What does depend on them is named in the warning: a
pipeline handed to a replica splits frames by capture time against the control
plane's split time, and frames without a capture time fall back to their
arrival on each host's clock; logs on different hosts no longer line up.

So a host whose clock is off is reported, not refused: a reading taken on the
host between two local times ``sent`` and ``received`` places its clock within
``remote - received .. remote - sent`` of ours. Only when that whole interval is
past ``bound_s`` is a warning logged, once per host until its clock comes back
within the bound (then an info line says so).

Example:
    >>> clocks = HostClocks(bound_s=2.0)
    >>> clocks.observe("fog-0", remote_ts=1300.05, sent_ts=1000.0, received_ts=1000.1)
    >>> round(clocks.offsets()["fog-0"])
    300
"""

from __future__ import annotations

import logging
import math
import threading

__all__ = ["MAX_HOST_SKEW_S", "HostClocks"]

logger = logging.getLogger(__name__)

#: A host's clock this far from the control plane's is reported (seconds).
MAX_HOST_SKEW_S = 2.0


class HostClocks:
    """Each host's wall clock minus the control plane's, from readings in a round trip.

    Args:
        bound_s: a larger difference (beyond the reading's uncertainty) is warned about.
    """

    def __init__(self, *, bound_s: float = MAX_HOST_SKEW_S) -> None:
        """No readings yet."""
        if not (math.isfinite(bound_s) and bound_s > 0):
            raise ValueError(f"bound_s must be a finite number > 0, got {bound_s}")
        self._bound = bound_s
        self._offsets: dict[str, float] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, host: str, *, remote_ts: float, sent_ts: float, received_ts: float) -> None:
        """``host`` read its clock as ``remote_ts`` between our ``sent_ts`` and ``received_ts``."""
        if not all(math.isfinite(t) for t in (remote_ts, sent_ts, received_ts)):
            return
        offset = remote_ts - (sent_ts + received_ts) / 2
        uncertainty = max(0.0, received_ts - sent_ts) / 2
        off = abs(offset) - uncertainty > self._bound
        with self._lock:
            self._offsets[host] = offset
            was = host in self._warned
            if off:
                self._warned.add(host)
            else:
                self._warned.discard(host)
        if off and not was:
            logger.warning(
                "host %s: its clock is %+.1f s from the control plane's (±%.2f s), over the "
                "%.1f s bound: agents' offloads there still meet their deadlines, but pipeline "
                "frames without a capture time are split by arrival on that clock and its logs "
                "do not line up; set its time (NTP)",
                host,
                offset,
                uncertainty,
                self._bound,
            )
        elif was and not off:
            logger.info(
                "host %s: its clock is back within %.1f s of the control plane's (%+.2f s)",
                host,
                self._bound,
                offset,
            )

    def forget(self, host: str) -> None:
        """``host`` left (its next reading, if any, starts afresh)."""
        with self._lock:
            self._offsets.pop(host, None)
            self._warned.discard(host)

    def offsets(self) -> dict[str, float]:
        """The last estimate per host: its clock minus the control plane's, seconds."""
        with self._lock:
            return dict(self._offsets)
