"""Which published events the control plane has not confirmed yet (end-to-end acks).

A broker's PUBACK says that it holds an event, not that the event reached the
control plane: a Mosquitto killed with -9 before it saves loses what it had
acknowledged but not yet passed on. So where the control plane acknowledges
events (:class:`~edge_agent.protocol.EventAcks` on ``Topics.event_acks``, QoS
0), the outbox keeps each QoS >= 1 event after its PUBACK, as *unconfirmed*,
until the control plane names its seq; it sends the unconfirmed ones again
after a reconnect, or when the oldest has waited longer than a timeout (30 s,
doubling per resend without a confirmation, up to 300 s), so that a lost
acknowledgement or a control plane restart costs a resend, not the event. The
control plane drops duplicates by event id.

The timeout is never shorter than twice the control plane's latest lag (how
long its last confirmations took since their events went out): a control plane
working through a backlog (thousands of agents reconnecting at once) confirms
late but confirms, and resending what it has queued would only feed the
backlog.

The outbox learns that the control plane confirms from the first EventAcks:
an older one never sends any, and then events are deleted at PUBACK as before.

Threads: :meth:`Confirmations.arrive` runs on paho's network thread and only
appends to a deque (it never blocks or touches SQLite); the rest runs on the
outbox's pump thread, under the outbox's lock.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from .protocol import MAX_ACKED_SEQS

__all__ = ["Confirmations"]

logger = logging.getLogger(__name__)

# Confirmations waiting for the pump at most (an old one falls out: a resend, not a loss).
_MAX_ARRIVED = 64 * MAX_ACKED_SEQS


class Confirmations:
    """The confirm bookkeeping of one outbox: unconfirmed seqs, timeouts, the resend range.

    Example:
        >>> now = [0.0]
        >>> c = Confirmations(timeout_s=30, clock=lambda: now[0])
        >>> c.on_puback(1, qos=1)  # no confirmation seen yet: delete at PUBACK
        True
        >>> c.arrive([7]); c.confirm(c.take(), inflight=set())
        [7]
        >>> c.on_puback(2, qos=1), len(c)  # confirmed mode: kept until confirmed
        (False, 1)
        >>> now[0] = 31.0; c.due()
        True
    """

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        max_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Resend after ``timeout_s`` without confirmation, doubling up to ``max_timeout_s``."""
        #: True once the control plane has confirmed anything (for the rest of the process).
        self.active = False
        #: The unconfirmed the pump may hold at most (it waits past it); set by the pump.
        self.limit = 1024
        #: After a rewind the pump resends up to here, past :attr:`limit`.
        self.resend_upto = 0
        self._arrived: deque[int] = deque(maxlen=_MAX_ARRIVED)
        # seq -> when its PUBACK came (or when it was last resent), oldest first.
        self._unconfirmed: OrderedDict[int, float] = OrderedDict()
        # Confirmed (and deleted) while its PUBACK was still awaited: the PUBACK is moot.
        self._early: set[int] = set()
        self._base_s = float(timeout_s)
        self._timeout_s = float(timeout_s)
        # The slowest of the latest confirmations: seconds since their events went out.
        self._lag_s = 0.0
        self._max_timeout_s = max(max_timeout_s, timeout_s)
        self._clock = clock

    def __len__(self) -> int:
        """Events acknowledged by the broker and not yet by the control plane."""
        return len(self._unconfirmed)

    # ----------------------------------------------------------- network thread

    def arrive(self, seqs: Iterable[int]) -> None:
        """Note confirmed seqs; switches to confirmed mode. Never blocks (any thread)."""
        self._arrived.extend(seqs)
        self.active = True

    # ----------------------------------------------------------- pump thread

    def take(self) -> list[int]:
        """The confirmations that arrived since the last call."""
        out: list[int] = []
        for _ in range(len(self._arrived)):  # what is there now: the network thread adds more
            out.append(self._arrived.popleft())
        return out

    def waiting(self) -> bool:
        """Whether the pump has confirmations to apply or events to watch the timeout of."""
        return bool(self._arrived or self._unconfirmed)

    def confirm(self, seqs: list[int], inflight: set[int]) -> list[int]:
        """Forget confirmed seqs; returns those to delete (all: deleting twice is a no-op).

        A seq whose PUBACK is still awaited (in ``inflight``) is remembered, so
        that its PUBACK does not make it unconfirmed again.
        """
        if not seqs:
            return []
        self._timeout_s = self._base_s  # the control plane is there: the short timeout again
        now = self._clock()
        lags: list[float] = []
        for seq in seqs:
            sent = self._unconfirmed.pop(seq, None)
            if sent is not None:
                lags.append(now - sent)
            if seq in inflight:
                self._early.add(seq)
        if lags:
            self._lag_s = max(lags)
        return seqs

    def on_puback(self, seq: int, qos: int) -> bool:
        """The broker acknowledged ``seq``: True when the outbox should delete it now."""
        if seq in self._early:
            self._early.discard(seq)  # confirmed first: deleted already
            return False
        if not self.active or qos < 1:
            return True
        self._unconfirmed[seq] = self._clock()
        self._unconfirmed.move_to_end(seq)
        return False

    def drop(self, seq: int) -> None:
        """The outbox dropped ``seq`` (over its bounds) or deleted it otherwise."""
        self._unconfirmed.pop(seq, None)
        self._early.discard(seq)

    def timeout_s(self) -> float:
        """The wait before a resend: the backed-off timeout, or twice the latest lag if longer.

        Example:
            >>> now = [0.0]
            >>> c = Confirmations(timeout_s=30, clock=lambda: now[0])
            >>> c.arrive([]); c.on_puback(1, qos=1), c.on_puback(2, qos=1)
            (False, False)
            >>> now[0] = 50.0; c.confirm([1], inflight=set())  # confirmed 50 s after it went
            [1]
            >>> c.timeout_s(), c.due()  # seq 2 waited 50 s: the control plane is behind
            (100.0, False)
            >>> now[0] = 51.0; c.confirm([2], inflight=set()); c.timeout_s()
            [2]
            102.0
            >>> c.on_puback(3, qos=1); now[0] = 52.0; c.confirm([3], inflight=set())
            False
            [3]
            >>> c.timeout_s()  # caught up: the short timeout again
            30.0
        """
        return max(self._timeout_s, min(2 * self._lag_s, self._max_timeout_s))

    def due(self) -> bool:
        """Whether the oldest unconfirmed event has waited longer than :meth:`timeout_s`."""
        if not self._unconfirmed:
            return False
        oldest = next(iter(self._unconfirmed.values()))
        return self._clock() - oldest >= self.timeout_s()

    def rewind(
        self, inflight: list[int], sent_upto: int, stored: Callable[[int, int], set[int]]
    ) -> int | None:
        """Plan a resend of the unconfirmed and of ``inflight`` (their handles are forgotten).

        ``stored(lo, hi)`` gives the seqs in [lo, hi] the outbox still holds; the
        others (dropped over the bounds) are forgotten. Returns the seq to send
        after (the new ``sent_upto``), or None when there is nothing to resend.
        """
        self._early.clear()  # their PUBACKs are forgotten with the handles
        candidates = [*self._unconfirmed, *inflight]
        if not candidates:
            return None
        lo, hi = min(candidates), max(candidates)
        kept = stored(lo, hi)
        now = self._clock()
        self._unconfirmed = OrderedDict((s, now) for s in sorted(self._unconfirmed) if s in kept)
        resend = [s for s in candidates if s in kept]
        if not resend:
            return None
        self.resend_upto = max(self.resend_upto, sent_upto)
        return min(resend) - 1

    def backoff(self) -> float:
        """After a resend for the timeout: the next timeout doubles (capped). Returns the wait."""
        self._timeout_s = min(self._timeout_s * 2, self._max_timeout_s)
        return self.timeout_s()

    def may_send(self, sent_upto: int, inflight: int) -> bool:
        """Whether the pump may send more (resends always; new events below :attr:`limit`)."""
        return self.room(sent_upto, inflight) > 0

    def room(self, sent_upto: int, inflight: int) -> int:
        """How many events the pump may send now as far as confirmations go."""
        if not self.active or sent_upto < self.resend_upto:
            return self.limit
        return self.limit - len(self._unconfirmed) - inflight
