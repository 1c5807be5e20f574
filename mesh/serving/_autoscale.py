"""Autoscaling of module replicas: a pure policy and a decider with delays.

The policy wants ``ceil(in-flight / target_in_flight)`` replicas, between
``min_replicas`` and ``max_replicas`` (0 allows scale to zero). The decider
adds replicas once the load has wanted more for ``upscale_delay_s`` (at once
from zero, since a request waits) and removes them once it has wanted fewer for
``downscale_delay_s`` (``scale_to_zero_delay_s`` for the last one), so counts
do not flap with bursty load.

Example:
    >>> scaler = Autoscaler(AutoscalePolicy(min_replicas=1, max_replicas=4, target_in_flight=2))
    >>> scaler.decide(current=1, load=7.0, now=0.0), scaler.decide(current=1, load=7.0, now=1.5)
    (1, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.sdk._specs import ModuleSpec

__all__ = ["AutoscalePolicy", "Autoscaler"]


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """How many replicas a module wants for a load (pure).

    Attributes:
        min_replicas: never fewer (0 allows scale to zero).
        max_replicas: never more.
        target_in_flight: requests in flight per replica to aim for.
        upscale_delay_s: the load must want more replicas this long before adding.
        downscale_delay_s: ... and fewer this long before removing.
        scale_to_zero_delay_s: idle this long before the last replica goes.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_in_flight: float = 2.0
    upscale_delay_s: float = 1.0
    downscale_delay_s: float = 30.0
    scale_to_zero_delay_s: float = 60.0

    @classmethod
    def of(
        cls,
        spec: ModuleSpec,
        *,
        upscale_delay_s: float = 1.0,
        downscale_delay_s: float = 30.0,
        scale_to_zero_delay_s: float = 60.0,
    ) -> AutoscalePolicy:
        """The policy a module spec declares, with these delays."""
        return cls(
            spec.min_replicas,
            spec.max_replicas,
            spec.target_in_flight,
            upscale_delay_s,
            downscale_delay_s,
            scale_to_zero_delay_s,
        )

    def wanted(self, load: float) -> int:
        """Replicas for ``load`` requests in flight, within the bounds."""
        raw = math.ceil(load / self.target_in_flight - 1e-9) if load > 0 else 0
        return max(self.min_replicas, min(self.max_replicas, raw))


class Autoscaler:
    """Applies an :class:`AutoscalePolicy` with delays, so replicas do not flap."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        """Track one module."""
        self.policy = policy
        self._up_since: float | None = None
        self._down_since: float | None = None

    def decide(self, current: int, load: float, now: float) -> int:
        """The replica count to have now, given ``current`` replicas and ``load`` in flight."""
        p = self.policy
        wanted = p.wanted(load)
        if current == 0 and load > 0:
            wanted = max(wanted, 1)
        if wanted > current:
            self._down_since = None
            if self._up_since is None:
                self._up_since = now
            if current == 0 or now - self._up_since >= p.upscale_delay_s:
                self._up_since = None
                return wanted
            return current
        self._up_since = None
        if wanted < current:
            if self._down_since is None:
                self._down_since = now
            delay = p.scale_to_zero_delay_s if wanted == 0 else p.downscale_delay_s
            if now - self._down_since >= delay:
                self._down_since = None
                return wanted
            return current
        self._down_since = None
        return current
