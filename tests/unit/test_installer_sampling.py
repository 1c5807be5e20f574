"""The installer carries a module's sampling policy in every agent's desired state."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.protocol import Route, SamplingPolicy
from mesh.edge._install import EdgeInstaller
from tests.unit.test_offload_routes import FakeAgentGateway, artifact, module_of

POLICY = SamplingPolicy(samples_per_min=6, reservoir=16)


@pytest.fixture
def edge() -> FakeAgentGateway:
    return FakeAgentGateway()


@pytest.fixture
def installer(tmp_path: Path, edge: FakeAgentGateway) -> EdgeInstaller:
    from mesh.edge._artifact_api import UrlSigner
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore

    return EdgeInstaller(
        edge,  # type: ignore[arg-type]
        store=ArtifactStore(tmp_path / "artifacts"),
        signer=ArtifactSigner.generate(),
        url_signer=UrlSigner(b"u" * 32),
        base_url="http://cp:8471",
    )


def test_set_sampling_republishes_the_holders_and_changes_nothing_else(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-1", "other", artifact("v1"), 5.0)
    installer.install("cam-2", "other", artifact("v1"), 5.0)
    before = module_of(edge.published[-2], "counter")
    n = len(edge.published)
    assert installer.set_sampling("counter", POLICY) == ["cam-1"]  # cam-2 does not hold it
    assert len(edge.published) == n + 1
    desired = edge.published[-1]
    assert desired.agent == "cam-1" and desired.version > edge.published[-2].version
    entry = module_of(desired, "counter")
    assert entry.sampling == POLICY
    assert entry.model_copy(update={"sampling": None}) == before  # the same artifact, route
    assert module_of(desired, "other").sampling is None
    assert installer.set_sampling("counter", POLICY) == []  # already so: nothing published
    assert len(edge.published) == n + 1


def test_installs_and_routes_from_then_on_carry_the_policy(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.set_sampling("counter", POLICY)  # before any install: kept for later
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert module_of(edge.published[-1], "counter").sampling == POLICY
    installer.set_route("cam-1", "counter", "offload", "counter-v1-abc", 5.0)
    assert module_of(edge.published[-1], "counter").sampling == POLICY
    installer.install("cam-1", "counter", artifact("v2"), 5.0)
    kept = module_of(edge.published[-1], "counter")
    assert (kept.version, kept.sampling, kept.route.target) == ("v2", POLICY, "counter-v1-abc")
    installer.set_route("cam-3", "counter", "offload", "r1", 5.0)  # a remote-only entry
    assert module_of(edge.published[-1], "counter").sampling == POLICY
    assert installer.set_sampling("counter", None) == ["cam-1", "cam-3"]
    assert module_of(edge.published[-1], "counter").sampling is None
    assert module_of(edge.published[-1], "counter").route != Route()
