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
a warning logged once.

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
import threading
from collections import deque

__all__ = ["ClockOffset"]

logger = logging.getLogger(__name__)


class ClockOffset:
    """Control plane's clock minus this device's, from the ``ts`` of messages it sent.

    Args:
        max_skew_s: the largest correction applied, either way.
        window: how many recent samples the estimate is taken over.
    """

    def __init__(self, *, max_skew_s: float = 30.0, window: int = 64) -> None:
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

    def observe(self, remote_ts: float, local_ts: float) -> None:
        """One message stamped ``remote_ts`` by the control plane arrived at ``local_ts``."""
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
                "this device's clock is %.1fs off the control plane's, more than the %.1fs "
                "tolerated (max_clock_skew_s): deadlines are read with a %.1fs correction only; "
                "set the device's time (NTP)",
                -raw,
                self._max_skew,
                -bounded,
            )

    @property
    def offset_s(self) -> float:
        """The estimate (control plane minus device, seconds), within ``±max_skew_s``."""
        return self._offset

    def local_deadline(self, deadline_ts: float) -> float:
        """``deadline_ts`` of the control plane's clock, in this device's clock."""
        return deadline_ts - self._offset
