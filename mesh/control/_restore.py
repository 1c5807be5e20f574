"""Restoring the recorded deployments after a restart: bounded retries and a state per module.

After a crash or a clean restart the control plane re-applies every
deployment the placement store recorded (:meth:`PlacementStore.deployments`):
replicas where they served, or the agent's desired state. Each module is
restored on its own worker, so an agent that is slow to come back holds up no
other module. A failed attempt is retried after a backoff that doubles up to
``RetryPolicy.max_delay_s``, at most ``RetryPolicy.attempts`` times; then the
module is ``failed`` with the last error, and its record stays for the next start.

Every recorded module has a :class:`RestoreStatus` from the moment
:meth:`Restorer.expect` saw its record (before the gateway serves its first
request): ``restoring``, ``serving`` or ``failed: <reason>``; ``GET
/v1/modules`` lists the ones not served yet (:meth:`Restorer.unserved`).

Example:
    >>> restorer = Restorer(RetryPolicy(attempts=3, first_delay_s=0.5))
    >>> restorer.expect(store.deployments())                                # doctest: +SKIP
    >>> restorer.run(store.deployments(), deploy, stop=threading.Event())   # doctest: +SKIP
    ['counter']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from mesh.control._store import DeploymentRecord

__all__ = ["RestoreState", "RestoreStatus", "Restorer", "RetryPolicy"]

logger = logging.getLogger(__name__)

#: Where a recorded module's restoration stands.
RestoreState = Literal["restoring", "serving", "failed"]

# Modules restored at once; each worker blocks on a replica start or an agent install.
_MAX_WORKERS = 8


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a recorded deployment is re-applied.

    Attributes:
        attempts: tries per module, the first included (at least 1).
        first_delay_s: the wait after the first failure; it doubles after each next one.
        max_delay_s: the longest wait between two tries.
    """

    attempts: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 20.0

    def __post_init__(self) -> None:
        """Reject a policy that could not run.

        Raises:
            ValueError: fewer than one attempt, or a negative delay.
        """
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError(
                f"delays must satisfy 0 <= first_delay_s <= max_delay_s, got "
                f"{self.first_delay_s} and {self.max_delay_s}"
            )

    def delay_after(self, failures: int) -> float:
        """The wait after ``failures`` failed tries (1: ``first_delay_s``)."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True, slots=True)
class RestoreStatus:
    """One recorded module's restoration.

    Attributes:
        module: the module.
        version: the recorded version.
        tier: the recorded tier (``edge`` for an agent).
        agent: the recorded agent, or None.
        state: ``restoring``, ``serving`` or ``failed``.
        attempts: tries so far.
        error: the last try's error, or None.
    """

    module: str
    version: str
    tier: str
    agent: str | None
    state: RestoreState
    attempts: int = 0
    error: str | None = None

    @property
    def label(self) -> str:
        """``restoring``, ``serving`` or ``failed: <reason>``."""
        return f"failed: {self.error}" if self.state == "failed" else self.state

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``GET /v1/modules`` lists for a module not served yet."""
        return {
            "module": self.module,
            "version": self.version,
            "tier": self.tier,
            "agent": self.agent,
            "status": self.label,
            "restore_attempts": self.attempts,
            "error": self.error,
        }


class Restorer:
    """Re-applies recorded deployments with bounded retries and keeps each one's state.

    Args:
        policy: attempts and backoff per module.
    """

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        """Nothing is expected until :meth:`expect`."""
        self.policy = policy or RetryPolicy()
        self._states: dict[str, RestoreStatus] = {}
        self._lock = threading.Lock()

    def expect(self, records: Sequence[DeploymentRecord]) -> None:
        """Mark every record's module ``restoring`` (call before the gateway serves)."""
        with self._lock:
            for r in records:
                self._states[r.module] = RestoreStatus(
                    r.module, r.version, r.tier, r.agent, "restoring"
                )

    def run(
        self,
        records: Sequence[DeploymentRecord],
        apply: Callable[[DeploymentRecord], object],
        *,
        stop: threading.Event,
    ) -> list[str]:
        """Apply each record, retrying a failure per :attr:`policy`; returns the modules restored.

        Modules are restored in parallel (at most 8 at once). ``stop`` ends the
        waits between tries (what is left stays ``restoring``). Never raises for
        a record: a module whose tries all fail is ``failed``.
        """
        self.expect(records)
        if not records:
            return []
        with ThreadPoolExecutor(
            max_workers=min(_MAX_WORKERS, len(records)), thread_name_prefix="mesh-restore"
        ) as pool:
            done = list(pool.map(lambda r: self._restore_one(r, apply, stop), records))
        return [r.module for r, ok in zip(records, done, strict=True) if ok]

    def _restore_one(
        self,
        record: DeploymentRecord,
        apply: Callable[[DeploymentRecord], object],
        stop: threading.Event,
    ) -> bool:
        where = record.agent or record.tier
        for attempt in range(1, self.policy.attempts + 1):
            if stop.is_set():
                return False
            try:
                apply(record)
            except Exception as exc:  # every failure is retried, then reported
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                last = attempt == self.policy.attempts
                self._set(record.module, "failed" if last else "restoring", attempt, error)
                if last:
                    logger.exception(
                        "could not restore %s %s on %s after %d tries; "
                        "its record stays for the next start",
                        record.module,
                        record.version,
                        where,
                        attempt,
                    )
                    return False
                delay = self.policy.delay_after(attempt)
                logger.warning(
                    "restoring %s %s on %s: try %d of %d failed (%s); again in %.1f s",
                    record.module,
                    record.version,
                    where,
                    attempt,
                    self.policy.attempts,
                    error,
                    delay,
                )
                if stop.wait(delay):
                    return False
            else:
                self._set(record.module, "serving", attempt, None)
                logger.info("restored %s %s on %s", record.module, record.version, where)
                return True
        return False  # not reached: the last try returns either way

    def _set(self, module: str, state: RestoreState, attempts: int, error: str | None) -> None:
        with self._lock:
            status = self._states[module]
            self._states[module] = replace(status, state=state, attempts=attempts, error=error)

    def statuses(self) -> list[RestoreStatus]:
        """Every expected module's restoration, by module."""
        with self._lock:
            return [self._states[m] for m in sorted(self._states)]

    def counts(self) -> dict[RestoreState, int]:
        """Expected modules per state (the ``mesh_restore_modules`` gauge), every state named."""
        out: dict[RestoreState, int] = {"restoring": 0, "serving": 0, "failed": 0}
        for s in self.statuses():
            out[s.state] += 1
        return out

    def unserved(self, served: Callable[[str], bool]) -> list[RestoreStatus]:
        """The modules still ``restoring`` or ``failed`` that nothing serves now."""
        return [s for s in self.statuses() if s.state != "serving" and not served(s.module)]

    def restoring(self, module: str) -> bool:
        """Whether ``module`` was recorded before this start and is still being restored."""
        with self._lock:
            status = self._states.get(module)
        return status is not None and status.state == "restoring"

    def forget(self, module: str) -> bool:
        """Drop ``module``'s state (its record was removed); returns whether it had one."""
        with self._lock:
            return self._states.pop(module, None) is not None
