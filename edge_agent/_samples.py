r"""Fresh data: a bounded reservoir of a module's recent pipeline inputs, uploaded within a budget.

When a module's desired state carries a :class:`~edge_agent.protocol.SamplingPolicy`,
each input a pipeline fed it is offered here (on the pipeline's thread, after
its event is out). The :class:`Sampler` keeps the ``reservoir`` most recent
inputs per module, copied, and uploads one picked at random among them whenever
the module's :class:`UploadBudget` allows: at most ``samples_per_min`` uploads
and ``bytes_per_min`` bytes in any 60 s. An input pushed out of the reservoir
before it was uploaded is counted as dropped; one larger than the whole byte
budget is dropped at once. Uploads are :class:`~edge_agent.protocol.SampleUpload`
frames published directly at QoS 1 (not through the outbox: a sample is worth
less than an event, and one missed while the broker is away is simply not sent);
paho queues them and returns, so nothing here waits on the network thread.

Memory is bounded by ``reservoir`` x the frame size per sampled module; the
budget's record of uploads by ``samples_per_min``.

Example:
    >>> from edge_agent.protocol import SamplingPolicy, Tensor, Topics
    >>> sent = []
    >>> sampler = Sampler(lambda topic, payload: sent.append(topic) or True, Topics(),
    ...                   "cam-07", "j1", lambda module: SamplingPolicy(samples_per_min=1))
    >>> for ts in (1.0, 2.0):
    ...     sampler.offer("counter", "3", ts, [Tensor("x", "uint8", (1,), b"\x07")])
    >>> sent, sampler.stats()["counter"].uploaded, sampler.stats()["counter"].held
    (['mesh/v1/agents/cam-07/samples/counter'], 1, 1)
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .protocol import SampleUpload, SamplingPolicy, Tensor, Topics, encode_frame

__all__ = ["Sampler", "SamplerStats", "UploadBudget"]

logger = logging.getLogger(__name__)

#: The budget's window: "per minute" means in any 60 s.
_WINDOW_S = 60.0


class UploadBudget:
    """At most ``samples`` uploads and ``nbytes`` bytes in any ``window_s`` seconds.

    Example:
        >>> budget = UploadBudget(samples=2, nbytes=100)
        >>> budget.take(60, now=0.0), budget.take(60, now=1.0), budget.take(40, now=2.0)
        (True, False, True)
        >>> budget.take(10, now=3.0), budget.take(10, now=60.5)
        (False, True)
    """

    def __init__(self, samples: int, nbytes: int, window_s: float = _WINDOW_S) -> None:
        """An empty record of uploads."""
        if samples < 1 or nbytes < 1 or window_s <= 0:
            raise ValueError(
                f"upload budget: samples ({samples}), bytes ({nbytes}) and window_s "
                f"({window_s}) must be positive"
            )
        self.samples = samples
        self.nbytes = nbytes
        self.window_s = window_s
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._bytes = 0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.window_s:
            _, n = self._sent.popleft()
            self._bytes -= n

    def allows(self, size: int, now: float) -> bool:
        """Whether an upload of ``size`` bytes fits now."""
        self._expire(now)
        return len(self._sent) < self.samples and self._bytes + size <= self.nbytes

    def take(self, size: int, now: float) -> bool:
        """Spend ``size`` bytes and one upload if they fit now; returns whether they did."""
        if not self.allows(size, now):
            return False
        self._sent.append((now, size))
        self._bytes += size
        return True


@dataclass(slots=True)
class SamplerStats:
    """One module's sampling counts since the agent started."""

    offered: int = 0
    uploaded: int = 0
    dropped: int = 0
    bytes: int = 0
    held: int = 0


@dataclass(slots=True)
class _Held:
    version: str
    source_ts: float
    tensors: tuple[Tensor, ...]


@dataclass(slots=True)
class _Module:
    policy: SamplingPolicy
    budget: UploadBudget
    held: collections.deque[_Held]
    stats: SamplerStats = field(default_factory=SamplerStats)
    seq: int = 0


