"""An edge agent as the dashboard shows it: health, host, observed vs desired, heartbeats."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.edge._records import AgentView, HeartbeatSample

__all__ = ["describe_agent"]

#: Heartbeats listed per agent (its ring may hold more).
LAST_HEARTBEATS = 10


def describe_agent(
    view: AgentView, heartbeats: Sequence[HeartbeatSample] = (), *, now: float | None = None
) -> dict[str, Any]:
    """One agent, JSON-ready: what the overview's row and the agent page need.

    ``health`` is ``online``, ``stale`` (three heartbeat periods silent),
    ``offline`` (its status, or the broker's last will for it) or ``unknown``.
    """
    now = time.time() if now is None else now
    beat = view.last_heartbeat
    observed = view.observed
    return {
        "agent_id": view.agent_id,
        "health": view.health(now),
        "state": view.state,
        "site": view.site,
        "agent_version": view.status.agent_version if view.status else None,
        "reason": view.status.reason if view.status else None,
        "heartbeat_age_s": view.heartbeat_age_s(now),
        "period_s": beat.period_s if beat else None,
        "uptime_s": beat.uptime_s if beat else None,
        "cpu_percent": beat.host.cpu_percent if beat else None,
        "mem_percent": beat.host.mem_percent if beat else None,
        "rss_mb": beat.host.rss_mb if beat else None,
        "modules": {k: v.model_dump(mode="json") for k, v in beat.modules.items()} if beat else {},
        "outbox": beat.outbox.model_dump(mode="json") if beat else None,
        "faults": beat.faults.model_dump(mode="json") if beat else None,
        "flood": (
            {
                "dropped": dict(view.flood.dropped),
                "deferred": view.flood.deferred,
                "last_at": view.flood.last_at,
            }
            if view.flood is not None
            else None
        ),
        "desired_version": view.desired_version,
        "observed_version": observed.version if observed else None,
        "installed": [
            {
                "name": m.name,
                "version": m.version,
                "provider": m.provider,
                "route_mode": m.route_mode,
                "route_epoch": m.route_epoch,
                "sha256": m.sha256,
            }
            for m in (observed.installed if observed else [])
        ],
        "errors": [e.model_dump(mode="json") for e in (observed.errors if observed else [])],
        "pipelines": list(observed.pipelines) if observed else [],
        "heartbeats": [
            {
                "received_at": s.received_at,
                "seq": s.heartbeat.seq,
                "cpu_percent": s.cpu_percent,
                "mem_percent": s.mem_percent,
                "outbox_depth": s.heartbeat.outbox.depth,
            }
            for s in list(heartbeats)[-LAST_HEARTBEATS:]
        ],
    }
