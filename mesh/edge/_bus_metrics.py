"""The edge bus on ``/metrics``: what it received and what it held back, read at each scrape.

- ``mesh_edge_bus_messages{kind}``: counts since start from
  :meth:`~mesh.edge._bus.EdgeBus.stats`: ``messages`` handed to the dispatcher,
  ``events`` (distinct event ids), ``duplicate_events``, ``malformed`` and
  ``handler_errors``. ``bench/fleet.py`` counts the QoS 1 events agents sent
  across a broker restart against ``events``.
- ``mesh_edge_flood_limited{agent,kind}``: agents over their rates
  (:meth:`~mesh.edge._flood.FloodGuard.expose`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.core._metrics import MetricsRegistry
    from mesh.edge._bus import EdgeBus

__all__ = ["expose_bus"]

#: The counters of :class:`~mesh.edge._records.EdgeBusStats` served, by ``kind``.
KINDS = ("messages", "events", "duplicate_events", "malformed", "handler_errors")


def expose_bus(metrics: MetricsRegistry, bus: EdgeBus) -> None:
    """Serve the bus's counters and its flood limits' reports on ``metrics``."""

    def read() -> list[tuple[tuple[str, ...], float]]:
        stats = bus.stats()
        return [((kind,), float(getattr(stats, kind))) for kind in KINDS]

    metrics.gauge_callback(
        "mesh_edge_bus_messages",
        "What the control plane's edge bus received since start, by kind.",
        ("kind",),
        read,
    )
    bus.flood.expose(metrics)
