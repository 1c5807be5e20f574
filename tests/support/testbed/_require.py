"""Whether this machine can make a test bed (root, ``ip``, TUN), and a scenario's links."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
from pathlib import Path

import pytest
import yaml

from mesh.scenario._nodes import Link
from tests.support.testbed import _netns

__all__ = ["links_of", "namespaces_unavailable", "require_namespaces"]


@functools.cache
def namespaces_unavailable() -> str | None:
    """Why no test bed can be made here (None when one can): tried once per process."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "`ip` is not installed (apt-get install iproute2)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (the delay router needs TUN devices)"
    probe = f"{_netns.PREFIX}{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        _netns.add(probe)
        _netns.ip("-n", probe, "link", "add", "b0", "type", "bridge")
    except _netns.NetnsError as exc:
        return f"cannot make a network namespace with a bridge: {exc}"
    finally:
        _netns.ip("netns", "del", probe, check=False)
    return None


def require_namespaces() -> None:
    """Skip the test when no test bed can be made here (fail under MESH_REQUIRE_SERVICES=1)."""
    reason = namespaces_unavailable()
    if reason is None:
        return
    if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def links_of(scenario: str | os.PathLike[str]) -> list[Link]:
    """The ``links:`` of a scenario file, validated as the scenario loader does.

    Only the links are read, so a scenario whose functions need extras not
    installed here still gives its network.
    """
    data = yaml.safe_load(Path(scenario).read_text(encoding="utf-8")) or {}
    return [Link.model_validate(link) for link in data.get("links") or []]
