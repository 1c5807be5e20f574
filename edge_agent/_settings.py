"""Agent settings: command-line flags > ``EDGE_AGENT_*`` environment > a file > defaults.

pydantic-settings is not in the edge extra, so this is plain pydantic plus
argparse. The file (``--config`` / ``EDGE_AGENT_CONFIG``) is JSON or TOML
(``.toml``) with the same field names.

Example:
    >>> s = load_settings(["--id", "cam-07", "--broker", "mqtt://10.0.0.2:1883"], env={})
    >>> (s.id, s.broker_host, s.broker_port, s.tls)
    ('cam-07', '10.0.0.2', 1883, False)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .protocol import DEFAULT_PREFIX, PipelineSpec, Topics

__all__ = ["AgentSettings", "SettingsError", "load_settings"]

ENV_PREFIX = "EDGE_AGENT_"


class SettingsError(ValueError):
    """Settings could not be read or validated; the message says which and why."""


class AgentSettings(BaseModel):
    """Everything an edge agent process is configured with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Agent id: MQTT client id and topic level, e.g. 'cam-07'.")
    site: str = Field("default", description="Site of the agent; events go to {p}/events/{site}/.")
    broker: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://[user:pass@]host[:port] or mqtts:// for TLS.",
    )
    prefix: str = Field(DEFAULT_PREFIX, description="Topic prefix.")
    username: str | None = Field(None, description="MQTT username (overrides the URL's).")
    password: str | None = Field(None, description="MQTT password (overrides the URL's).")
    password_file: Path | None = Field(None, description="File holding the MQTT password.")
    ca_file: Path | None = Field(None, description="CA bundle for TLS; None = system CAs.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client key for mutual TLS.")
    tls_insecure: bool = Field(False, description="Skip TLS hostname checks (tests only).")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; 'auto' tries 5 and falls back to 3.1.1."
    )
    keepalive_s: int = Field(30, ge=2, le=3600, description="MQTT keepalive.")
    session_expiry_s: int = Field(
        86400, ge=0, description="Persistent session lifetime (MQTT 5); commands queue meanwhile."
    )
    reconnect_min_s: int = Field(1, ge=1, description="First reconnect delay.")
    reconnect_max_s: int = Field(30, ge=1, description="Reconnect delay cap (doubling backoff).")
    max_inflight: int = Field(256, ge=1, description="QoS>0 messages in flight from the agent.")
    qos: int = Field(1, ge=0, le=2, description="QoS of replies, events and state messages.")
    heartbeat_period_s: float = Field(10.0, gt=0, description="Heartbeat period.")
    cache_dir: Path = Field(
        Path("/var/lib/fogmesh-edge"), description="Module cache, state and outbox."
    )
    public_key: str | None = Field(
        None, description="Control-plane Ed25519 public key (32 bytes, base64 or hex)."
    )
    public_key_file: Path | None = Field(None, description="File holding the public key.")
    require_signature: bool = Field(
        True, description="Refuse artifacts without a valid signature (keep True outside tests)."
    )
    max_payload_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger MQTT payloads are refused."
    )
    memory_budget_mb: int = Field(
        64,
        ge=1,
        description="MB of inference requests held at once (queued or running, all modules): "
        "beyond it requests are answered 'overloaded'. The default fits a 256 MB unit "
        "(MemoryMax=256M) with the runtime's own ~100 MB and batching's copies.",
    )
    max_artifact_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Download size cap.")
    download_timeout_s: float = Field(30.0, gt=0, description="HTTP timeout per artifact.")
    download_retries: int = Field(3, ge=1, description="Tries per artifact on network errors.")
    workers: int = Field(1, ge=1, le=16, description="Inference worker threads per module.")
    outbox_max_events: int = Field(10000, ge=1, description="Buffered events before dropping.")
    outbox_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Buffer size cap.")
    outbox_window: int = Field(64, ge=1, description="Events in flight while replaying.")
    outbox_confirm_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a sent event waits for the control plane's acknowledgement "
        "before the unacknowledged are sent again (doubling per resend without one, up to "
        "300 s). A broker's PUBACK alone does not delete an event once the control plane "
        "acknowledges events: a broker killed before it saves loses what it acknowledged.",
    )
    max_clock_skew_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="The largest difference between this device's clock and the control "
        "plane's that request deadlines are corrected for (estimated from its messages).",
    )
    pipelines: list[PipelineSpec] = Field(
        default_factory=list, description="Local pipelines, besides the desired state's."
    )
    log_level: str = Field("INFO", description="Logging level.")

    @field_validator("id", "site")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        return Topics.check_segment(v)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(f"broker {v!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        return v

    @model_validator(mode="after")
    def _tls_files(self) -> AgentSettings:
        given = {
            name: path
            for name, path in (
                ("ca_file", self.ca_file),
                ("cert_file", self.cert_file),
                ("key_file", self.key_file),
            )
            if path is not None
        }
        if given and not self.tls:
            raise ValueError(
                f"{', '.join(given)} given but broker {self.broker!r} is plain MQTT: use mqtts://"
            )
        for name, path in given.items():
            if not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self

    @property
    def tls(self) -> bool:
        """Whether the broker URL asks for TLS."""
        return urlsplit(self.broker).scheme in ("mqtts", "ssl")

    @property
    def broker_host(self) -> str:
        """Host of the broker URL."""
        return urlsplit(self.broker).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        """Port of the broker URL (1883, or 8883 with TLS, when absent)."""
        return urlsplit(self.broker).port or (8883 if self.tls else 1883)

    def credentials(self) -> tuple[str | None, str | None]:
        """Username and password: explicit settings, then the password file, then the URL."""
        parts = urlsplit(self.broker)
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password
        if password is None and self.password_file is not None:
            password = self.password_file.read_text().strip()
        if password is None and parts.password:
            password = unquote(parts.password)
        return user, password

    def public_key_bytes(self) -> bytes | None:
        """The 32-byte Ed25519 public key, from ``public_key`` or ``public_key_file``.

        Raises:
            SettingsError: the key is neither 64 hex chars nor base64 of 32 bytes.
        """
        text = self.public_key
        if text is None and self.public_key_file is not None:
            text = self.public_key_file.read_text().strip()
        if text is None:
            return None
        text = text.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise SettingsError(f"public_key: not hex or base64 ({exc})") from exc
        if len(raw) != 32:
            raise SettingsError(f"public_key: {len(raw)} bytes, an Ed25519 key has 32")
        return raw

    @property
    def memory_budget_bytes(self) -> int:
        """``memory_budget_mb`` in bytes."""
        return self.memory_budget_mb * 1024 * 1024

    @property
    def topics(self) -> Topics:
        """Topic builder for this agent's prefix."""
        return Topics(self.prefix)


def _field_type_is_bool(name: str) -> bool:
    return AgentSettings.model_fields[name].annotation is bool


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a table/object of settings")
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in AgentSettings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            value: Any = env[key]
            if name == "pipelines":
                try:
                    value = json.loads(value)
                except ValueError as exc:
                    raise SettingsError(f"{key}: not JSON: {exc}") from exc
            out[name] = value
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-edge-agent",
        description="fogmesh edge agent: serves ONNX modules over MQTT. Flags override "
        f"{ENV_PREFIX}* environment variables, which override the --config file.",
    )
    parser.add_argument("--config", type=Path, help="JSON or TOML settings file.")
    for name, field in AgentSettings.model_fields.items():
        if name == "pipelines":
            continue
        flag = "--" + name.replace("_", "-")
        if _field_type_is_bool(name):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=field.description)
    return parser


def load_settings(
    argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None
) -> AgentSettings:
    """Build settings from flags, environment and an optional file.

    Args:
        argv: Command-line arguments (without the program name); None = none.
        env: Environment; None = ``os.environ``.

    Raises:
        SettingsError: with the source and field at fault.
        SystemExit: from argparse on ``--help`` or an unknown flag.
    """
    import os

    environ = os.environ if env is None else env
    args = vars(_parser().parse_args(list(argv or [])))
    config = args.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = _read_file(Path(config)) if config else {}
    merged.update(_from_env(environ))
    merged.update({k: v for k, v in args.items() if v is not None})
    try:
        return AgentSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"invalid agent settings: {problems}") from exc
