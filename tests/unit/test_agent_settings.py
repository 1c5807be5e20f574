"""Agent settings: flags > EDGE_AGENT_* env > file > defaults."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from edge_agent import AgentSettings, SettingsError, load_settings


def test_defaults_and_flags() -> None:
    s = load_settings(["--id", "cam-07"], env={})
    assert (s.broker_host, s.broker_port, s.tls, s.prefix) == ("127.0.0.1", 1883, False, "mesh/v1")
    s = load_settings(
        ["--id", "c", "--broker", "mqtts://h", "--keepalive-s", "7", "--no-require-signature"],
        env={},
    )
    assert (s.broker_port, s.tls, s.keepalive_s, s.require_signature) == (8883, True, 7, False)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.json"
    cfg.write_text(
        json.dumps(
            {
                "id": "from-file",
                "site": "file-site",
                "heartbeat_period_s": 3,
                "pipelines": [
                    {"name": "p", "module": "m", "source": {"kind": "mqtt", "topic": "t"}}
                ],
            }
        )
    )
    env = {"EDGE_AGENT_SITE": "env-site", "EDGE_AGENT_HEARTBEAT_PERIOD_S": "4"}
    s = load_settings(["--config", str(cfg), "--heartbeat-period-s", "5"], env=env)
    assert (s.id, s.site, s.heartbeat_period_s) == ("from-file", "env-site", 5.0)
    assert s.pipelines[0].source.topic == "t"
    s = load_settings([], env={**env, "EDGE_AGENT_CONFIG": str(cfg)})
    assert s.heartbeat_period_s == 4.0


def test_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('id = "t1"\nbroker = "mqtt://u:p%40ss@host:1999"\n')
    s = load_settings(["--config", str(cfg)], env={})
    assert (s.broker_host, s.broker_port, s.credentials()) == ("host", 1999, ("u", "p@ss"))


def test_password_file_and_explicit_credentials(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    s = AgentSettings(id="a", broker="mqtt://u:x@h", password_file=pw)
    assert s.credentials() == ("u", "secret")
    assert AgentSettings(id="a", username="v", password="w").credentials() == ("v", "w")


def test_public_key_hex_base64_file(tmp_path: Path) -> None:
    raw = bytes(range(32))
    assert AgentSettings(id="a", public_key=raw.hex()).public_key_bytes() == raw
    assert (
        AgentSettings(id="a", public_key=base64.b64encode(raw).decode()).public_key_bytes() == raw
    )
    f = tmp_path / "k"
    f.write_text(base64.b64encode(raw).decode() + "\n")
    assert AgentSettings(id="a", public_key_file=f).public_key_bytes() == raw
    with pytest.raises(SettingsError, match="32"):
        AgentSettings(id="a", public_key=base64.b64encode(b"short").decode()).public_key_bytes()
    with pytest.raises(SettingsError, match="hex or base64"):
        AgentSettings(id="a", public_key="!!!").public_key_bytes()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "id"),
        (["--id", "a/b"], "topic level"),
        (["--id", "a", "--broker", "http://x"], "broker"),
        (["--id", "a", "--keepalive-s", "1"], "keepalive_s"),
        (["--id", "a", "--protocol", "4"], "protocol"),
    ],
)
def test_invalid_settings_name_the_field(argv: list[str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(argv, env={})


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{")
    with pytest.raises(SettingsError, match="not valid"):
        load_settings(["--config", str(bad)], env={})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(["--config", str(tmp_path / "missing.json")], env={})
    with pytest.raises(SettingsError, match="EDGE_AGENT_PIPELINES"):
        load_settings(["--id", "a"], env={"EDGE_AGENT_PIPELINES": "["})
