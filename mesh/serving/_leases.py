"""The source handover's wire contract: what a ``remote`` route hands a replica.

A *remote* route moves a site's pipeline source from its agent to a replica
(:mod:`mesh.edge._handover` is the control plane's side, which publishes the
leases; :mod:`mesh.serving.replica._pipelines` is the replica's, which follows
them). Both sides import the records and topics from here, the layer they
share, so that serving never imports the edge.

Example:
    >>> lease = Lease(site="B1", agent="j-B1", topic="mesh/v1/sensors/B1/camera",
    ...               stream="counts", since_ts=100.0)
    >>> lease.covers(99.9), lease.covers(100.0)
    (False, True)
    >>> lease_topic("mesh/v1", "counter", "counter-v1-3f2a1b")
    'mesh/v1/modules/counter/pipelines/counter-v1-3f2a1b'
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from edge_agent.protocol import Topics, check_topic_filter

__all__ = ["Lease", "LeaseList", "PipelineSource", "lease_topic", "observed_topic"]


@dataclass(frozen=True, slots=True)
class PipelineSource:
    """Where a site's pipeline takes its frames (what a ``remote`` route hands over).

    Attributes:
        site: the site (its events' topic level).
        topic: the MQTT topic the frames are published on.
        stream: the event stream the pipeline publishes.
    """

    site: str
    topic: str
    stream: str


def lease_topic(prefix: str, module: str, replica: str) -> str:
    """Where a replica's lease list is retained."""
    return f"{prefix}/modules/{module}/pipelines/{replica}"


def observed_topic(prefix: str, module: str, replica: str) -> str:
    """Where the replica says which lease-list version it follows."""
    return f"{lease_topic(prefix, module, replica)}/observed"


@dataclass(frozen=True, slots=True)
class Lease:
    """One site's pipeline run by a replica.

    Attributes:
        site: the site (events go to ``{p}/events/{site}/{stream}``).
        agent: the agent whose pipeline it is (named in the events).
        topic: the MQTT source the frames come on.
        stream: the event stream.
        since_ts: frames captured at or after this are the replica's (Unix s).
        until_ts: frames captured at or after this are not (None: open).
    """

    site: str
    agent: str
    topic: str
    stream: str
    since_ts: float
    until_ts: float | None = None

    def covers(self, captured_ts: float) -> bool:
        """Whether a frame captured then is this lease's."""
        return self.since_ts <= captured_ts and (
            self.until_ts is None or captured_ts < self.until_ts
        )


@dataclass(frozen=True, slots=True)
class LeaseList:
    """A replica's leases at one version (the retained message)."""

    replica: str
    version: int
    leases: tuple[Lease, ...] = ()

    def to_json(self) -> bytes:
        """The retained payload."""
        return json.dumps(
            {
                "schema_version": 1,
                "kind": "replica_pipelines",
                "replica": self.replica,
                "version": self.version,
                "pipelines": [asdict(lease) for lease in self.leases],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> LeaseList:
        """Parse a retained payload.

        Raises:
            ValueError: naming the field that is missing or wrong.
        """
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("kind") != "replica_pipelines":
            raise ValueError("expected an object with kind 'replica_pipelines'")
        if doc.get("schema_version") != 1:
            raise ValueError(f"schema_version {doc.get('schema_version')!r}, expected 1")
        leases = []
        for i, item in enumerate(doc.get("pipelines") or []):
            try:
                until = item.get("until_ts")
                # The replica subscribes to the topic and publishes events to
                # {p}/events/{site}/{stream}: a broker disconnects it for bad ones.
                lease = Lease(
                    site=Topics.check_segment(item["site"]),
                    agent=str(item["agent"]),
                    topic=check_topic_filter(item["topic"], what="lease topic"),
                    stream=Topics.check_segment(item["stream"]),
                    since_ts=float(item["since_ts"]),
                    until_ts=None if until is None else float(until),
                )
                if not math.isfinite(lease.since_ts):
                    raise ValueError("since_ts is not finite")
                leases.append(lease)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(
                    f"pipelines[{i}]: needs site, agent, topic, stream, since_ts"
                ) from exc
        return cls(str(doc.get("replica", "")), int(doc["version"]), tuple(leases))
