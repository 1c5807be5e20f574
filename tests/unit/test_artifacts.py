"""Content-addressed artifacts, the signing key and the artifact endpoint (no broker)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from edge_agent.protocol import ModuleSpec, artifact_signing_message
from mesh.edge._artifact_api import (
    UrlSigner,
    artifact_router,
    create_artifact_app,
    etag_matches,
    serve_in_thread,
    signed_module_spec,
)
from mesh.edge._enrolment import EdgeSettings, EnrolmentStore, enroll
from mesh.models._artifacts import (
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactSigner,
    ArtifactStore,
    InvalidSignatureError,
    sha256_file,
    verify_signature,
)
from tests.support.http_errors import assert_error

# ---------------------------------------------------------------- the store


def test_put_bytes_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    info = store.put_bytes(b"onnx-v1")
    assert info.sha256 == hashlib.sha256(b"onnx-v1").hexdigest()
    assert info.path == tmp_path / "a" / info.sha256
    assert info.size == 7
    again = store.put_bytes(b"onnx-v1")
    assert again == info
    assert store.read_bytes(info.sha256) == b"onnx-v1"
    assert store.has(info.sha256)
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [info.sha256]


def test_put_file_hashes_while_copying(tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    store = ArtifactStore(tmp_path / "a")
    info = store.put_file(src)
    assert info.sha256 == sha256_file(src)
    assert info.size == src.stat().st_size
    assert store.put_file(src) == info
    assert [i.sha256 for i in store] == [info.sha256]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [info.sha256]


@pytest.mark.parametrize("bad", ["../etc/passwd", "A" * 64, "abc", "0" * 63 + "/", ""])
def test_malformed_digests_are_not_found(tmp_path: Path, bad: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactNotFoundError):
        store.path(bad)
    assert not store.has(bad)


def test_unknown_and_deleted(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    info = store.put_bytes(b"x")
    assert store.delete(info.sha256)
    assert not store.delete(info.sha256)
    with pytest.raises(ArtifactNotFoundError, match=info.sha256):
        store.info(info.sha256)
    assert list(ArtifactStore(tmp_path / "missing")) == []


# ---------------------------------------------------------------- signing


def test_signing_key_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    signer = ArtifactSigner.load_or_create(tmp_path)
    key_file = tmp_path / "keys" / "artifact-signing.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    again = ArtifactSigner.load_or_create(tmp_path)
    assert again.public_key_b64() == signer.public_key_b64()
    assert len(base64.b64decode(signer.public_key_b64())) == 32
    pub = (tmp_path / "keys" / "artifact-signing.pub.pem").read_text()
    assert pub == signer.public_key_pem()
    assert len(signer.key_id) == 16


def test_loose_key_permissions_are_tightened(tmp_path: Path) -> None:
    ArtifactSigner.load_or_create(tmp_path)
    key_file = tmp_path / "keys" / "artifact-signing.pem"
    key_file.chmod(0o644)
    ArtifactSigner.load_or_create(tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "artifact-signing.pem").write_text("not a key")
    with pytest.raises(ArtifactError, match="cannot read the signing key"):
        ArtifactSigner.load_or_create(tmp_path)


def test_module_signature_verifies_and_binds_name_version_and_digest() -> None:
    signer = ArtifactSigner.generate()
    digest = hashlib.sha256(b"model").hexdigest()
    sig = signer.sign_module("counter", "2", digest)
    verify_signature(signer.public_key_b64(), sig, artifact_signing_message("counter", "2", digest))
    verify_signature(signer.public_key_pem(), sig, artifact_signing_message("counter", "2", digest))
    for name, version, sha in [
        ("other", "2", digest),
        ("counter", "3", digest),
        ("counter", "2", "0" * 64),
    ]:
        with pytest.raises(InvalidSignatureError):
            verify_signature(
                signer.public_key_raw(), sig, artifact_signing_message(name, version, sha)
            )
    with pytest.raises(InvalidSignatureError, match="malformed"):
        verify_signature(signer.public_key_b64(), "%%%", b"x")
    with pytest.raises(ArtifactError, match="not a hex sha256"):
        signer.sign_module("counter", "2", "xyz")


def test_the_agents_own_verifier_accepts_our_signatures() -> None:
    agent_ed25519 = pytest.importorskip("edge_agent._ed25519")
    signer = ArtifactSigner.generate()
    digest = hashlib.sha256(b"m").hexdigest()
    message = artifact_signing_message("counter", "1", digest)
    raw_sig = base64.b64decode(signer.sign_module("counter", "1", digest))
    assert agent_ed25519.verify(signer.public_key_raw(), message, raw_sig)
    assert not agent_ed25519.verify(signer.public_key_raw(), message + b"x", raw_sig)


# ---------------------------------------------------------------- the endpoint


# starlette's TestClient warns about httpx (warnings are errors here), so the tests
# talk to a real uvicorn server on a free loopback port.


@contextmanager
def _served(app: FastAPI) -> Iterator[httpx.Client]:
    server = serve_in_thread(app, port=0)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, ArtifactStore, str, EdgeSettings]]:
    settings = EdgeSettings(data_dir=tmp_path)
    token = enroll("cam-01", site="s1", settings=settings).token
    store = ArtifactStore(tmp_path / "artifacts")
    with _served(create_artifact_app(settings, store=store)) as client:
        yield client, store, token, settings


def test_public_key_is_served_without_auth(
    api: tuple[httpx.Client, ArtifactStore, str, EdgeSettings],
) -> None:
    client, _, _, settings = api
    body = client.get("/v1/artifacts/public-key").json()
    signer = ArtifactSigner.load_or_create(settings.data_dir)
    assert body["algorithm"] == "ed25519"
    assert body["public_key"] == signer.public_key_b64()
    assert body["key_id"] == signer.key_id


def test_download_needs_a_valid_agent_token(
    api: tuple[httpx.Client, ArtifactStore, str, EdgeSettings],
) -> None:
    client, store, token, _ = api
    info = store.put_bytes(b"onnx-bytes")
    url = f"/v1/artifacts/{info.sha256}"
    missing = client.get(url)
    assert_error(missing, 401, "ArtifactAuthError", "missing Authorization: Bearer <agent token>")
    assert missing.headers["www-authenticate"] == 'Bearer realm="fogmesh-artifacts"'
    nope = client.get(url, headers={"Authorization": "Bearer nope"})
    assert_error(nope, 401, "ArtifactAuthError", "invalid bearer token")
    assert client.get(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
    ok = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert ok.content == b"onnx-bytes"
    assert ok.headers["x-content-sha256"] == info.sha256
    assert ok.headers["content-type"] == "application/octet-stream"


def test_unknown_artifact_is_404_only_after_auth(
    api: tuple[httpx.Client, ArtifactStore, str, EdgeSettings],
) -> None:
    client, _, token, _ = api
    url = f"/v1/artifacts/{'0' * 64}"
    assert_error(client.get(url), 401, "ArtifactAuthError")
    unknown = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert_error(unknown, 404, "ArtifactNotFoundError", "0" * 64)
    bad = client.get("/v1/artifacts/..%2Fkeys", headers={"Authorization": f"Bearer {token}"})
    assert_error(bad, 404)


def test_if_none_match_with_the_etag_is_304_without_the_body_and_only_after_auth(
    api: tuple[httpx.Client, ArtifactStore, str, EdgeSettings],
) -> None:
    client, store, token, _ = api
    info = store.put_bytes(b"onnx-bytes" * 1000)
    url, auth = f"/v1/artifacts/{info.sha256}", {"Authorization": f"Bearer {token}"}
    etag = client.get(url, headers=auth).headers["etag"]
    assert etag == f'"{info.sha256}"'
    for held in (etag, f"W/{etag}", f'"{"0" * 64}", {etag}', "*"):
        cached = client.get(url, headers={**auth, "If-None-Match": held})
        assert cached.status_code == 304, held
        assert cached.content == b""
        assert cached.headers["etag"] == etag
        assert cached.headers["cache-control"] == "private, max-age=31536000, immutable"
    for other in (f'"{"0" * 64}"', info.sha256, "", "W/"):  # another tag, unquoted, none
        full = client.get(url, headers={**auth, "If-None-Match": other})
        assert (full.status_code, full.content) == (200, b"onnx-bytes" * 1000), other
    assert_error(client.get(url, headers={"If-None-Match": etag}), 401, "ArtifactAuthError")
    unknown = client.get(f"/v1/artifacts/{'0' * 64}", headers={**auth, "If-None-Match": "*"})
    assert_error(unknown, 404, "ArtifactNotFoundError")


@pytest.mark.parametrize(
    ("header", "matches"),
    [(None, False), ("", False), ("*", True), (' "e" ', True), ('W/"e"', True),
     ('"a","e"', True), ('"a"', False), ("e", False), ('"e', False), ("W/", False)],
)  # fmt: skip
def test_etag_matches_the_quoted_tag_weakly(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"e"') is matches


def test_presigned_urls_are_scoped_expiring_and_revocable(
    api: tuple[httpx.Client, ArtifactStore, str, EdgeSettings],
) -> None:
    client, store, _, settings = api
    info = store.put_bytes(b"onnx")
    other = store.put_bytes(b"other")
    signer = UrlSigner.load_or_create(settings.data_dir)
    url = signer.sign_url(str(client.base_url), info.sha256, agent_id="cam-01", ttl_s=60)
    assert client.get(url).content == b"onnx"
    assert client.get(url.replace(info.sha256, other.sha256)).status_code == 401
    assert client.get(url.replace("agent=cam-01", "agent=cam-02")).status_code == 401
    expired = signer.sign_url(str(client.base_url), info.sha256, agent_id="cam-01", ttl_s=-1)
    assert_error(client.get(expired), 401, "ArtifactAuthError", "invalid or expired signed URL")
    foreign = UrlSigner(b"x" * 32).sign_url(str(client.base_url), info.sha256, agent_id="cam-01")
    assert client.get(foreign).status_code == 401
    with EnrolmentStore(settings.store_path) as db:
        assert db.delete("cam-01")
    assert client.get(url).status_code == 401


def test_router_mounts_in_any_app(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    info = store.put_bytes(b"z")

    class Auth:
        def agent_for_token(self, token: str) -> str | None:
            return "a1" if token == "t" else None

        def is_enrolled(self, agent_id: str) -> bool:
            return agent_id == "a1"

    app = FastAPI()
    app.include_router(artifact_router(store=store, signer=ArtifactSigner.generate(), auth=Auth()))
    with _served(app) as client:
        assert (
            client.get(
                f"/v1/artifacts/{info.sha256}", headers={"Authorization": "Bearer t"}
            ).content
            == b"z"
        )
        assert "/v1/artifacts/{sha256}" in client.get("/openapi.json").json()["paths"]


def test_signed_module_spec_is_a_valid_desired_module(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    info = store.put_bytes(b"model")
    signer = ArtifactSigner.generate()
    spec = signed_module_spec(
        "counter",
        "1",
        info,
        agent_id="cam-01",
        base_url="http://cp:1/",
        signer=signer,
        url_signer=UrlSigner(b"k" * 32),
        threads=2,
    )
    assert isinstance(spec, ModuleSpec)
    assert spec.url is not None and spec.url.startswith(f"http://cp:1/v1/artifacts/{info.sha256}?")
    assert spec.sha256 == info.sha256 and spec.size == 5 and spec.threads == 2
    verify_signature(
        signer.public_key_b64(),
        spec.signature or "",
        artifact_signing_message("counter", "1", info.sha256),
    )


def test_serve_in_thread_serves_and_stops(tmp_path: Path) -> None:
    settings = EdgeSettings(data_dir=tmp_path)
    token = enroll("cam-01", site="s1", settings=settings).token
    info = ArtifactStore(tmp_path / "artifacts").put_bytes(b"served")
    server = serve_in_thread(create_artifact_app(settings), port=0)
    try:
        assert server.port > 0
        r = httpx.get(
            f"{server.url}/v1/artifacts/{info.sha256}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert r.status_code == 200 and r.content == b"served"
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v1/artifacts/public-key", timeout=2)
