"""`mesh node join` checks what it can before Ray runs, and fails fast naming what was wrong."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mesh.compute._backend import SITE_LABEL, TIER_LABEL
from mesh.core._errors import BackendError, InvalidRequestError
from mesh.core._settings import MeshSettings
from mesh.edge.broker._broker import free_port
from mesh.ray import _join
from mesh.ray._join import NodeJoin, join_node, leave_node, parse_head, ray_start_command


def _no_ray(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"ray start ran: {args}")


def test_the_command_carries_the_labels_the_mesh_selects_on() -> None:
    join = NodeJoin("10.0.0.1:6379", "fog", site="plant-3", cpus=2, gpus=0.5, node_ip="10.0.0.9")
    command = ray_start_command(join, ray=["ray"])
    assert command[:3] == ["ray", "start", "--address=10.0.0.1:6379"]
    assert f"--labels={TIER_LABEL}=fog,{SITE_LABEL}=plant-3" in command
    assert {"--num-cpus=2", "--num-gpus=0.5", "--node-ip-address=10.0.0.9"} <= set(command)
    assert "--head" not in command
    assert (
        ray_start_command(NodeJoin("h:1", "cloud"), ray=["ray"])[3]
        == f"--labels={TIER_LABEL}=cloud"
    )


@pytest.mark.parametrize(
    ("join", "needle"),
    [
        (NodeJoin("h:1", "edge"), "a Ray node is one of cloud, fog"),
        (NodeJoin("h:1", "Fog"), "a Ray node is one of cloud, fog"),
        (NodeJoin("h:1", "fog", site="plant 3"), "--site 'plant 3'"),
        (NodeJoin("h:1", "fog", site="-a"), "--site '-a'"),
        (NodeJoin("h:1", "fog", site="a" * 64), "1-63 letters"),
        (NodeJoin("h:1", "fog", site="x/y"), "--site 'x/y'"),
    ],
)
def test_a_bad_tier_or_site_is_named(join: NodeJoin, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match=needle.replace("(", r"\(")):
        join.labels()


@pytest.mark.parametrize("text", ["10.0.0.1", "10.0.0.1:", ":6379", "h:0", "h:70000", "h:port"])
def test_a_head_address_without_a_valid_port_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="expected HOST:PORT"):
        parse_head(text)


def test_head_addresses_parse() -> None:
    assert parse_head("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert parse_head("[fd00::1]:6379") == ("fd00::1", 6379)
    assert parse_head(" head.local:1 ") == ("head.local", 1)


def test_an_unreachable_head_fails_before_ray_runs(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = MeshSettings(data_dir=tmp_path)
    with pytest.raises(BackendError, match=f"cannot reach the Ray head at 127.0.0.1:{port}"):
        join_node(NodeJoin(f"127.0.0.1:{port}", "fog"), settings, run=_no_ray)  # Ray never runs
    assert not (tmp_path / "node.json").exists()


def test_a_bad_tier_fails_before_the_head_is_asked(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cloud, fog"):
        join_node(NodeJoin("127.0.0.1:1", "edge"), MeshSettings(data_dir=tmp_path), run=_no_ray)


class _Listening:
    """A TCP port that accepts (a stand-in GCS for the reachability check)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_a_head_that_wants_a_token_needs_one_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_join, "probe_cluster_auth", lambda address: "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    settings = MeshSettings(data_dir=tmp_path)
    with _Listening() as port:
        with pytest.raises(BackendError, match="requires a token: copy its token file"):
            join_node(NodeJoin(f"127.0.0.1:{port}", "fog"), settings, run=_no_ray)
        empty = tmp_path / "empty-token"
        empty.write_text("\n")
        with pytest.raises(BackendError, match="is missing or empty"):
            join_node(NodeJoin(f"127.0.0.1:{port}", "fog", token_file=empty), settings, run=_no_ray)


def test_ray_start_runs_with_the_token_and_a_failure_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_join, "probe_cluster_auth", lambda address: "token")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    token = tmp_path / "token"
    token.write_text("t" * 64)
    seen: dict[str, Any] = {}

    def fake_ray(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.update(command=command, env=kwargs["env"])
        return subprocess.CompletedProcess(command, 1, "", "line 1\nConnectionError: boom\n")

    with _Listening() as port:
        join = NodeJoin(f"127.0.0.1:{port}", "fog", site="s1", token_file=token)
        with pytest.raises(BackendError, match=r"ray start failed \(exit 1\):\nline 1\nConn"):
            join_node(join, MeshSettings(data_dir=tmp_path), run=fake_ray)
    assert seen["env"]["RAY_AUTH_MODE"] == "token"
    assert seen["env"]["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert "RAY_AUTH_TOKEN" not in seen["env"]
    # A loopback driver's "no multi-node clusters" would make ray start refuse to join.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in seen["env"]
    assert not (tmp_path / "node.json").exists()


def test_a_second_join_from_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    me = os.getpid()
    import psutil

    record = {"head": "h:1", "pids": {str(me): psutil.Process(me).create_time()}}
    (tmp_path / "node.json").write_text(json.dumps(record))
    with pytest.raises(BackendError, match="mesh node leave` first"):
        join_node(NodeJoin("127.0.0.1:1", "fog"), MeshSettings(data_dir=tmp_path), run=_no_ray)


def test_leave_without_a_join_says_so(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no joined node is recorded"):
        leave_node(MeshSettings(data_dir=tmp_path))


def test_leave_ends_only_the_recorded_processes(tmp_path: Path) -> None:
    import psutil

    ours = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pids": {str(ours.pid): psutil.Process(ours.pid).create_time(), "999999": 1.0}}
        (tmp_path / "node.json").write_text(json.dumps(record))
        assert leave_node(MeshSettings(data_dir=tmp_path), grace_s=5) == 1
        assert ours.wait(5) is not None
        assert other.poll() is None
        assert not (tmp_path / "node.json").exists()
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_a_ray_start_that_hangs_is_given_up_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_join, "probe_cluster_auth", lambda address: "open")

    def hangs(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    settings = MeshSettings(data_dir=tmp_path)
    with _Listening() as port, pytest.raises(BackendError, match="could not register; check"):
        join_node(NodeJoin(f"127.0.0.1:{port}", "fog"), settings, run=hangs)
    assert not (tmp_path / "node.json").exists()
