"""Prometheus metrics in the text exposition format, with the standard library only.

Counters, gauges and histograms with labels, collected in a
:class:`MetricsRegistry` and rendered by :meth:`MetricsRegistry.render` as
Prometheus text format 0.0.4 (what ``GET /metrics`` serves). Observing is cheap
(a dict lookup, a bisect and two additions under a lock), so the gateway
records every request.

Example:
    >>> registry = MetricsRegistry()
    >>> latency = registry.histogram("demo_latency_seconds", "Latency.", ("module",),
    ...                              buckets=(0.001, 0.01))
    >>> latency.observe(0.002, "counter")
    >>> print(registry.render().splitlines()[3])
    demo_latency_seconds_bucket{module="counter",le="0.01"} 1
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS_S",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSnapshot",
    "MetricsRegistry",
]

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets in seconds: 0.1 ms to 10 s, dense where inference lives (0.2-50 ms).
DEFAULT_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        bad = [label for label in labels if not _LABEL.match(label) or label == "le"]
        if bad:
            raise ValueError(f"invalid label names for {name}: {bad}")
        self.name = name
        self.help = help_text
        self.label_names: Labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> Labels:
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {list(values)}"
            )
        return tuple(str(v) for v in values)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        """A counter; prefer :meth:`MetricsRegistry.counter`."""
        super().__init__(name, help_text, labels)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        """Add ``amount`` (>= 0) to the count of ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (amount {amount})")
        key = labels if len(labels) == len(self.label_names) else self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        """The current count of ``labels`` (0 when never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        """Exposition lines."""
        with self._lock:
            items = sorted(self._values.items())
        lines = self._header()
        lines += [f"{self.name}{_label_text(self.label_names, k)} {_number(v)}" for k, v in items]
        return lines


class Gauge(_Metric):
    """A value that goes up and down per label set, or read from a callback at render time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        """A gauge; prefer :meth:`MetricsRegistry.gauge`."""
        super().__init__(name, help_text, labels)
        self._values: dict[Labels, float] = {}
        self._collect: Callable[[], Iterable[tuple[Labels, float]]] | None = None

    def set(self, value: float, *labels: str) -> None:
        """Set the value of ``labels``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def add(self, amount: float, *labels: str) -> None:
        """Add ``amount`` (may be negative) to the value of ``labels``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, *labels: str) -> None:
        """Forget ``labels`` (e.g. a replica that is gone)."""
        with self._lock:
            self._values.pop(self._key(labels), None)

    def value(self, *labels: str) -> float:
        """The current value of ``labels`` (0 when never set)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def set_collector(self, collect: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """Read ``(labels, value)`` pairs from ``collect()`` at each render instead."""
        self._collect = collect

    def render(self) -> list[str]:
        """Exposition lines."""
        if self._collect is not None:
            items = sorted((self._key(k), float(v)) for k, v in self._collect())
        else:
            with self._lock:
                items = sorted(self._values.items())
        lines = self._header()
        lines += [f"{self.name}{_label_text(self.label_names, k)} {_number(v)}" for k, v in items]
        return lines


class HistogramSnapshot:
    """Bucket counts of one label set at one moment, with quantile estimates.

    Attributes:
        bounds: upper bounds of the buckets (without +Inf).
        counts: observations per bucket (the last one is the +Inf overflow).
        total: the sum of all observations.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...], counts: list[int], total: float) -> None:
        """Wrap copied bucket counts."""
        self.bounds = bounds
        self.counts = counts
        self.total = total

    @property
    def count(self) -> int:
        """Observations in all buckets."""
        return sum(self.counts)

    def minus(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """The observations made since ``earlier`` (for windows)."""
        counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        return HistogramSnapshot(self.bounds, counts, self.total - earlier.total)

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile (linear inside a bucket); None when empty."""
        n = self.count
        if n == 0:
            return None
        rank = q * n
        seen = 0
        for i, c in enumerate(self.counts):
            if seen + c >= rank and c > 0:
                lower = self.bounds[i - 1] if i > 0 else 0.0
                upper = self.bounds[i] if i < len(self.bounds) else self.bounds[-1]
                return lower + (upper - lower) * ((rank - seen) / c)
            seen += c
        return self.bounds[-1]


class _HistogramSeries:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class Histogram(_Metric):
    """Observations counted in cumulative buckets per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
    ) -> None:
        """A histogram; prefer :meth:`MetricsRegistry.histogram`."""
        super().__init__(name, help_text, labels)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing, got {list(buckets)}")
        self.bounds = bounds
        self._series: dict[Labels, _HistogramSeries] = {}

    def observe(self, value: float, *labels: str) -> None:
        """Count one observation of ``value`` under ``labels``."""
        key = labels if len(labels) == len(self.label_names) else self._key(labels)
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _HistogramSeries(len(self.bounds) + 1)
            series.counts[index] += 1
            series.total += value

    def snapshot(self, *labels: str) -> HistogramSnapshot:
        """A copy of the buckets of ``labels`` (empty when never observed)."""
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                return HistogramSnapshot(self.bounds, [0] * (len(self.bounds) + 1), 0.0)
            return HistogramSnapshot(self.bounds, list(series.counts), series.total)

    def label_sets(self) -> list[Labels]:
        """Every label set observed so far."""
        with self._lock:
            return sorted(self._series)

    def render(self) -> list[str]:
        """Exposition lines: cumulative ``_bucket`` lines, then ``_sum`` and ``_count``."""
        with self._lock:
            items = sorted((k, list(s.counts), s.total) for k, s in self._series.items())
        lines = self._header()
        for key, counts, total in items:
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(
                    f"{self.name}_bucket{_label_text(self.label_names, key, le)} {cumulative}"
                )
            labels = _label_text(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {_number(total)}")
            lines.append(f"{self.name}_count{labels} {cumulative}")
        return lines


class MetricsRegistry:
    """The metrics of one process, rendered together.

    Registering a name twice returns the first metric when kind and labels agree.
    """

    def __init__(self) -> None:
        """An empty registry."""
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            known = self._metrics.get(metric.name)
            if known is None:
                self._metrics[metric.name] = metric
                return metric
        if type(known) is not type(metric) or known.label_names != metric.label_names:
            raise ValueError(
                f"metric {metric.name} is already registered as a {known.kind} with labels "
                f"{list(known.label_names)}"
            )
        return known

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """The counter ``name`` (created on first use)."""
        metric = self._add(Counter(name, help_text, labels))
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        """The gauge ``name`` (created on first use)."""
        metric = self._add(Gauge(name, help_text, labels))
        assert isinstance(metric, Gauge)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
    ) -> Histogram:
        """The histogram ``name`` (created on first use)."""
        metric = self._add(Histogram(name, help_text, labels, buckets))
        assert isinstance(metric, Histogram)
        return metric

    def render(self) -> str:
        """Every metric in the text exposition format, sorted by name."""
        with self._lock:
            metrics = [self._metrics[name] for name in sorted(self._metrics)]
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
