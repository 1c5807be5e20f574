from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from mesh.security._auth import AuthError, ForbiddenError, TokenSigner

NOW = 1_700_000_000.0


def test_scopes_imply_weaker_ones() -> None:
    signer = TokenSigner(b"s" * 32)
    claims = signer.verify(signer.issue("ops", ["invoke"], ttl_s=60, now=NOW), now=NOW + 1)
    assert claims.allows("read") and claims.allows("invoke") and not claims.allows("admin")
    with pytest.raises(ForbiddenError, match="has scopes invoke; this call needs 'admin'"):
        claims.require("admin")


def test_expired_forged_and_malformed_tokens_are_refused() -> None:
    signer = TokenSigner(b"s" * 32)
    token = signer.issue("ops", ["read"], ttl_s=60, now=NOW)
    with pytest.raises(AuthError, match="has expired"):
        signer.verify(token, now=NOW + 60)
    with pytest.raises(AuthError, match="invalid token signature"):
        TokenSigner(b"x" * 32).verify(token, now=NOW)
    payload, signature = token.split(".")
    with pytest.raises(AuthError, match="invalid token signature"):
        signer.verify(payload + "A." + signature, now=NOW)
    with pytest.raises(AuthError, match="malformed token"):
        signer.verify("Bearer nonsense", now=NOW)


def test_bad_issue_arguments() -> None:
    signer = TokenSigner(b"s" * 32)
    with pytest.raises(ValueError, match="scopes must be among read, invoke, admin"):
        signer.issue("x", ["root"], ttl_s=1, now=NOW)
    with pytest.raises(ValueError, match="ttl_s must be a finite number of seconds > 0"):
        signer.issue("x", ["read"], ttl_s=0, now=NOW)


def test_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    first = TokenSigner.load_or_create(tmp_path)
    token = first.issue("a", ["admin"], ttl_s=10, now=NOW)
    assert TokenSigner.load_or_create(tmp_path).verify(token, now=NOW).subject == "a"
    mode = (tmp_path / "keys" / "token-secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_cli_issues_a_verifiable_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mesh.cli import app

    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(
        app, ["tokens", "create", "ci", "--scope", "invoke", "--ttl-s", "60"]
    )
    assert result.exit_code == 0, result.output
    claims = TokenSigner.load_or_create(tmp_path).verify(result.output.strip(), now=time.time())
    assert claims.subject == "ci" and claims.scopes == ("invoke",)
    bad = CliRunner().invoke(app, ["tokens", "create", "ci", "--scope", "god"])
    assert bad.exit_code == 2 and "scopes must be among" in bad.output
