"""The fleet bench's reading of the control plane's ``/metrics``, paced by its own cost.

Rendering ``/metrics`` walks every agent (four series each) on the control
plane, on a thread that shares the GIL with the dispatcher the bench measures:
at 3,000 agents one scrape took 0.9 s. Polled every 0.25 s, the bench would
keep a scrape under way most of the time and slow what it measures. So the
polls that wait for something (an agent offline, back online, an event count)
read only the metrics they look at (:meth:`MetricsReader.read` with names:
``?name[]=``), and :meth:`MetricsReader.pause` is how long to wait before the
next read: ``floor_s``, and after a whole scrape at least :data:`PACE` times
its own time (so whole scrapes take at most a fifth of the control plane's
time). A named read is not paced by its time: it costs little, and when it is
slow the control plane is busy with something else (at 3,000 agents one took
3.6 s; waiting four times that made the offline detection read 20 s).

Example:
    >>> reader = MetricsReader("http://127.0.0.1:1", "token")
    >>> reader.last_s = 0.5
    >>> reader.pause(0.25)
    2.0
"""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request

__all__ = ["PACE", "MetricsReader"]

_SAMPLE = re.compile(r'^(\w+)\{(\w+)="([^"]*)"\} (\S+)$')
#: The wait before the next read, as a multiple of the last read's time.
PACE = 4.0


class MetricsReader:
    """``GET /metrics`` with a bearer token, parsed into one-label series, timed.

    Args:
        gateway: the control plane's base URL.
        token: a bearer token with read scope.
    """

    def __init__(self, gateway: str, token: str) -> None:
        """Nothing is read until :meth:`read`."""
        self._url = f"{gateway}/metrics"
        self._token = token
        #: How long the last read took (seconds).
        self.last_s = 0.0
        #: Whether the last read was a whole scrape (no names).
        self.last_whole = True

    def read(self, *names: str) -> dict[str, dict[str, float]]:
        """The series now: name -> {label value: value} (one-label series only).

        With ``names``, only those metrics (``?name[]=``): the control plane renders
        nothing else, so a probe of one gauge costs that gauge's walk alone.
        """
        began = time.monotonic()
        url = self._url
        if names:
            url += "?" + urllib.parse.urlencode([("name[]", n) for n in names])
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        out: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                out.setdefault(m.group(1), {})[m.group(3)] = float(m.group(4))
        self.last_s = time.monotonic() - began
        self.last_whole = not names
        return out

    def pause(self, floor_s: float = 0.25) -> float:
        """Seconds before the next read: ``floor_s``; after a whole scrape, :data:`PACE` x its time."""
        return max(floor_s, PACE * self.last_s) if self.last_whole else floor_s
