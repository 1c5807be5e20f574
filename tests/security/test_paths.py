"""Strings that become file paths stay inside their directory.

Module names, versions, artifact ids and agent ids name files: the agent's module
cache (``modules/<name>/<version>-<sha>.onnx``), the control plane's artifact
store, the registry, the device password files. Before, a module version
``../../../x`` (signed, or with signatures waived) installed outside the cache, a
module name ``..`` made the agent delete its whole cache folder, an agent id
``..`` enrolled, and a link in the artifact store served a file from outside it.
One check (:func:`edge_agent._files.check_name` and
:func:`~edge_agent._files.confined`) is used by all of them; the table below is
what it must refuse and accept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent._cache import ArtifactError, ModuleCache
from edge_agent._files import check_name, confined
from edge_agent.protocol import ErrorCode, ModuleSpec
from mesh.edge._enrolment import EdgeSettings, EnrolmentError, enroll
from mesh.models._artifacts import ArtifactNotFoundError, ArtifactStore
from tests.support.agent_fixtures import ArtifactServer, SigningKey

BAD_NAMES = [
    "..",
    ".",
    "../x",
    "../../../../tmp/evil",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a\x00b",
    "",
    ".hidden",
    "x" * 129,
    "x y",
]
GOOD_NAMES = ["counter", "vehicle-counter", "v1", "cam-07", "a" * 128, "0" * 64, "m@1:2+3"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_check_refuses(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid module name .*use 1-128"):
        check_name(name, "module name")
    with pytest.raises(ValueError):
        confined(tmp_path, "modules", name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_the_check_accepts(name: str, tmp_path: Path) -> None:
    assert confined(tmp_path, name) == tmp_path / name


def test_a_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leads outside"):
        confined(tmp_path / "root", "out", "secret")


# ---------------------------------------------------------------- the agent's cache


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer()
    yield s
    s.close()


def _spec(server: ArtifactServer, key: SigningKey, name: str, version: str) -> ModuleSpec:
    data = b"model-bytes"
    sha = hashlib.sha256(data).hexdigest()
    return ModuleSpec.model_validate(
        {
            "name": name,
            "version": version,
            "url": server.add("artifact", data),
            "sha256": sha,
            "signature": key.sign(name, version, sha),
        }
    )


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("name", "version"), [("m", "../../../../escaped"), ("m", "{tmp}/abs"), ("..", "1")]
)
def test_a_signed_module_cannot_install_outside_the_cache(
    tmp_path: Path, server: ArtifactServer, name: str, version: str
) -> None:
    version = version.format(tmp=tmp_path)  # an absolute path, kept inside the test's dir
    key = SigningKey.generate()
    root = tmp_path / "deep" / "er" / "cache"
    cache = ModuleCache(root, public_key=key.public_raw)
    before = _files(tmp_path)
    with pytest.raises(ArtifactError) as info:
        cache.install(_spec(server, key, name, version))
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert "invalid module" in info.value.reason
    assert _files(tmp_path) == before


def test_removing_a_module_named_dotdot_deletes_nothing(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path / "cache", public_key=None)
    keep = tmp_path / "cache" / "state.json"
    keep.write_text("{}")
    cache.remove("..")
    assert keep.is_file()


# ---------------------------------------------------------------- the control plane


def test_the_artifact_store_does_not_follow_a_link_out(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"not an artifact")
    store = ArtifactStore(tmp_path / "artifacts")
    store.put_bytes(b"real")
    sha = "ab" * 32
    (tmp_path / "artifacts" / sha).symlink_to(outside)
    with pytest.raises(ArtifactNotFoundError):
        store.path(sha)
    for bad in ("../secret", "/etc/passwd", "a\x00"):
        with pytest.raises(ArtifactNotFoundError):
            store.path(bad)


@pytest.mark.parametrize("agent_id", ["..", ".hidden"])
def test_enrolment_refuses_an_agent_id_that_is_not_a_file_name(
    tmp_path: Path, agent_id: str
) -> None:
    settings = EdgeSettings(data_dir=tmp_path / "data")
    with pytest.raises(EnrolmentError, match="agent id"):
        enroll(agent_id, site="s1", settings=settings, public_key="unused")
    assert not (tmp_path / "data" / "mqtt-password").exists()
