"""Bearer tokens with limits: a maximum lifetime, revocation by id, key rotation live.

Before, ``mesh tokens create --ttl-s 1e12`` (or ``nan``, or ``inf``) minted a token
that never expired, a leaked token could be stopped only by replacing the key and
restarting the control plane, and a verified token stayed in the gateway's cache
whatever happened to it.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh.cli import app
from mesh.security._auth import AuthError, TokenSigner, _b64
from mesh.security._token_auth import TokenAuth

NOW = 1_800_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _text(output: str) -> str:
    """CLI output without rich's error box and line breaks."""
    return re.sub(r"[\s│]+", " ", output)


@pytest.mark.parametrize("ttl_s", [math.nan, math.inf, 31 * DAY, 1e12])
def test_issue_refuses_a_lifetime_outside_the_limit(ttl_s: float) -> None:
    signer = TokenSigner(b"k" * 32)
    with pytest.raises(ValueError, match="ttl_s"):
        signer.issue("x", ["read"], ttl_s=ttl_s, now=NOW)


def test_the_limit_is_a_setting_and_the_cli_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    ok = CliRunner().invoke(app, ["tokens", "create", "ci", "--ttl-s", str(30 * DAY)])
    assert ok.exit_code == 0, ok.output
    too_long = CliRunner().invoke(app, ["tokens", "create", "ci", "--ttl-s", str(31 * DAY)])
    assert too_long.exit_code == 2
    assert "maximum token lifetime of 2592000 s (30 days" in _text(too_long.output)
    monkeypatch.setenv("MESH_TOKEN_MAX_TTL_S", "60")
    lowered = CliRunner().invoke(app, ["tokens", "create", "ci", "--ttl-s", "61"])
    assert lowered.exit_code == 2 and "maximum token lifetime of 60 s" in _text(lowered.output)
    for bad in ("nan", "inf"):
        out = CliRunner().invoke(app, ["tokens", "create", "ci", "--ttl-s", bad])
        assert out.exit_code == 2, out.output


def _forge(signer: TokenSigner, claims: dict[str, object]) -> str:
    """A token with these claims under the signer's real key (an old or buggy issuer)."""
    payload = _b64(json.dumps(claims).encode())
    return f"mesh_{payload}.{signer._sign(payload)}"


@pytest.mark.parametrize("exp", [NOW + 365 * DAY, float("nan"), float("inf")])
def test_verify_refuses_a_token_living_longer_than_the_limit(exp: float) -> None:
    signer = TokenSigner(b"k" * 32)
    claims = {"sub": "old", "scp": ["admin"], "iat": NOW, "exp": exp, "jti": "0" * 16}
    with pytest.raises(AuthError, match="maximum|expired"):
        signer.verify(_forge(signer, claims), now=NOW + 1)


def test_a_revoked_token_is_refused_even_when_cached(tmp_path: Path) -> None:
    from mesh.security._revocations import TokenRevocations

    clock = Clock()
    signer = TokenSigner.load_or_create(tmp_path)
    token = signer.issue("ci", ["invoke"], ttl_s=3600, now=clock.now)
    other = signer.issue("ci", ["invoke"], ttl_s=3600, now=clock.now)
    with TokenRevocations(tmp_path / "mesh.db") as gateway_view:
        auth = TokenAuth(signer, clock=clock, revocations=gateway_view)
        claims = auth.check(f"Bearer {token}", "invoke")  # now in the cache
        assert claims is not None
        # `mesh tokens revoke` runs in another process, on the same mesh.db.
        out = CliRunner().invoke(
            app, ["tokens", "revoke", claims.token_id], env={"MESH_DATA_DIR": str(tmp_path)}
        )
        assert out.exit_code == 0, out.output
        gateway_view._checked = float("-inf")  # the once-a-second look is due
        with pytest.raises(AuthError, match="revoked"):
            auth.check(f"Bearer {token}", "invoke")
        assert auth.check(f"Bearer {other}", "invoke") is not None


def test_revoke_refuses_what_is_not_a_token_id(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        app, ["tokens", "revoke", "../../etc"], env={"MESH_DATA_DIR": str(tmp_path)}
    )
    assert out.exit_code == 2 and "16 hex digits" in out.output


def test_a_rotated_key_takes_effect_without_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    signer = TokenSigner.load_or_create(tmp_path)
    auth = TokenAuth(signer, clock=clock)
    old = signer.issue("ci", ["read"], ttl_s=3600, now=clock.now)
    assert auth.check(f"Bearer {old}", "read") is not None  # cached
    out = CliRunner().invoke(app, ["tokens", "rotate-key"], env={"MESH_DATA_DIR": str(tmp_path)})
    assert out.exit_code == 0, out.output
    signer._checked = float("-inf")  # the once-a-second look is due
    with pytest.raises(AuthError, match="rotated"):
        auth.check(f"Bearer {old}", "read")
    fresh = TokenSigner.load_or_create(tmp_path).issue("ci", ["read"], ttl_s=60, now=clock.now)
    assert auth.check(f"Bearer {fresh}", "read") is not None


def test_a_rotation_with_grace_keeps_old_tokens_until_it_ends(tmp_path: Path) -> None:
    from mesh.security._auth import rotate_key

    signer = TokenSigner.load_or_create(tmp_path)
    old = signer.issue("ci", ["read"], ttl_s=3600, now=time.time())
    rotate_key(tmp_path, grace_s=600)
    signer._checked = float("-inf")
    assert signer.verify(old, now=time.time()).subject == "ci"
    rotate_key(tmp_path, grace_s=0)  # a second rotation ends the grace of the first key
    signer._checked = float("-inf")
    with pytest.raises(AuthError, match="rotated"):
        signer.verify(old, now=time.time())
