"""Reading the Prometheus text exposition in tests: one sample's value by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["sample"]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in ``text``; None when absent.

    Example:
        >>> sample('x_total{code="200"} 3.0\\n', "x_total", code="200")
        3.0
    """
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
