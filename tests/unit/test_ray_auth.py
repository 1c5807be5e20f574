"""Ray credentials (mesh/ray/_auth.py) and the Ray settings, without starting Ray.

The GCS auth probe is checked against real gRPC servers that answer as a
token cluster (UNAUTHENTICATED) and as an open one.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mesh.core._addresses import is_loopback
from mesh.core._errors import BackendError
from mesh.core._settings import MeshSettings
from mesh.ray._auth import (
    check_cluster_auth,
    ensure_ray_token,
    probe_cluster_auth,
    token_available,
    use_embedded_token,
    use_external_token,
)


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts with no Ray auth variables and an empty HOME; all are restored after."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_the_token_is_made_once_owner_only_in_an_owner_only_folder(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ray-token"

    first = ensure_ray_token(path).read_text()
    again = ensure_ray_token(path).read_text()

    assert len(first) == 64 and int(first, 16) >= 0
    assert again == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_empty_token_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ray-token"
    path.write_text("\n")

    with pytest.raises(BackendError, match=r"ray-token is empty"):
        ensure_ray_token(path)


def test_settings_default_to_token_auth_on_loopback(tmp_path: Path) -> None:
    settings = MeshSettings(data_dir=tmp_path)

    assert settings.ray_auth_mode == "token"
    assert settings.ray_node_ip == "127.0.0.1"
    assert settings.ray_token_path == tmp_path / "keys" / "ray-token"
    assert MeshSettings(ray_token_file=tmp_path / "t").ray_token_path == tmp_path / "t"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ray_node_ip", "my-host", "ray_node_ip must be an IP address"),
        ("ray_auth_mode", "off", "'token' or 'disabled'"),
    ],
)
def test_bad_ray_settings_name_what_was_expected(field: str, value: str, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        MeshSettings.model_validate({field: value})


def test_the_embedded_cluster_gets_our_token_by_path_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "someone-elses")
    settings = MeshSettings(data_dir=tmp_path)

    path = use_embedded_token(settings)

    assert path == tmp_path / "keys" / "ray-token" and path.is_file()
    env = os.environ
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(path)
    assert "RAY_AUTH_TOKEN" not in env  # Ray would prefer it over the path


def test_opting_out_makes_no_token(tmp_path: Path) -> None:
    assert use_embedded_token(MeshSettings(data_dir=tmp_path, ray_auth_mode="disabled")) is None
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert not (tmp_path / "keys").exists()


def test_an_external_cluster_keeps_the_operators_token_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/etc/ray/token")
    settings = MeshSettings(data_dir=tmp_path, ray_address="10.0.0.5:6379")

    use_external_token(settings)

    assert os.environ["RAY_AUTH_TOKEN_PATH"] == "/etc/ray/token"
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_an_external_cluster_uses_the_named_token_file(tmp_path: Path) -> None:
    token = tmp_path / "cluster-token"
    settings = MeshSettings(data_dir=tmp_path, ray_address="10.0.0.5:6379", ray_token_file=token)

    use_external_token(settings)

    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert not token.exists()  # never generated for someone else's cluster


def test_token_available_follows_rays_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not token_available()
    home_token = tmp_path / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("x" * 64)
    assert token_available()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert not token_available()  # a named path wins over ~/.ray, as in Ray
    monkeypatch.setenv("RAY_AUTH_TOKEN", "y" * 64)
    assert token_available()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("[::1]", True), ("10.0.0.5", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# A GCS stand-in: answers NodeInfoGcsService/GetClusterId, or refuses it as a token cluster does.


@pytest.fixture
def fake_gcs(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    grpc = pytest.importorskip("grpc")
    from ray.core.generated import gcs_service_pb2

    refuse = request.param == "token"

    def get_cluster_id(_request: Any, context: Any) -> Any:
        if refuse:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        return gcs_service_pb2.GetClusterIdReply()

    handler = grpc.method_handlers_generic_handler(
        "ray.rpc.NodeInfoGcsService",
        {
            "GetClusterId": grpc.unary_unary_rpc_method_handler(
                get_cluster_id,
                request_deserializer=gcs_service_pb2.GetClusterIdRequest.FromString,
                response_serializer=gcs_service_pb2.GetClusterIdReply.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", request.param
    finally:
        server.stop(None)


@pytest.mark.parametrize("fake_gcs", ["token", "open"], indirect=True)
def test_the_probe_tells_a_token_cluster_from_an_open_one(fake_gcs: tuple[str, str]) -> None:
    address, kind = fake_gcs

    assert probe_cluster_auth(address) == kind


def test_the_probe_says_unknown_where_nothing_answers() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    assert probe_cluster_auth(f"127.0.0.1:{port}", timeout_s=2) == "unknown"


@pytest.mark.parametrize("fake_gcs", ["token"], indirect=True)
def test_joining_a_token_cluster_needs_a_token_and_token_mode(
    fake_gcs: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = fake_gcs
    token_mode = MeshSettings(data_dir=tmp_path, ray_address=address)
    disabled = MeshSettings(data_dir=tmp_path, ray_address=address, ray_auth_mode="disabled")

    with pytest.raises(BackendError, match="no token was found: set MESH_RAY_TOKEN_FILE"):
        check_cluster_auth(token_mode, address, "settings")
    with pytest.raises(BackendError, match="MESH_RAY_AUTH_MODE is 'disabled'"):
        check_cluster_auth(disabled, address, "settings")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "z" * 64)
    check_cluster_auth(token_mode, address, "settings")  # has one: goes on to ray.init


@pytest.mark.parametrize("fake_gcs", ["open"], indirect=True)
def test_an_open_cluster_is_a_warning_when_we_expect_a_token(
    fake_gcs: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address, _ = fake_gcs

    with caplog.at_level(logging.WARNING, logger="mesh.ray._auth"):
        check_cluster_auth(MeshSettings(data_dir=tmp_path, ray_address=address), address, "x")

    assert "accepts connections without a token" in caplog.text
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # Ray would want a token otherwise
