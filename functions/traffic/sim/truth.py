"""Ground truth, late: what each camera frame really held, published after the frame.

A real deployment learns the true counts later than the camera's frame (a
loop detector's tally, a person's review); the simulator knows them at once.
:class:`TruthFeed` holds each frame's exact counts and publishes them
``delay_s`` after the frame on the labels topic (``traffic/{site}/truth`` by
default), as the mesh's drift check and fresh-data store expect a label::

    {"site": "A0", "ts": <the frame's source_ts>, "values": [north, east, south, west]}

``values`` are the exact vehicles on each approach of the whole frame: the
counter's first output row (the frame's segments and queue follow in its
output; they have no label). The traffic plugin adds a label per frame sent
(:meth:`TruthFeed.add`) and publishes the due ones every step (:meth:`TruthFeed.flush`).

Example:
    >>> sent = []
    >>> feed = TruthFeed("traffic/{site}/truth", lambda t, p: sent.append((t, p)), delay_s=2)
    >>> feed.add("A0", 100.0, [3, 0, 1, 2], now=100.0)
    >>> feed.flush(now=101.0), feed.flush(now=102.5)
    (0, 1)
    >>> sent[0][0], json.loads(sent[0][1])["values"]
    ('traffic/A0/truth', [3.0, 0.0, 1.0, 2.0])
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["TruthFeed"]

#: Labels waiting for their time; past this, the oldest are published at once.
_MAX_PENDING = 8192


class TruthFeed:
    """Each frame's exact counts, published ``delay_s`` after it (thread safe).

    Args:
        topic: the labels topic, ``{site}`` replaced by the junction.
        publish: sends ``(topic, payload)``.
        delay_s: wall seconds between a frame and its label.
    """

    def __init__(
        self, topic: str, publish: Callable[[str, bytes], None], *, delay_s: float = 3.0
    ) -> None:
        """Nothing pending.

        Raises:
            ValueError: a negative delay.
        """
        if delay_s < 0:
            raise ValueError(f"truth delay_s: expected >= 0 seconds, got {delay_s!r}")
        self._topic = topic
        self._publish = publish
        self.delay_s = float(delay_s)
        self._pending: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self.published = 0

    def add(
        self, site: str, source_ts: float, values: Sequence[float], *, now: float | None = None
    ) -> None:
        """The frame of ``site`` stamped ``source_ts`` held ``values``: publish them later."""
        due = (time.time() if now is None else now) + self.delay_s
        payload = json.dumps(
            {"site": site, "ts": source_ts, "values": [float(v) for v in values]}
        ).encode()
        with self._lock:
            self._pending.append((due, self._topic.replace("{site}", site), payload))
            overflow = len(self._pending) > _MAX_PENDING
        if overflow:
            self.flush(now=float("inf"), limit=len(self._pending) - _MAX_PENDING)

    def flush(self, *, now: float | None = None, limit: int = _MAX_PENDING) -> int:
        """Publish the labels due by ``now`` (at most ``limit``); returns how many."""
        at = time.time() if now is None else now
        due: list[tuple[str, bytes]] = []
        with self._lock:
            while self._pending and self._pending[0][0] <= at and len(due) < limit:
                _, topic, payload = self._pending.popleft()
                due.append((topic, payload))
        for topic, payload in due:
            self._publish(topic, payload)
        self.published += len(due)
        return len(due)
