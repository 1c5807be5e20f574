"""The multi-host test bed's plan (addresses, delays per path) and its skip rule, without root."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from mesh.scenario._linkem import LinkShape
from mesh.scenario._nodes import Link
from tests.support.testbed import _netns, _require
from tests.support.testbed._bed import ROOT
from tests.support.testbed._delay import _destination
from tests.support.testbed._plan import DEFAULT_HOSTS, HostSpec, make_plan


def link(a: str, b: str, delay_ms: float, **extra: float) -> Link:
    return Link.model_validate({"from": a, "to": b, "delay_ms": delay_ms, **extra})


def test_addresses_come_in_one_block_per_group() -> None:
    plan = make_plan()
    assert plan.addresses == {
        "cloud": "10.77.0.10",
        "fog-0": "10.77.0.20",
        "fog-1": "10.77.0.21",
        "edge-1": "10.77.0.30",
        "edge-2": "10.77.0.31",
        "edge-3": "10.77.0.32",
        "client": "10.77.0.40",
    }
    assert all(ipaddress.ip_address(a) in plan.subnet for a in plan.addresses.values())


def test_traffic_scenarios_links_give_each_pair_of_groups_its_delay() -> None:
    plan = make_plan(links=_require.links_of(ROOT / "scenarios" / "traffic.yaml"))
    assert plan.shape("edge-2", "cloud") == LinkShape(delay_ms=40, jitter_ms=5, rate_kbps=50_000)
    assert plan.shape("cloud", "edge-2") == plan.shape("edge-2", "cloud")  # both directions
    assert plan.shape("fog-1", "edge-3").delay_ms == 5
    assert plan.shape("fog-0", "cloud").delay_ms == 15
    # Undeclared pairs (same group, the client) are not delayed and not routed via the router.
    assert plan.shape("edge-1", "edge-2") == LinkShape()
    assert plan.shape("client", "cloud") == LinkShape()
    assert plan.addresses["cloud"] not in plan.paths["client"]
    assert set(plan.paths["cloud"]) == {
        plan.addresses[h] for h in ("fog-0", "fog-1", "edge-1", "edge-2", "edge-3")
    }


def test_a_host_link_wins_over_its_groups_link() -> None:
    plan = make_plan(links=[link("edge", "cloud", 40), link("edge-2", "cloud", 90)])
    assert plan.shape("edge-1", "cloud").delay_ms == 40
    assert plan.shape("edge-2", "cloud").delay_ms == 90
    assert plan.shape("cloud", "edge-2").delay_ms == 90


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"links": [link("edge", "moon", 5)]}, "'moon' is neither a group"),
        ({"hosts": [HostSpec("a", "fog"), HostSpec("a", "edge")]}, "unique"),
        ({"hosts": [HostSpec(f"f{i}", "fog") for i in range(11)]}, "at most 10 hosts per group"),
        ({"subnet": "8.8.8.0/24"}, "private IPv4 subnet"),
        ({"subnet": "10.77.0.0/28"}, "/25 or larger"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_plan(**kwargs)  # type: ignore[arg-type]


def test_bad_hosts_are_refused() -> None:
    with pytest.raises(ValueError, match="group must be one of"):
        HostSpec("x", "moon")
    with pytest.raises(ValueError, match="letters, digits"):
        HostSpec("a/b", "fog")
    with pytest.raises(ValueError, match="no host 'edge-9'"):
        make_plan().host("edge-9")


def test_names_carry_their_owner() -> None:
    assert _netns.owner("fmtb-4242-a1b2") == 4242
    assert _netns.owner("fmtb-4242-a1b2-edge-1") == 4242
    assert _netns.owner("fmtb-4242-a1b2-xk3j9") == 4242
    assert _netns.owner("fmtb-other") is None
    assert _netns.owner("docker-ns") is None


def test_the_router_reads_ipv4_destinations_only() -> None:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes([10, 77, 0, 30]), bytes([10, 77, 0, 10])
    )
    assert _destination(header + b"\0" * 20) == "10.77.0.10"
    assert _destination(b"\x60" + b"\0" * 39) is None  # IPv6
    assert _destination(b"\x45") is None  # truncated


def test_no_namespaces_skips_or_fails_under_require_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require.namespaces_unavailable.cache_clear()
    monkeypatch.setattr(_require.os, "geteuid", lambda: 1000)
    try:
        monkeypatch.delenv("MESH_REQUIRE_SERVICES", raising=False)
        with pytest.raises(pytest.skip.Exception, match="need root"):
            _require.require_namespaces()
        monkeypatch.setenv("MESH_REQUIRE_SERVICES", "1")
        with pytest.raises(pytest.fail.Exception, match="MESH_REQUIRE_SERVICES=1 but"):
            _require.require_namespaces()
    finally:
        _require.namespaces_unavailable.cache_clear()


def test_the_default_hosts_are_the_issues() -> None:
    assert [h.name for h in DEFAULT_HOSTS] == [
        "cloud",
        "fog-0",
        "fog-1",
        "edge-1",
        "edge-2",
        "edge-3",
        "client",
    ]
