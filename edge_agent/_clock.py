"""The agent's view of the control plane's clock: deadlines survive a device clock a few s off.

A request's ``deadline_ts`` is in the sender's clock. A device whose clock runs
5 s fast would read every 2 s deadline as passed on arrival. Everything the
control plane sends is stamped (``ts``: requests, desired states), so each
message gives a sample ``ts - arrival``: the true offset minus the message's
transit time. The largest of the recent samples is the best estimate (the
fastest message; the NTP "minimum delay" filter), and queued or retained
messages, whose samples are far too small, never win. Deadlines are read as
``deadline_ts - offset`` in this device's clock.

The correction is bounded by ``max_skew_s``: a larger difference is not clock
drift but a broken clock (or a sender lying), so the estimate is clamped and
a warning logged once, naming the two clocks.

A host that takes requests from many senders (a replica, which agents offload
to) keeps one estimate per sender (:class:`SenderClocks`): each sender's
deadlines are read in its own clock, so one agent's clock, however far off,
neither expires nor stretches another's requests.

Example:
    >>> clock = ClockOffset(max_skew_s=30.0)
    >>> clock.observe(remote_ts=1000.0, local_ts=1005.02)  # this device runs 5 s fast
    >>> clock.observe(remote_ts=1001.0, local_ts=1006.00)
    >>> clock.offset_s
    -5.0
    >>> clock.local_deadline(1003.0)
    1008.0
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections import OrderedDict, deque

__all__ = ["MAX_SENDER_SKEW_S", "ClockOffset", "SenderClocks"]

logger = logging.getLogger(__name__)

#: The largest difference between a sender's clock and a receiver's that a
#: :class:`SenderClocks` corrects deadlines for (a fog host minutes off an edge device).
MAX_SENDER_SKEW_S = 900.0


class ClockOffset:
    """A sender's clock (the control plane's) minus this one's, from the ``ts`` it stamps.

    Args:
        max_skew_s: the largest correction applied, either way.
        window: how many recent samples the estimate is taken over.
        remote: the sender's clock, named in the warning past ``max_skew_s``.
        local: this side's clock, named there too.
        setting: what sets ``max_skew_s``, for that warning.
    """

    def __init__(
        self,
        *,
        max_skew_s: float = 30.0,
        window: int = 64,
        remote: str = "the control plane's clock",
        local: str = "this device's",
        setting: str = "max_clock_skew_s",
    ) -> None:
        """No samples yet: an offset of 0."""
        if max_skew_s < 0 or not math.isfinite(max_skew_s):
            raise ValueError(f"max_skew_s must be a finite number >= 0, got {max_skew_s}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._max_skew = max_skew_s
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._offset = 0.0
        self._warned = False
        self._names = (remote, local)
        self._setting = setting

    def observe(self, remote_ts: float, local_ts: float) -> None:
        """One message stamped ``remote_ts`` by the sender arrived at ``local_ts`` (this clock)."""
        sample = remote_ts - local_ts
        if not math.isfinite(sample):
            return
        with self._lock:
            self._samples.append(sample)
            raw = max(self._samples)
            bounded = min(max(raw, -self._max_skew), self._max_skew)
            self._offset = bounded
            warn = bounded != raw and not self._warned
            self._warned = self._warned or warn
        if warn:
            logger.warning(
                "%s is %+.1fs from %s, more than the %.1fs tolerated (%s): deadlines are "
                "read with a %+.1fs correction only; set their time (NTP)",
                self._names[0],
                raw,
                self._names[1],
                self._max_skew,
                self._setting,
                bounded,
            )

    @property
    def offset_s(self) -> float:
        """The estimate (the sender's clock minus this one's, seconds), within ``±max_skew_s``."""
        return self._offset

    def local_deadline(self, deadline_ts: float) -> float:
        """``deadline_ts`` of the sender's clock, in this one."""
        return deadline_ts - self._offset


class SenderClocks:
    """One :class:`ClockOffset` per sender: deadlines each in its own sender's clock.

    Args:
        receiver: this side, named with its host in the warning (``replica counter-v1-3f2a1b``).
        max_skew_s: the largest correction applied to any one sender.
        setting: what sets ``max_skew_s``, named in the warning past it.
        senders: how many senders are remembered (the least recently heard is forgotten).

    Example:
        >>> clocks = SenderClocks("replica r1")
        >>> sent = time.time() + 300.0  # an agent 5 minutes ahead of this host
        >>> round(clocks.local_deadline("cam-07", sent, sent + 2.0) - time.time())
        2
    """

    def __init__(
        self,
        receiver: str,
        *,
        max_skew_s: float = MAX_SENDER_SKEW_S,
        setting: str = "MAX_SENDER_SKEW_S",
        senders: int = 1024,
    ) -> None:
        """No sender heard yet."""
        if senders < 1:
            raise ValueError(f"senders must be >= 1, got {senders}")
        if max_skew_s < 0 or not math.isfinite(max_skew_s):
            raise ValueError(f"max_skew_s must be a finite number >= 0, got {max_skew_s}")
        self._receiver = f"the clock of {receiver} on {socket.gethostname()}"
        self._max_skew = max_skew_s
        self._setting = setting
        self._limit = senders
        self._clocks: OrderedDict[str, ClockOffset] = OrderedDict()
        self._lock = threading.Lock()

    def local_deadline(
        self, sender: str | None, sent_ts: float, deadline_ts: float | None
    ) -> float | None:
        """``deadline_ts`` of a message ``sender`` stamped ``sent_ts``, in this host's clock.

        The message is a sample of the sender's clock; None (no deadline) stays None.
        """
        key = sender or ""
        with self._lock:
            clock = self._clocks.pop(key, None)
            if clock is None:
                clock = ClockOffset(
                    max_skew_s=self._max_skew,
                    remote=f"the clock of {key or 'an unnamed sender'}",
                    local=self._receiver,
                    setting=self._setting,
                )
                while len(self._clocks) >= self._limit:
                    self._clocks.popitem(last=False)
            self._clocks[key] = clock
        clock.observe(sent_ts, time.time())
        return None if deadline_ts is None else clock.local_deadline(deadline_ts)

    def offsets(self) -> dict[str, float]:
        """Each remembered sender's clock minus this host's, seconds."""
        with self._lock:
            return {key: clock.offset_s for key, clock in self._clocks.items()}
