"""Secrets stay secrets: files holding them are 0600, checked at start-up, never printed.

Before, the Mosquitto password file was 0640, ``mesh.db`` (agents' password
hashes and token digests) took the umask's 0644, nothing looked at the modes of
files copied in, and ``mesh agents enroll`` printed the agent's MQTT password in
the device command (visible in ``ps`` on the device, and in the terminal).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh.cli._agents import agents_app
from mesh.edge._agent_store import EnrolmentStore
from mesh.edge._artifact_api import UrlSigner
from mesh.edge._enrolment import EdgeSettings, control_plane_credentials, enroll
from mesh.models._artifacts import ArtifactSigner
from mesh.security._auth import TokenSigner


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data dir under the usual umask (022), as MESH_DATA_DIR."""
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "data"))
    old = os.umask(0o022)
    try:
        yield tmp_path / "data"
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_file_the_mesh_writes_is_0600(data_dir: Path) -> None:
    settings = EdgeSettings(data_dir=data_dir)
    TokenSigner.load_or_create(data_dir)
    ArtifactSigner.load_or_create(data_dir)
    UrlSigner.load_or_create(data_dir)
    control_plane_credentials(settings)
    result = enroll("cam-01", site="s1", settings=settings)
    with EnrolmentStore(settings.store_path) as store:
        assert store.is_enrolled("cam-01")
    secrets = [
        *[p for p in (data_dir / "keys").iterdir() if not p.name.endswith(".pub.pem")],
        settings.store_path,
        settings.password_file,
        settings.control_credentials_file,
        result.device_password_file,
    ]
    loose = {str(p.relative_to(data_dir)): f"{_mode(p):04o}" for p in secrets if _mode(p) != 0o600}
    assert loose == {}, f"secret files others may read: {loose}"


def test_start_up_warns_about_a_loose_secret_file(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mesh.runtime._control_plane import ControlPlaneSettings, _check_secret_files

    TokenSigner.load_or_create(data_dir)
    key = data_dir / "keys" / "token-secret"
    key.chmod(0o644)  # e.g. restored from a backup
    settings = ControlPlaneSettings(data_dir=data_dir)
    with caplog.at_level(logging.WARNING):
        _check_secret_files(settings)
    warned = [r.getMessage() for r in caplog.records if str(key) in r.getMessage()]
    assert warned, caplog.text
    assert "0644" in warned[0] and "chmod 0600" in warned[0]


def test_start_up_is_quiet_when_the_modes_are_right(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mesh.runtime._control_plane import ControlPlaneSettings, _check_secret_files

    settings = ControlPlaneSettings(data_dir=data_dir)
    TokenSigner.load_or_create(data_dir)
    enroll("cam-01", site="s1", settings=settings)
    with caplog.at_level(logging.WARNING):
        _check_secret_files(settings)
    assert "secret file" not in caplog.text


def test_enroll_never_prints_the_password(data_dir: Path) -> None:
    out = CliRunner().invoke(agents_app, ["enroll", "cam-02", "--site", "s1"])
    assert out.exit_code == 0, out.output
    password_file = data_dir / "agents" / "cam-02" / "mqtt-password"
    password = password_file.read_text().strip()
    assert len(password) >= 24
    assert password not in out.output.replace("\n", "")
    assert f"--password-file {password_file}" in out.output.replace("\n", "")
    assert _mode(password_file) == 0o600


def test_enroll_writes_the_password_where_the_operator_asks(data_dir: Path, tmp_path: Path) -> None:
    wanted = tmp_path / "for-the-device" / "cam-03.password"
    out = CliRunner().invoke(
        agents_app, ["enroll", "cam-03", "--site", "s1", "--password-file", str(wanted)]
    )
    assert out.exit_code == 0, out.output
    assert _mode(wanted) == 0o600
    assert wanted.read_text().strip() not in out.output.replace("\n", "")
