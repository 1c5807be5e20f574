"""Prometheus metrics of one process, kept and exposed by ``prometheus-client``.

A :class:`MetricsRegistry` owns its own ``prometheus_client.CollectorRegistry`` (never
the library's global default, so tests and several servers in one process stay
apart). Its :meth:`~MetricsRegistry.counter`, :meth:`~MetricsRegistry.gauge` and
:meth:`~MetricsRegistry.histogram` return the library's ``Counter``, ``Gauge`` and
``Histogram`` (``metric.labels(...).inc()``); :meth:`~MetricsRegistry.gauge_callback`
adds a labelled gauge read at each scrape (gauges that read one source share one
read a scrape: :meth:`~MetricsRegistry.per_scrape`); :meth:`~MetricsRegistry.render`
is the text exposition format 0.0.4 that ``GET /metrics`` serves. The library's ``_created``
series are left out, so the exposition holds the names that were registered and
nothing else.

Prometheus computes quantiles from buckets on its side; a replica's ``/stats`` wants
them at once, so :meth:`MetricsRegistry.snapshot` copies one label set's buckets into
a :class:`HistogramSnapshot`, whose :meth:`~HistogramSnapshot.quantile` estimates as
``histogram_quantile()`` does.

Example:
    >>> registry = MetricsRegistry()
    >>> latency = registry.histogram("demo_latency_seconds", "Latency.", ("module",),
    ...                              buckets=(0.001, 0.01))
    >>> latency.labels("counter").observe(0.002)
    >>> print(registry.render().splitlines()[3])
    demo_latency_seconds_bucket{le="0.01",module="counter"} 1.0
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS_S",
    "HistogramSnapshot",
    "MetricsRegistry",
]

#: The Content-Type of what :meth:`MetricsRegistry.render` writes (text format 0.0.4).
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

# Classic Prometheus names: the library also takes UTF-8 names and escapes them on
# the way out, which would expose a name other than the one registered.
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: What a histogram's series add to its name (asked for by a series' name, render
#: the histogram).
_SUFFIX = re.compile(r"_(bucket|sum|count)$")

Labels = tuple[str, ...]
T = TypeVar("T")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise ModuleNotFoundError(
            "metrics need prometheus-client: pip install 'fogmesh[cloud]'"
        ) from exc
    return prometheus_client


class _CallbackGauge:
    """A collector: one labelled gauge whose values ``collect()`` returns at each scrape."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Labels,
        read: Callable[[], Iterable[tuple[Labels, float]]],
    ) -> None:
        self._name, self._help, self._labels, self._read = name, help_text, labels, read

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(self._name, self._help, labels=self._labels)

    def describe(self) -> Iterator[Metric]:
        """The family without samples, so registering does not call ``read``."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """The family with the values ``read()`` returns now."""
        family = self._family()
        for values, value in self._read():
            if len(values) != len(self._labels):
                raise ValueError(
                    f"{self._name} takes labels {list(self._labels)}, got {list(values)}"
                )
            family.add_metric([str(v) for v in values], float(value))
        yield family


class _Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _Only:
    """Some of a registry's metrics, as one collector (a render of named families)."""

    def __init__(self, metrics: Sequence[_Collects]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Each metric's families, in registration order."""
        for metric in self._metrics:
            yield from metric.collect()


class _WithoutCreated:
    """The registry's families less the ``_created`` samples prometheus-client adds."""

    def __init__(self, registry: _Collects) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """Each family of the registry, copied without its ``_created`` samples."""
        from prometheus_client.metrics_core import Metric

        for family in self._registry.collect():
            created = family.name + "_created"
            if not any(s.name == created for s in family.samples):
                yield family
                continue
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = [s for s in family.samples if s.name != created]
            yield copy


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str
    labels: Labels
    metric: Any
    bounds: tuple[float, ...] = ()


class MetricsRegistry:
    """The metrics of one process (or one server), rendered together.

    Registering a name twice returns the first metric when kind and labels agree,
    so parts sharing a registry can each ask for the metric they record.
    """

    def __init__(self) -> None:
        """An empty registry of its own.

        Raises:
            ModuleNotFoundError: prometheus-client is not installed (the cloud extra).
        """
        self._client = _prometheus()
        self.registry: CollectorRegistry = self._client.CollectorRegistry()
        self._exposed = _WithoutCreated(self.registry)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._scrape = threading.local()  # .reads: what this thread's render read so far

    def _add(
        self,
        kind: str,
        name: str,
        labels: Sequence[str],
        make: Callable[[], Any],
        bounds: tuple[float, ...] = (),
    ) -> Any:
        if not _NAME.match(name):
            raise ValueError(
                f"invalid metric name {name!r}: expected letters, digits, '_' and ':', "
                "not starting with a digit"
            )
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"invalid counter name {name!r}: expected a name ending in '_total'")
        bad = [label for label in labels if not _LABEL.match(label) or label.startswith("__")]
        if kind == "histogram" and "le" in labels:
            bad.append("le")
        if bad:
            raise ValueError(
                f"invalid label names for {name}: {bad} (expected letters, digits and '_', "
                "not starting with '__'; 'le' is a histogram's own)"
            )
        key = tuple(labels)
        with self._lock:
            known = self._entries.get(name)
            if known is None:
                entry = _Entry(kind, key, make(), bounds)
                self._entries[name] = entry
                return entry.metric
        if (known.kind, known.labels) != (kind, key):
            raise ValueError(
                f"metric {name} is already registered as a {known.kind} with labels "
                f"{list(known.labels)}, not a {kind} with labels {list(key)}"
            )
        return known.metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """The counter ``name`` (created on first use); its name ends in ``_total``."""
        metric: Counter = self._add(
            "counter",
            name,
            labels,
            lambda: self._client.Counter(name, help_text, labels, registry=self.registry),
        )
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        """The gauge ``name`` (created on first use)."""
        metric: Gauge = self._add(
            "gauge",
            name,
            labels,
            lambda: self._client.Gauge(name, help_text, labels, registry=self.registry),
        )
        return metric

    def gauge_callback(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Labels, float]]],
    ) -> None:
        """A gauge whose ``(label values, value)`` pairs ``read()`` returns at each render."""
        collector = _CallbackGauge(name, help_text, tuple(labels), read)

        def make() -> _CallbackGauge:
            self.registry.register(collector)
            return collector

        self._add("gauge_callback", name, labels, make)

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S,
    ) -> Histogram:
        """The histogram ``name`` (created on first use), with ``buckets`` as upper bounds."""
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        metric: Histogram = self._add(
            "histogram",
            name,
            labels,
            lambda: self._client.Histogram(
                name, help_text, labels, registry=self.registry, buckets=bounds
            ),
            bounds,
        )
        return metric

    def snapshot(self, histogram: Histogram, *labels: str) -> HistogramSnapshot:
        """Copy the buckets of ``histogram`` (of this registry) for the label values ``labels``.

        Read through the library's public ``collect()``; empty when never observed.

        Raises:
            ValueError: ``histogram`` is not this registry's, or ``labels`` does not
                match its label names.
        """
        with self._lock:
            entry = next((e for e in self._entries.values() if e.metric is histogram), None)
        if entry is None:
            raise ValueError(f"{histogram!r} is not a histogram of this registry")
        if len(labels) != len(entry.labels):
            raise ValueError(f"{histogram!r} takes labels {list(entry.labels)}, got {list(labels)}")
        want = dict(zip(entry.labels, labels, strict=True))
        cumulative = [0] * (len(entry.bounds) + 1)
        total = 0.0
        for family in histogram.collect():
            for sample in family.samples:
                if {k: v for k, v in sample.labels.items() if k != "le"} != want:
                    continue
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    index = len(entry.bounds) if math.isinf(le) else entry.bounds.index(le)
                    cumulative[index] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    total = sample.value
        counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
        return HistogramSnapshot(entry.bounds, counts, total)

    def per_scrape(self, read: Callable[[], T]) -> Callable[[], T]:
        """``read``, called at most once a :meth:`render`: its callbacks share one result.

        Gauges that walk the same source (every agent, say) each call the returned
        function; within one render the first call reads and the others get its
        result, so a scrape reads the source once. ``read`` is the cache key: pass
        the same callable (a bound method compares equal to itself) to share it.
        Outside a render each call reads afresh.

        Example:
            >>> registry = MetricsRegistry()
            >>> agents = registry.per_scrape(lambda: ["cam-1", "cam-2"])
            >>> registry.gauge_callback("demo_agents", "Agents.", (), lambda: [((), len(agents()))])
            >>> registry.gauge_callback("demo_first", "First.", ("agent",),
            ...                         lambda: [((agents()[0],), 1.0)])
            >>> "demo_agents 2.0" in registry.render()
            True
        """

        def shared() -> T:
            reads: dict[object, Any] | None = getattr(self._scrape, "reads", None)
            if reads is None:
                return read()
            if read not in reads:
                reads[read] = read()
            value: T = reads[read]
            return value

        return shared

    def render(self, names: Collection[str] | None = None) -> str:
        """Every metric in the text exposition format 0.0.4, or only those ``names``.

        ``names`` (``GET /metrics?name[]=...``) are the registered names (a
        histogram's ``_bucket``, ``_sum`` and ``_count`` name it too); each other
        metric is not even read, so asking for one gauge of a thousand agents
        costs that gauge's walk alone. An unknown name renders nothing.

        Example:
            >>> registry = MetricsRegistry()
            >>> registry.gauge_callback("demo_a", "A.", (), lambda: [((), 1.0)])
            >>> registry.gauge_callback("demo_b", "B.", (), lambda: 1 / 0)  # never read
            >>> registry.render(["demo_a"]).splitlines()[-1]
            'demo_a 1.0'
        """
        exposed = self._exposed
        if names is not None:
            wanted = {_SUFFIX.sub("", n) for n in names} | set(names)
            with self._lock:
                picked = [e.metric for n, e in self._entries.items() if n in wanted]
            exposed = _WithoutCreated(_Only(picked))
        outer = getattr(self._scrape, "reads", None)
        self._scrape.reads = {}
        try:
            text: bytes = self._client.generate_latest(exposed)
        finally:
            self._scrape.reads = outer
        return text.decode()


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
