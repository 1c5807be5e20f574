"""The test bed's plan: which hosts, their addresses, and the delay on every path.

Pure data, no system calls (unit-tested in ``tests/unit/test_testbed_plan.py``).
Hosts belong to a group (``cloud``, ``fog``, ``edge``, ``client``); addresses
come in one block of ten per group on the test subnet, in group order::

    cloud 10.77.0.10 · fog-0 .20 · fog-1 .21 · edge-1 .30 · edge-2 .31 · edge-3 .32 · client .40

Links are a scenario's ``links:`` (:class:`mesh.scenario._nodes.Link`): each
end is a group or a host name, the most specific declaration wins (host over
group), and ``delay_ms`` is one way, applied on both directions, as
:mod:`mesh.scenario._linkem` does for single-host runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.scenario._linkem import LinkShape
from mesh.scenario._nodes import Link

__all__ = [
    "DEFAULT_HOSTS",
    "DEFAULT_SUBNET",
    "GROUPS",
    "HostSpec",
    "Plan",
    "make_plan",
]

GROUPS = ("cloud", "fog", "edge", "client")
"""The host groups, in address-block order."""

DEFAULT_SUBNET = "10.77.0.0/24"
"""A private subnet that exists only inside the test bed's namespaces."""

_BLOCK = 10  # addresses per group: group i gets .(10*(i+1)) .. .(10*(i+1)+9)


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host of the test bed.

    Attributes:
        name: the host's name (``edge-1``); also a link endpoint.
        group: one of :data:`GROUPS`.

    Example:
        >>> HostSpec("fog-0", "fog").group
        'fog'
    """

    name: str
    group: str

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(
                f"host {self.name!r}: group must be one of {GROUPS}, got {self.group!r}"
            )
        if (
            not self.name
            or len(self.name) > 20
            or not all(c.isalnum() or c == "-" for c in self.name)
        ):
            raise ValueError(f"host name must be 1-20 letters, digits or '-', got {self.name!r}")


DEFAULT_HOSTS = (
    HostSpec("cloud", "cloud"),
    HostSpec("fog-0", "fog"),
    HostSpec("fog-1", "fog"),
    HostSpec("edge-1", "edge"),
    HostSpec("edge-2", "edge"),
    HostSpec("edge-3", "edge"),
    HostSpec("client", "client"),
)
"""The hosts of issue 16: Ray head and control plane, two fog workers, three agents, a client."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Addresses and path shapes of one test bed.

    Attributes:
        subnet: the test subnet (``10.77.0.0/24``).
        hosts: the hosts, in order.
        addresses: host name to its address on the subnet.
        paths: host name to ``{peer address: shape}`` for every delayed path
            leaving that host (paths with no delay, jitter or rate are absent).
    """

    subnet: ipaddress.IPv4Network
    hosts: tuple[HostSpec, ...]
    addresses: Mapping[str, str]
    paths: Mapping[str, Mapping[str, LinkShape]]

    def host(self, name: str) -> HostSpec:
        """The host called ``name``; ValueError naming the hosts there are."""
        for spec in self.hosts:
            if spec.name == name:
                return spec
        raise ValueError(
            f"no host {name!r} in the test bed (hosts: {[h.name for h in self.hosts]})"
        )

    def shape(self, a: str, b: str) -> LinkShape:
        """The shape of the path from host ``a`` to host ``b`` (no delay if none declared)."""
        return self.paths[self.host(a).name].get(self.addresses[self.host(b).name], LinkShape())


def make_plan(
    hosts: Sequence[HostSpec] = DEFAULT_HOSTS,
    links: Sequence[Link] = (),
    *,
    subnet: str = DEFAULT_SUBNET,
) -> Plan:
    """Give every host an address and every pair of hosts its declared link.

    Args:
        hosts: the hosts (unique names; at most ten per group).
        links: a scenario's ``links:``; endpoints are groups or host names.
        subnet: an IPv4 subnet of at least /25 (the group blocks reach .49).

    Raises:
        ValueError: duplicate hosts, a group over ten hosts, a subnet too small or
            not private, or a link naming an endpoint that is neither a group nor a host.

    Example:
        >>> plan = make_plan(links=[Link.model_validate({"from": "edge", "to": "cloud", "delay_ms": 40})])
        >>> plan.addresses["edge-1"], plan.shape("edge-1", "cloud").delay_ms
        ('10.77.0.30', 40.0)
    """
    net = ipaddress.IPv4Network(subnet)
    if not net.is_private or net.num_addresses < _BLOCK * (len(GROUPS) + 1):
        raise ValueError(f"subnet must be a private IPv4 subnet of /25 or larger, got {subnet!r}")
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError(f"host names must be unique, got {names}")
    addresses: dict[str, str] = {}
    for g, group in enumerate(GROUPS):
        members = [h for h in hosts if h.group == group]
        if len(members) > _BLOCK:
            raise ValueError(
                f"at most {_BLOCK} hosts per group, group {group!r} has {len(members)}"
            )
        for k, spec in enumerate(members):
            addresses[spec.name] = str(net.network_address + _BLOCK * (g + 1) + k)
    known = set(GROUPS) | set(names)
    for link in links:
        for end in (link.from_, link.to):
            if end not in known:
                raise ValueError(
                    f"link {link.key}: {end!r} is neither a group {GROUPS} nor a host {names}"
                )
    paths = {
        a.name: {
            addresses[b.name]: shape
            for b in hosts
            if b.name != a.name and (shape := _shape(links, a, b)) != LinkShape()
        }
        for a in hosts
    }
    return Plan(net, tuple(hosts), addresses, paths)


def _shape(links: Sequence[Link], a: HostSpec, b: HostSpec) -> LinkShape:
    best: tuple[int, Link] | None = None
    for link in links:
        for x, y in ((link.from_, link.to), (link.to, link.from_)):
            if x in (a.name, a.group) and y in (b.name, b.group):
                rank = (x == a.name) + (y == b.name)
                if best is None or rank > best[0]:
                    best = (rank, link)
    if best is None:
        return LinkShape()
    link = best[1]
    rate = link.bandwidth_mbps * 1000.0 if link.bandwidth_mbps else None
    return LinkShape(delay_ms=link.delay_ms, jitter_ms=link.jitter_ms, rate_kbps=rate)
