"""A module's live error: its outputs joined with the ground truth that arrives later.

A pipeline's event carries a sample's outputs and the capture time of its frame
(``source_ts``); a label message, later, the true values for the same frame.
:class:`LiveErrors` joins the two on ``(module, site, round(ts, 3))``, whichever
comes first, and keeps each joined sample's error (the mean absolute difference
of the values; a label shorter than the outputs covers their first values, e.g.
the first row of a batch) with the version that computed it and when it was joined, by
the injected clock. :meth:`LiveErrors.window` is the error over a window; the
drift check reads it per site, the canary per version.

A label message is JSON ``{"site": str, "ts": number (the frame's
``source_ts``), "values": [number, ...]}``; :func:`parse_label` reads one for
both of its readers (the drift service and the fresh-data service).

Memory is bounded: at most ``max_pending`` unmatched outputs and labels per
module (the oldest dropped first; either side waits at most ``max_wait_s``) and
``max_errors`` joined errors per module and site, kept ``retain_s``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

__all__ = ["LABEL_FORM", "ErrorWindow", "Label", "LiveErrors", "ScoredSample", "parse_label"]

#: What a label message looks like (said by every error about one).
LABEL_FORM = '{"site": str, "ts": number (the frame\'s source_ts), "values": [number, ...]}'


@dataclass(frozen=True, slots=True)
class ErrorWindow:
    """Joined samples in a window and their mean absolute error (None when there are none)."""

    n: int
    mae: float | None


@dataclass(frozen=True, slots=True)
class ScoredSample:
    """One output joined with its label: when (the clock's), where, which version, the error."""

    at: float
    site: str
    version: str
    error: float


@dataclass(frozen=True, slots=True)
class Label:
    """The true values of the frame ``site`` captured at ``ts``."""

    site: str
    ts: float
    values: tuple[float, ...]


def parse_label(payload: bytes) -> Label:
    """One label message (:data:`LABEL_FORM`).

    Raises:
        ValueError: not JSON, not an object, or a field that is not as expected
            (the message names it and says what was expected).

    Example:
        >>> parse_label(b'{"site": "j1", "ts": 12.5, "values": [3, 1]}')
        Label(site='j1', ts=12.5, values=(3.0, 1.0))
    """
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc}); expected {LABEL_FORM}") from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object {LABEL_FORM}, got {type(body).__name__}")
    site, ts, values = body.get("site"), body.get("ts"), body.get("values")
    if not isinstance(site, str) or not site:
        raise ValueError(f"site: expected a non-empty string, got {site!r}")
    if not _finite(ts):
        raise ValueError(f"ts: expected the frame's source_ts (finite Unix seconds), got {ts!r}")
    if not isinstance(values, list) or not values or not all(_finite(v) for v in values):
        raise ValueError(
            f"values: expected a non-empty list of finite numbers, got {str(values)[:80]}"
        )
    return Label(site, float(ts), tuple(float(v) for v in values))


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class _Pending:
    at: float
    version: str | None  # outputs only
    values: tuple[float, ...]


_Key = tuple[str, float]  # (site, round(ts, 3))