class Sampler:
    """Each sampled module's reservoir and upload budget; thread-safe.

    Args:
        publish: publishes ``(topic, payload)`` at QoS 1 without waiting; returns
            False when it cannot now (not connected): the sample stays held.
        topics: the agent's topic builder.
        agent_id: this agent.
        site: its site.
        policy_for: the module's sampling policy now (None: not sampled).
        clock: wall-clock seconds (the budget's window).
        rng: picks which held input goes next.
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], bool],
        topics: Topics,
        agent_id: str,
        site: str,
        policy_for: Callable[[str], SamplingPolicy | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """No module sampled until its policy says so."""
        self._publish = publish
        self._topics = topics
        self._agent = agent_id
        self._site = site
        self._policy_for = policy_for
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._modules: dict[str, _Module] = {}

    def offer(self, module: str, version: str, source_ts: float, tensors: Sequence[Tensor]) -> None:
        """One input the module ran on: hold it (copied), then upload what the budget allows."""
        policy = self._policy_for(module)
        with self._lock:
            state = self._state(module, policy)
            if state is None:
                return
            state.stats.offered += 1
            if len(state.held) == state.held.maxlen:
                state.stats.dropped += 1  # the oldest goes unsent
            copied = tuple(Tensor(t.name, t.dtype, t.shape, bytes(t.data)) for t in tensors)
            state.held.append(_Held(version, source_ts, copied))
            self._pump(module, state)

    def stats(self) -> dict[str, SamplerStats]:
        """A copy of each sampled module's counts."""
        with self._lock:
            return {
                m: SamplerStats(
                    s.stats.offered, s.stats.uploaded, s.stats.dropped, s.stats.bytes, len(s.held)
                )
                for m, s in self._modules.items()
            }

    def _state(self, module: str, policy: SamplingPolicy | None) -> _Module | None:
        state = self._modules.get(module)
        if policy is None:
            if state is not None:  # sampling turned off: free what it held
                state.held.clear()
            return None
        if state is None or state.policy != policy:
            held = collections.deque(state.held if state else (), maxlen=policy.reservoir)
            state = _Module(
                policy,
                UploadBudget(policy.samples_per_min, policy.bytes_per_min),
                held,
                state.stats if state else SamplerStats(),
                state.seq if state else 0,
            )
            self._modules[module] = state
            logger.info(
                "agent %s: sampling %s (%d/min, %d bytes/min, %d held)",
                self._agent,
                module,
                policy.samples_per_min,
                policy.bytes_per_min,
                policy.reservoir,
            )
        return state

    def _pump(self, module: str, state: _Module) -> None:
        """Upload held inputs while the budget allows (at most the reservoir's length)."""
        for _ in range(len(state.held)):
            if not state.held:
                return
            now = self._clock()
            if not state.budget.allows(0, now):
                return  # no upload left in this minute: do not encode for nothing
            i = self._rng.randrange(len(state.held))
            item = state.held[i]
            payload = self._encode(module, state, item)
            if len(payload) > state.budget.nbytes:
                del state.held[i]
                state.stats.dropped += 1
                logger.warning(
                    "agent %s: a %s sample of %d bytes is over the %d bytes/min budget; dropped",
                    self._agent,
                    module,
                    len(payload),
                    state.budget.nbytes,
                )
                continue
            if not state.budget.allows(len(payload), now):
                return
            if not self._publish(self._topics.samples(self._agent, module), payload):
                return  # not connected: it stays held
            state.budget.take(len(payload), now)
            del state.held[i]
            state.seq += 1
            state.stats.uploaded += 1
            state.stats.bytes += len(payload)

    def _encode(self, module: str, state: _Module, item: _Held) -> bytes:
        header = SampleUpload(
            agent=self._agent,
            site=self._site,
            module=module,
            version=item.version,
            source_ts=item.source_ts,
            seq=state.seq + 1,
            offered=state.stats.offered,
            uploaded=state.stats.uploaded + 1,
            dropped=state.stats.dropped,
        )
        return encode_frame(header, item.tensors)
