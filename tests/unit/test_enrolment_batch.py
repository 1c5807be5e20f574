"""Enrolling many agents at once: the same files as one by one, one hashing run, all or nothing."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mesh.cli._agents import agents_app, read_batch
from mesh.edge._enrolment import (
    CONTROL_PLANE_USER,
    EdgeSettings,
    EnrolmentError,
    EnrolmentStore,
    enroll,
    enroll_many,
    revoke,
)
from mesh.edge._passwords import hash_passwords, verify_mosquitto_hash
from mesh.edge.broker._broker import free_port

FLEET = [(f"sim-{i:03d}", f"site-{i % 3}") for i in range(12)]
needs_tool = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd"
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EdgeSettings:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "batch"))
    monkeypatch.setenv("MESH_BROKER_URL", f"mqtt://127.0.0.1:{free_port()}")
    return EdgeSettings()


def _users(file: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in file.read_text().splitlines())


# ---------------------------------------------------------------- password hashes


@pytest.mark.parametrize("mode", ["auto", "python"])
def test_hash_passwords_verify_in_order(mode: Any) -> None:
    # plain ones go through one -U run; ':' or a leading '$' are hashed on their own
    passwords = ["plain-1", "pa:ss", "$7$looks-hashed", "plain_2", " spaced "]
    hashes = hash_passwords(passwords, mode=mode)
    assert len(hashes) == len(passwords) and all(h.startswith("$7$") for h in hashes)
    for password, hashed in zip(passwords, hashes, strict=True):
        assert verify_mosquitto_hash(password, hashed)
    assert not verify_mosquitto_hash("plain-1", hashes[3])
    assert hash_passwords([], mode=mode) == []


@needs_tool
def test_hash_passwords_runs_mosquitto_passwd_once(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(args: list[str], **kwargs: Any) -> Any:
        runs.append(args)
        return real_run(args, **kwargs)

    monkeypatch.setattr("mesh.edge._passwords.subprocess.run", counting_run)
    passwords = [f"secret-{i}" for i in range(50)]
    hashes = hash_passwords(passwords)
    assert len(runs) == 1 and "-U" in runs[0]
    assert all(verify_mosquitto_hash(p, h) for p, h in zip(passwords, hashes, strict=True))


# ---------------------------------------------------------------- enrol many


def test_batch_writes_what_one_by_one_enrolment_writes(
    settings: EdgeSettings, tmp_path: Path
) -> None:
    singles = EdgeSettings(data_dir=tmp_path / "singles")
    one = [enroll(a, site=s, settings=singles) for a, s in FLEET]
    # The same control-plane credentials on both sides, so the files can be compared.
    settings.control_credentials_file.parent.mkdir(parents=True)
    shutil.copy(singles.control_credentials_file, settings.control_credentials_file)
    many = enroll_many(FLEET, settings=settings)

    assert [(r.agent_id, r.site) for r in many] == FLEET
    assert many[-1].acl_file.read_bytes() == one[-1].acl_file.read_bytes()
    batch_users, single_users = _users(many[0].password_file), _users(one[-1].password_file)
    assert list(batch_users) == list(single_users) == [CONTROL_PLANE_USER] + [a for a, _ in FLEET]
    assert batch_users[CONTROL_PLANE_USER] == single_users[CONTROL_PLANE_USER]
    for result in many:
        assert verify_mosquitto_hash(result.password, batch_users[result.agent_id])
        assert result.device_password_file.read_text() == result.password
        assert stat.S_IMODE(result.device_password_file.stat().st_mode) == 0o600
        assert "--password-file" in result.command and result.password not in result.command
    for file in (many[0].password_file, many[0].acl_file):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    with EnrolmentStore(settings.store_path) as db:
        assert [(r.agent_id, r.site) for r in db.list_agents()] == FLEET
        assert all(db.agent_for_token(r.token) == r.agent_id for r in many)
        assert len({r.password for r in many}) == len(FLEET)


def test_batch_re_enrols_and_revoke_removes(settings: EdgeSettings) -> None:
    (first,) = enroll_many([("cam-01", "s1")], settings=settings)
    second, other = enroll_many([("cam-01", "s2"), ("cam-02", "s1")], settings=settings)
    users = _users(second.password_file)
    assert verify_mosquitto_hash(second.password, users["cam-01"])
    assert not verify_mosquitto_hash(first.password, users["cam-01"])
    assert "mesh/v1/events/s2/#" in second.acl_file.read_text()
    assert revoke("cam-01", settings=settings)
    assert list(_users(other.password_file)) == [CONTROL_PLANE_USER, "cam-02"]
    assert "user cam-01" not in other.acl_file.read_text()


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ([("ok-1", "s1"), ("bad/id", "s1")], "bad agent id"),
        ([("ok-1", "s1"), ("ok-2", "s/1")], "bad site"),
        ([("ok-1", "s1"), (CONTROL_PLANE_USER, "s1")], "reserved"),
        ([("ok-1", "s1"), ("ok-1", "s2")], "given twice"),
    ],
)
def test_a_bad_entry_enrols_nobody(
    settings: EdgeSettings, agents: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(EnrolmentError, match=message):
        enroll_many(agents, settings=settings)
    assert not settings.password_file.exists() and not settings.acl_file.exists()
    assert not (settings.data_dir / "agents").exists()
    with EnrolmentStore(settings.store_path) as db:
        assert db.list_agents() == []


def test_an_empty_batch_writes_nothing(settings: EdgeSettings) -> None:
    assert enroll_many([], settings=settings) == []
    assert not settings.password_file.exists()


# ---------------------------------------------------------------- CLI


def test_cli_enroll_batch(settings: EdgeSettings, tmp_path: Path) -> None:
    file = tmp_path / "fleet.csv"
    file.write_text("# id,site\ncam-01,int-1-1\n\n cam-02 , int-1-2 \n")
    result = CliRunner().invoke(
        agents_app, ["enroll-batch", str(file), "--broker", "mqtt://10.1.1.1:1883"]
    )
    assert result.exit_code == 0, result.output
    assert "mesh-edge-agent --broker mqtt://10.1.1.1:1883 --id cam-02 --site int-1-2" in (
        result.output
    )
    assert "enrolled 2 agents" in result.output
    with EnrolmentStore(settings.store_path) as db:
        assert [(r.agent_id, r.site) for r in db.list_agents()] == [
            ("cam-01", "int-1-1"),
            ("cam-02", "int-1-2"),
        ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cam-01,s1\ncam-02\n", "fleet.csv:2: expected ID,SITE"),
        ("cam-01,s1,extra\n", "fleet.csv:1: expected ID,SITE"),
        ("cam-01,\n", "fleet.csv:1: expected ID,SITE"),
        ("# nobody\n\n", "no agents"),
        ("cam-01,s1\nbad/id,s1\n", "bad agent id"),
    ],
)
def test_cli_enroll_batch_refuses_bad_files(
    settings: EdgeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # a short path: the error line is not folded inside it
    Path("fleet.csv").write_text(text)
    result = CliRunner().invoke(agents_app, ["enroll-batch", "fleet.csv"])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    with EnrolmentStore(settings.store_path) as db:
        assert db.list_agents() == []


def test_read_batch_names_the_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "fleet.csv"
    file.write_text("a,s\nb\n")
    with pytest.raises(EnrolmentError, match=r"fleet\.csv:2: expected ID,SITE"):
        read_batch(file)
    with pytest.raises(EnrolmentError, match="cannot read"):
        read_batch(tmp_path / "missing.csv")
    file.write_text("a , s\n")
    assert read_batch(file) == [("a", "s")]


def test_a_batch_writes_the_broker_files_once(
    settings: EdgeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mesh.edge import _enrolment

    writes: list[int] = []
    real = _enrolment.write_broker_files

    def counting(s: EdgeSettings, store: EnrolmentStore) -> tuple[Path, Path]:
        writes.append(len(store.credentials()))
        return real(s, store)

    monkeypatch.setattr(_enrolment, "write_broker_files", counting)
    enroll_many(FLEET, settings=settings)
    assert writes == [len(FLEET)]  # once, with every agent stored
