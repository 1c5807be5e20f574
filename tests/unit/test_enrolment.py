"""Agent enrolment: credentials, the agents table, Mosquitto files, the device command, CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh.cli._agents import agents_app, collect_health
from mesh.edge._enrolment import (
    CONTROL_PLANE_USER,
    EdgeSettings,
    EnrolmentError,
    EnrolmentStore,
    build_acl,
    control_plane_credentials,
    enroll,
    hash_password,
    revoke,
    verify_mosquitto_hash,
)
from mesh.edge.broker._broker import free_port
from mesh.models._artifacts import ArtifactSigner

# A line `mosquitto_passwd -c -b pw alice s3cret` (mosquitto 2.0.11) wrote.
MOSQUITTO_LINE = (
    "alice:$7$101$heevbSNOXaaJaF9h$duwZ5q1A91o2UWfb8UhR+yWZNAue3n3TwGOwGDobS5UyUqGeoXH"
    "HsNn9fiXGWR99mhnKw3Es+9ay5GEB0LSPTw=="
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EdgeSettings:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    # Nothing listens there: the CLI's live view falls back to the store at once.
    monkeypatch.setenv("MESH_BROKER_URL", f"mqtt://127.0.0.1:{free_port()}")
    return EdgeSettings()


# ---------------------------------------------------------------- password hashes


def test_python_hash_matches_mosquitto_format() -> None:
    hashed = MOSQUITTO_LINE.split(":", 1)[1]
    assert verify_mosquitto_hash("s3cret", hashed)
    assert not verify_mosquitto_hash("wrong", hashed)
    ours = hash_password("s3cret", mode="python")
    assert ours.startswith("$7$101$")
    _, _, _, salt, digest = ours.split("$")
    assert len(salt) == 16 and len(digest) == 88  # base64 of 12 and 64 bytes
    assert verify_mosquitto_hash("s3cret", ours)
    assert hash_password("s3cret", mode="python") != ours  # salted
    assert not verify_mosquitto_hash("x", "plain-text")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
def test_binary_hash_verifies_with_python() -> None:
    hashed = hash_password("pa ss:word", username="cam-01", mode="binary")
    assert hashed.startswith("$7$")
    assert verify_mosquitto_hash("pa ss:word", hashed)


def test_binary_mode_without_the_tool_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mesh.edge._passwords.shutil.which", lambda name: None)
    with pytest.raises(EnrolmentError, match="not installed"):
        hash_password("x", mode="binary")
    assert hash_password("x").startswith("$7$")  # auto falls back to Python


# ---------------------------------------------------------------- enrolment


def test_enroll_persists_the_agent_and_writes_broker_files(settings: EdgeSettings) -> None:
    result = enroll("cam-07", site="int-2-1", settings=settings)
    assert result.username == "cam-07"
    assert len(result.password) >= 24 and len(result.token) >= 32
    assert result.public_key == ArtifactSigner.load_or_create(settings.data_dir).public_key_b64()

    with EnrolmentStore(settings.store_path) as db:
        record = db.get("cam-07")
        assert record is not None and record.site == "int-2-1" and record.state == "unknown"
        assert db.agent_for_token(result.token) == "cam-07"
        assert db.agent_for_token("nope") is None
        assert db.is_enrolled("cam-07") and not db.is_enrolled("cam-08")
    raw = sqlite3.connect(settings.store_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = raw.execute("SELECT * FROM agents").fetchone()
    finally:
        raw.close()
    assert result.password not in row and result.token not in row  # secrets never stored

    users = dict(line.split(":", 1) for line in result.password_file.read_text().splitlines())
    assert set(users) == {CONTROL_PLANE_USER, "cam-07"}
    assert verify_mosquitto_hash(result.password, users["cam-07"])
    creds = control_plane_credentials(settings)
    assert verify_mosquitto_hash(creds.password, users[CONTROL_PLANE_USER])
    assert stat.S_IMODE(result.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.control_credentials_file.stat().st_mode) == 0o600

    acl = result.acl_file.read_text()
    assert "user cam-07\ntopic write mesh/v1/agents/cam-07/#\n" in acl
    assert "topic write mesh/v1/events/int-2-1/#" in acl
    assert "topic read mesh/v1/agents/cam-07/desired" in acl
    assert f"user {CONTROL_PLANE_USER}\ntopic readwrite mesh/v1/#" in acl


def test_acl_lets_an_agent_publish_only_under_its_own_id() -> None:
    acl = build_acl([("a1", "s1"), ("a2", "s2")])
    blocks = {b.split("\n")[1]: b for b in acl.split("\n\n") if b.startswith("# agent")}
    a1 = blocks["user a1"]
    writes = [line.split()[-1] for line in a1.splitlines() if line.startswith("topic write")]
    assert "mesh/v1/agents/a1/#" in writes
    assert not any("/a2/" in w or "/s2/" in w for w in writes)
    assert not any(w.startswith("mesh/v1/agents/+") or w == "mesh/v1/#" for w in writes)
    assert "topic read mesh/v1/modules/+/infer/a1" in a1
    custom = build_acl([("a1", "s1")], prefix="fleet/v2")
    assert "topic write fleet/v2/agents/a1/#" in custom and "mesh/v1" not in custom


def test_reenrolment_rotates_secrets(settings: EdgeSettings) -> None:
    first = enroll("cam-07", site="s1", settings=settings)
    second = enroll("cam-07", site="s2", settings=settings)
    assert first.password != second.password and first.token != second.token
    with EnrolmentStore(settings.store_path) as db:
        assert db.agent_for_token(first.token) is None
        assert db.agent_for_token(second.token) == "cam-07"
        records = db.list_agents()
        assert [(r.agent_id, r.site) for r in records] == [("cam-07", "s2")]
    users = dict(line.split(":", 1) for line in second.password_file.read_text().splitlines())
    assert verify_mosquitto_hash(second.password, users["cam-07"])
    assert not verify_mosquitto_hash(first.password, users["cam-07"])
    assert "mesh/v1/events/s2/#" in second.acl_file.read_text()


def test_revoke_removes_credentials(settings: EdgeSettings) -> None:
    a = enroll("cam-01", site="s1", settings=settings)
    enroll("cam-02", site="s1", settings=settings)
    assert revoke("cam-01", settings=settings)
    assert not revoke("cam-01", settings=settings)
    users = [line.split(":")[0] for line in a.password_file.read_text().splitlines()]
    assert users == [CONTROL_PLANE_USER, "cam-02"]
    assert "user cam-01" not in a.acl_file.read_text()


@pytest.mark.parametrize("agent_id", ["bad/id", "a+b", "x#", "", "a b", CONTROL_PLANE_USER])
def test_bad_or_reserved_ids_are_refused(settings: EdgeSettings, agent_id: str) -> None:
    with pytest.raises(EnrolmentError):
        enroll(agent_id, site="s1", settings=settings)


def test_bad_site_is_refused(settings: EdgeSettings) -> None:
    with pytest.raises(EnrolmentError, match="bad site"):
        enroll("cam-01", site="s/1", settings=settings)


def test_device_command_is_accepted_by_the_agent(settings: EdgeSettings) -> None:
    agent_settings = pytest.importorskip("edge_agent._settings")
    result = enroll("cam-07", site="int-2-1", settings=settings, broker_url="mqtt://10.0.0.2:1883")
    assert result.command[0] == "mesh-edge-agent"
    parsed = agent_settings.load_settings(result.command[1:], env={})
    assert (parsed.id, parsed.site, parsed.broker_host, parsed.broker_port) == (
        "cam-07",
        "int-2-1",
        "10.0.0.2",
        1883,
    )
    assert parsed.credentials() == ("cam-07", result.password)
    signer = ArtifactSigner.load_or_create(settings.data_dir)
    assert parsed.public_key_bytes() == signer.public_key_raw()
    assert "mesh-edge-agent --broker mqtt://10.0.0.2:1883 --id cam-07" in result.command_line


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_BROKER_URL", "mqtt://broker:1884")
    monkeypatch.setenv("MESH_ARTIFACT_PORT", "9000")
    s = EdgeSettings()
    assert s.broker_url == "mqtt://broker:1884" and s.device_broker_url == "mqtt://broker:1884"
    assert s.artifact_url == "http://127.0.0.1:9000"
    assert s.password_file == tmp_path / "mqtt" / "passwd"
    assert s.store_path == tmp_path / "mesh.db"


def test_control_plane_credentials_are_stable(settings: EdgeSettings) -> None:
    a = control_plane_credentials(settings)
    b = control_plane_credentials(settings)
    assert a == b and a.username == CONTROL_PLANE_USER
    assert "password" not in repr(a)
    explicit = EdgeSettings(data_dir=settings.data_dir, mqtt_username="u", mqtt_password="p")
    assert control_plane_credentials(explicit).username == "u"


def test_health_is_recorded_and_listed(settings: EdgeSettings) -> None:
    enroll("cam-01", site="s1", settings=settings)
    with EnrolmentStore(settings.store_path) as db:
        db.record_health(
            "cam-01",
            state="online",
            seen_at=100.0,
            heartbeat_at=100.0,
            metrics={"cpu_percent": 12.5, "mem_percent": 40.0},
        )
        db.record_health("ghost", state="online")  # not enrolled: ignored
        db.record_health("cam-01")  # nothing to record
        (record,) = db.list_agents()
    assert record.state == "online" and record.last_heartbeat_at == 100.0
    assert record.metrics["cpu_percent"] == 12.5
    rows, reason = collect_health(settings, wait_s=0.1, connect_timeout_s=1.0)
    assert reason is not None and "cannot reach broker" in reason
    (row,) = rows
    assert (row.agent_id, row.health, row.cpu_percent, row.source) == (
        "cam-01",
        "online",
        12.5,
        "store",
    )


# ---------------------------------------------------------------- CLI


def test_cli_enroll_prints_the_device_command(settings: EdgeSettings) -> None:
    result = CliRunner().invoke(
        agents_app, ["enroll", "cam-09", "--site", "int-1-1", "--broker", "mqtt://10.1.1.1:1883"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "mesh-edge-agent --broker mqtt://10.1.1.1:1883 --id cam-09 --site int-1-1" in result.output
    )
    assert "--public-key" in result.output and "--password-file" in result.output
    with EnrolmentStore(settings.store_path) as db:
        assert db.is_enrolled("cam-09")


def test_cli_enroll_refuses_bad_ids(settings: EdgeSettings) -> None:
    result = CliRunner().invoke(agents_app, ["enroll", "a/b", "--site", "s"])
    assert result.exit_code == 1
    assert "bad agent id" in result.output


def test_cli_lists_agents_from_the_store_without_a_broker(settings: EdgeSettings) -> None:
    runner = CliRunner()
    empty = runner.invoke(agents_app, ["list", "--wait-s", "0"])
    assert empty.exit_code == 0 and "no agents enrolled" in empty.output
    enroll("cam-01", site="s1", settings=settings)
    listed = runner.invoke(agents_app, ["list", "--json", "--wait-s", "0"])
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.stdout)
    assert doc["live"] is False and doc["agents"][0]["agent_id"] == "cam-01"
    bare = runner.invoke(agents_app, [])
    assert bare.exit_code == 0 and "cam-01" in bare.output
    gone = runner.invoke(agents_app, ["revoke", "nobody"])
    assert gone.exit_code == 1