class LiveErrors:
    """Outputs joined with labels per module and site; the error over windows.

    Args:
        clock: the control plane's clock (``time.time``); :meth:`window`'s
            ``since`` is in it.
        max_wait_s: how long an output waits for its label (and a label for
            its output).
        max_pending: unmatched outputs (and labels) kept per module.
        retain_s: how long a joined error is kept.
        max_errors: joined errors kept per module and site.

    Example:
        >>> now = [100.0]
        >>> errors = LiveErrors(clock=lambda: now[0])
        >>> errors.add_output("counter", "j1", "v1", 12.0004, [3.0, 1.0])
        False
        >>> errors.add_label("counter", "j1", 12.0, [2.0, 1.0])
        True
        >>> errors.window("counter", since=0.0)
        ErrorWindow(n=1, mae=0.5)
        >>> errors.window("counter", since=0.0, version="v2")
        ErrorWindow(n=0, mae=None)
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_wait_s: float = 300.0,
        max_pending: int = 20_000,
        retain_s: float = 3600.0,
        max_errors: int = 20_000,
    ) -> None:
        """Nothing joined yet."""
        if not (max_wait_s > 0 and retain_s > 0 and max_pending >= 1 and max_errors >= 1):
            raise ValueError(
                "max_wait_s and retain_s must be > 0, max_pending and max_errors >= 1; got "
                f"{max_wait_s!r}, {retain_s!r}, {max_pending!r}, {max_errors!r}"
            )
        self._clock = clock
        self._max_wait_s = max_wait_s
        self._max_pending = max_pending
        self._retain_s = retain_s
        self._max_errors = max_errors
        self._lock = threading.Lock()
        self._outputs: dict[str, OrderedDict[_Key, _Pending]] = {}
        self._labels: dict[str, OrderedDict[_Key, _Pending]] = {}
        self._errors: dict[tuple[str, str], deque[ScoredSample]] = {}
        #: Pairs whose values differ in length (not scored), and unmatched entries dropped.
        self.mismatched = 0
        self.dropped = 0

    def add_output(
        self, module: str, site: str, version: str, ts: float, values: Sequence[float]
    ) -> bool:
        """A sample's outputs; returns whether it joined a label that was waiting."""
        return self._add(module, site, ts, _values(values), version)

    def add_label(self, module: str, site: str, ts: float, values: Sequence[float]) -> bool:
        """A sample's true values; returns whether it joined an output that was waiting."""
        return self._add(module, site, ts, _values(values), None)

    def _add(
        self, module: str, site: str, ts: float, values: tuple[float, ...], version: str | None
    ) -> bool:
        if not values or not math.isfinite(ts):
            return False
        now = self._clock()
        key = (site, round(ts, 3))
        is_output = version is not None
        with self._lock:
            mine = (self._outputs if is_output else self._labels).setdefault(module, OrderedDict())
            other = (self._labels if is_output else self._outputs).setdefault(module, OrderedDict())
            self._expire(mine, now)
            self._expire(other, now)
            match = other.pop(key, None)
            if match is None:
                mine.pop(key, None)
                mine[key] = _Pending(now, version, values)
                if len(mine) > self._max_pending:
                    mine.popitem(last=False)
                    self.dropped += 1
                return False
            output, label = (values, match.values) if is_output else (match.values, values)
            ran = version if is_output else match.version
            assert ran is not None
            if len(output) < len(label):
                self.mismatched += 1
                return False
            # A label may cover only the first values (e.g. the first row of a batch).
            scored = output[: len(label)]
            error = math.fsum(abs(o - t) for o, t in zip(scored, label, strict=True)) / len(label)
            ring = self._errors.get((module, site))
            if ring is None:
                ring = self._errors[(module, site)] = deque(maxlen=self._max_errors)
            ring.append(ScoredSample(now, site, ran, error))
            while ring and ring[0].at < now - self._retain_s:
                ring.popleft()
            return True

    def _expire(self, pending: OrderedDict[_Key, _Pending], now: float) -> None:
        while pending:
            key, first = next(iter(pending.items()))
            if first.at >= now - self._max_wait_s:
                return
            del pending[key]
            self.dropped += 1

    def window(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> ErrorWindow:
        """Samples joined at or after ``since`` (the clock's time): how many, their MAE.

        Args:
            module: the module.
            since: the window's start, in the clock given at construction.
            site: one site only (None: every site).
            version: one version only (None: every version).
        """
        errors = self.samples(module, since=since, site=site, version=version)
        if not errors:
            return ErrorWindow(0, None)
        return ErrorWindow(len(errors), math.fsum(errors) / len(errors))

    def samples(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> list[float]:
        """The joined errors :meth:`window` averages, newest first."""
        with self._lock:
            rings = [r for (m, s), r in self._errors.items() if m == module and site in (None, s)]
            out: list[float] = []
            for ring in rings:
                for sample in reversed(ring):  # newest first: stop at the window's start
                    if sample.at < since:
                        break
                    if version is None or sample.version == version:
                        out.append(sample.error)
        return out

    def versions(self, module: str, site: str, *, since: float) -> list[str]:
        """Versions with samples joined at ``site`` since ``since``, the newest's first."""
        with self._lock:
            ring = self._errors.get((module, site))
            seen: dict[str, None] = {}
            for sample in reversed(ring or ()):
                if sample.at < since:
                    break
                seen.setdefault(sample.version, None)
        return list(seen)

    def forget(self, module: str) -> None:
        """Drop everything kept for ``module``."""
        with self._lock:
            self._outputs.pop(module, None)
            self._labels.pop(module, None)
            for key in [k for k in self._errors if k[0] == module]:
                del self._errors[key]


def _values(values: Sequence[float]) -> tuple[float, ...]:
    """Finite floats, or () when any is not one (such a sample is not scored)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return ()
    return out if all(math.isfinite(v) for v in out) else ()
