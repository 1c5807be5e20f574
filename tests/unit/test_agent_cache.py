"""Module cache: verified downloads, atomic installs, state that survives a restart."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent._cache import ArtifactError, ModuleCache
from edge_agent.protocol import DesiredState, ErrorCode, ModuleSpec
from tests.support.agent_fixtures import ArtifactServer, SigningKey


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _spec(
    server: ArtifactServer, key: SigningKey, data: bytes, version: str = "1", **kw: object
) -> ModuleSpec:
    sha = hashlib.sha256(data).hexdigest()
    fields: dict[str, object] = {
        "name": "m",
        "version": version,
        "url": server.add(f"m{version}", data),
        "sha256": sha,
        "signature": key.sign("m", version, sha),
    }
    fields.update(kw)
    return ModuleSpec.model_validate(fields)


def test_install_verifies_and_is_idempotent(
    tmp_path: Path, server: ArtifactServer, key: SigningKey
) -> None:
    cache = ModuleCache(tmp_path, public_key=key.public_raw)
    spec = _spec(server, key, b"model-bytes")
    inst = cache.install(spec)
    assert inst.path.read_bytes() == b"model-bytes" and inst.version == "1"
    hits = len(server.hits)
    assert cache.install(spec).path == inst.path
    assert len(server.hits) == hits  # cached: not fetched again
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("case", ["sha", "signature", "wrong-key", "unsigned", "size"])
def test_install_refuses_bad_artifacts(
    tmp_path: Path, server: ArtifactServer, key: SigningKey, case: str
) -> None:
    cache = ModuleCache(tmp_path, public_key=key.public_raw)
    data = b"model-bytes"
    if case == "sha":
        spec = _spec(
            server,
            key,
            data,
            sha256=hashlib.sha256(b"other").hexdigest(),
            signature=key.sign("m", "1", hashlib.sha256(b"other").hexdigest()),
        )
        needle = "sha256 mismatch"
    elif case == "signature":
        spec = _spec(server, key, data, signature=key.sign("m", "2", "0" * 64))
        needle = "does not verify"
    elif case == "wrong-key":
        spec = _spec(server, SigningKey.generate(), data)
        needle = "does not verify"
    elif case == "unsigned":
        cache = ModuleCache(tmp_path, public_key=None)
        spec = _spec(server, key, data)
        needle = "no public key"
    else:
        spec = _spec(server, key, data, size=3)
        needle = "over 3 bytes"
    with pytest.raises(ArtifactError, match=needle) as err:
        cache.install(spec)
    assert err.value.code is ErrorCode.INTEGRITY
    assert not list((tmp_path / "modules").rglob("*.onnx"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_signature_can_be_waived_for_tests(
    tmp_path: Path, server: ArtifactServer, key: SigningKey
) -> None:
    cache = ModuleCache(tmp_path, public_key=None, require_signature=False)
    assert cache.install(_spec(server, key, b"x")).path.exists()


def test_download_errors(tmp_path: Path, server: ArtifactServer, key: SigningKey) -> None:
    cache = ModuleCache(tmp_path, public_key=key.public_raw, timeout_s=5)
    spec = _spec(server, key, b"x").model_copy(update={"url": server.base + "/missing"})
    with pytest.raises(ArtifactError, match="404") as err:
        cache.install(spec)
    assert err.value.code is ErrorCode.DOWNLOAD
    ftp = spec.model_copy(update={"url": "ftp://h/x"})
    with pytest.raises(ArtifactError, match="not http"):
        cache.install(ftp)


def test_state_survives_restart_and_skips_corrupt_files(
    tmp_path: Path, server: ArtifactServer, key: SigningKey
) -> None:
    cache = ModuleCache(tmp_path, public_key=key.public_raw)
    spec = _spec(server, key, b"v1")
    inst = cache.install(spec)
    desired = DesiredState(version=4, modules=[spec])
    cache.save_state(desired, {"m": inst})
    (tmp_path / "tmp" / "half.onnx").write_bytes(b"crash leftover")

    again = ModuleCache(tmp_path, public_key=key.public_raw)
    state = again.load_state()
    assert state.desired == desired and state.installed["m"].path == inst.path
    assert list((tmp_path / "tmp").iterdir()) == []

    inst.path.write_bytes(b"tampered")
    assert again.load_state().installed == {}
    again.state_path.write_text("{")
    assert again.load_state().desired is None


def test_remove_keeps_current(tmp_path: Path, server: ArtifactServer, key: SigningKey) -> None:
    cache = ModuleCache(tmp_path, public_key=key.public_raw)
    old = cache.install(_spec(server, key, b"v1", "1"))
    new = cache.install(_spec(server, key, b"v2", "2"))
    cache.remove("m", keep=new.path)
    assert new.path.exists() and not old.path.exists()
    cache.remove("m")
    assert not (tmp_path / "modules" / "m").exists()
