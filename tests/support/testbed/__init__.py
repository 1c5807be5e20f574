"""A test bed of hosts on one machine: Linux network namespaces, a bridge, link delays (issue 16).

Hosts ``cloud``, ``fog-0``, ``fog-1``, ``edge-1..3`` and ``client`` are network
namespaces joined by veth pairs to a bridge, on a subnet (``10.77.0.0/24``) that
exists only inside them; traffic between groups is delayed in user space by the
numbers of a scenario's ``links:`` (``_delay.py`` says how and why). Needs root
and ``ip`` (iproute2); :func:`require_namespaces` skips a test otherwise, or
fails it under ``MESH_REQUIRE_SERVICES=1``.

Example::

    with TestBed(links=links_of("scenarios/traffic.yaml")) as bed:
        bed.spawn("cloud", ["python", "-m", "http.server", "--bind", bed.address("cloud")])
        bed.run("edge-1", ["curl", f"http://{bed.address('cloud')}:8000/"])

CLI (a test bed for manual work; ``down`` removes those whose owner is gone)::

    python -m tests.support.testbed up --scenario scenarios/traffic.yaml
    python -m tests.support.testbed down
"""

from __future__ import annotations

from tests.support.testbed._bed import TestBed
from tests.support.testbed._netns import NetnsError, sweep
from tests.support.testbed._plan import DEFAULT_HOSTS, DEFAULT_SUBNET, HostSpec, Plan, make_plan
from tests.support.testbed._require import links_of, require_namespaces

__all__ = [
    "DEFAULT_HOSTS",
    "DEFAULT_SUBNET",
    "HostSpec",
    "NetnsError",
    "Plan",
    "TestBed",
    "links_of",
    "make_plan",
    "require_namespaces",
    "sweep",
]
