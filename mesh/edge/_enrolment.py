"""Agent enrolment: per-agent MQTT credentials, artifact tokens and Mosquitto ACLs.

:func:`enroll` gives an agent a random MQTT password and a bearer token for the
artifact endpoint, records the agent in the agent store
(:mod:`mesh.edge._agent_store`, re-exported here), regenerates the Mosquitto
password and ACL files from the table (atomically; an agent may publish only
under its own id, its site's events and replies), writes the password to a
file (0600) and returns the command to run on the device, which names that file
(``--password-file``), never the password (a command line is visible in ``ps``).
The store keeps the password's Mosquitto hash and the token's sha256, never the
secrets (hashes: :mod:`mesh.edge._passwords`, re-exported here). :func:`enroll_many`
enrols a fleet at once, writing the broker files once rather than once per agent.

The control plane's own broker user (``mesh-control``, read/write on the whole
prefix) is created on first use; its password lives in
``<data>/mqtt/control-plane.json`` (0600).

Files (under ``MESH_DATA_DIR``)::

    mesh.db                  table agents
    mqtt/passwd              Mosquitto password_file
    mqtt/acl                 Mosquitto acl_file
    mqtt/control-plane.json  the control plane's broker credentials
    agents/<id>/mqtt-password  an agent's password, for its device (default place)

Example:
    >>> result = enroll("cam-07", site="int-2-1")            # doctest: +SKIP
    >>> print(result.command)                                 # doctest: +SKIP
    mesh-edge-agent --broker mqtt://127.0.0.1:1883 --id cam-07 ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import secrets
import shlex
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from edge_agent._files import atomic_write, check_name, confined
from edge_agent._mqtt import TLS_SCHEMES
from edge_agent.protocol import DEFAULT_PREFIX, Topics
from mesh.core._errors import ConfigError
from mesh.core._settings import MeshSettings
from mesh.edge._agent_store import AgentRecord, EnrolmentStore
from mesh.edge._passwords import (
    EnrolmentError,
    hash_password,
    hash_passwords,
    verify_mosquitto_hash,
)

__all__ = [
    "CONTROL_PLANE_USER",
    "AgentRecord",
    "BrokerCredentials",
    "EdgeSettings",
    "EnrolmentError",
    "EnrolmentResult",
    "EnrolmentStore",
    "build_acl",
    "control_plane_credentials",
    "device_command",
    "embedded_broker_login",
    "enroll",
    "enroll_many",
    "hash_password",
    "revoke",
    "verify_mosquitto_hash",
    "write_broker_files",
]

logger = logging.getLogger(__name__)

CONTROL_PLANE_USER = "mesh-control"
_RESERVED_IDS = frozenset({CONTROL_PLANE_USER, "root", "admin"})


class EdgeSettings(MeshSettings):
    """Settings of the edge side of the control plane (``MESH_*`` variables).

    Extends :class:`~mesh.MeshSettings` (so ``data_dir`` and ``store_path`` are the same).

    Example:
        >>> EdgeSettings(broker_url="mqtt://10.0.0.2:1883").broker_url
        'mqtt://10.0.0.2:1883'
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    broker_url: str = Field(
        "mqtt://127.0.0.1:1883", description="MQTT broker the control plane connects to."
    )
    agent_broker_url: str | None = Field(
        None, description="Broker URL printed for devices; default broker_url."
    )
    broker_ca_file: Path | None = Field(
        None, description="CA an mqtts:// broker's certificate must chain to; default system CAs."
    )
    broker_cert_file: Path | None = Field(
        None, description="Client certificate for an mqtts:// broker (mutual TLS)."
    )
    broker_key_file: Path | None = Field(None, description="Key of broker_cert_file.")
    agent_ca_file: str | None = Field(
        None, description="CA file path on devices, printed as --ca-file; default broker_ca_file."
    )
    topic_prefix: str = Field(DEFAULT_PREFIX, description="MQTT topic prefix.")
    mqtt_username: str | None = Field(
        None,
        description="Control plane's broker user; default mesh-control from the data dir "
        "when a password file exists, else anonymous.",
    )
    mqtt_password: str | None = Field(None, description="Password of mqtt_username.")
    artifact_host: str = Field("127.0.0.1", description="Bind address of the artifact endpoint.")
    artifact_port: int = Field(8471, ge=0, le=65535, description="Port of the artifact endpoint.")
    artifact_base_url: str | None = Field(
        None, description="Artifact endpoint URL devices use; default http://host:port."
    )
    mosquitto_password_file: Path | None = Field(
        None, description="Password file to maintain; default <data_dir>/mqtt/passwd."
    )
    mosquitto_acl_file: Path | None = Field(
        None, description="ACL file to maintain; default <data_dir>/mqtt/acl."
    )
    mosquitto_group: str | None = Field(
        None,
        description="Group Mosquitto runs in (deploy/mosquitto.conf: user mosquitto): the "
        "password and ACL files are then written 0640 in that group; default 0600.",
    )

    @property
    def password_file(self) -> Path:
        """The Mosquitto password file enrolment maintains."""
        return self.mosquitto_password_file or self.data_dir / "mqtt" / "passwd"

    @property
    def acl_file(self) -> Path:
        """The Mosquitto ACL file enrolment maintains."""
        return self.mosquitto_acl_file or self.data_dir / "mqtt" / "acl"

    @property
    def control_credentials_file(self) -> Path:
        """Where the control plane's broker credentials are kept (0600)."""
        return self.data_dir / "mqtt" / "control-plane.json"

    @property
    def device_broker_url(self) -> str:
        """The broker URL devices are told to use."""
        return self.agent_broker_url or self.broker_url

    @property
    def device_ca_file(self) -> str | None:
        """The ``--ca-file`` devices are told to use (None: none, or system CAs)."""
        if self.agent_ca_file:
            return self.agent_ca_file
        return str(self.broker_ca_file) if self.broker_ca_file else None

    @property
    def artifact_url(self) -> str:
        """The artifact endpoint's base URL as devices see it."""
        return self.artifact_base_url or f"http://{self.artifact_host}:{self.artifact_port}"


# ------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class BrokerCredentials:
    """A broker username and password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class EnrolmentResult:
    """What :func:`enroll` hands back (secrets are shown only here).

    Attributes:
        agent_id: the agent.
        site: its site.
        username: its MQTT username.
        password: its MQTT password.
        token: its bearer token for the artifact endpoint.
        public_key: the control plane's artifact-signing public key (base64).
        broker_url: the broker URL devices use.
        artifact_url: the artifact endpoint's base URL.
        command: the shell command to run on the device.
        device_password_file: where the agent's password was written (0600), and the
            path the command reads it from on the device.
        password_file: the Mosquitto password file written.
        acl_file: the Mosquitto ACL file written.
    """

    agent_id: str
    site: str
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)
    public_key: str
    broker_url: str
    artifact_url: str
    command: list[str] = field(repr=False)
    device_password_file: Path
    password_file: Path
    acl_file: Path

    @property
    def command_line(self) -> str:
        """The device command as one shell-quoted line."""
        return shlex.join(self.command)


# --------------------------------------------------------------------- broker files


def build_acl(
    agents: list[tuple[str, str]],
    *,
    prefix: str = DEFAULT_PREFIX,
    control_user: str = CONTROL_PLANE_USER,
) -> str:
    """Render a Mosquitto ACL file for ``(agent_id, site)`` pairs.

    The control plane may read and write the whole prefix; each agent may write
    only under its own id (offload requests included), its site's events and
    replies, and read its desired state, its infer topic, its own replies and its
    site's sensor streams (``{p}/sensors/{site}/#``, pipelines' MQTT sources).

    Example:
        >>> print(build_acl([("cam-07", "int-2-1")]).splitlines()[-7])
        user cam-07
    """
    topics = Topics(prefix)
    lines = [
        "# Generated by fogmesh enrolment (mesh.edge._enrolment); do not edit: re-run",
        "# `mesh agents enroll` instead. An agent publishes only under its own id.",
        "",
        f"user {control_user}",
        f"topic readwrite {prefix}/#",
        "topic read $SYS/#",
    ]
    for agent_id, site in agents:
        lines += ["", f"# agent {agent_id} (site {site})", f"user {agent_id}"]
        lines += [f"topic write {t}" for t in topics.agent_publications(agent_id, site)]
        lines += [f"topic read {t}" for t in topics.agent_subscriptions(agent_id, site)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def control_plane_credentials(settings: EdgeSettings | None = None) -> BrokerCredentials:
    """The control plane's broker credentials, created (0600) on first use.

    ``MESH_MQTT_USERNAME`` / ``MESH_MQTT_PASSWORD`` take precedence when set.
    """
    settings = settings or EdgeSettings()
    if settings.mqtt_username and settings.mqtt_password is not None:
        return BrokerCredentials(settings.mqtt_username, settings.mqtt_password)
    file = settings.control_credentials_file
    with _file_lock(file.parent / ".lock"):
        if file.is_file():
            try:
                data = json.loads(file.read_text())
                return BrokerCredentials(str(data["username"]), str(data["password"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"cannot read broker credentials {file}: {exc}") from exc
        creds = BrokerCredentials(CONTROL_PLANE_USER, secrets.token_urlsafe(24))
        payload = {
            "username": creds.username,
            "password": creds.password,
            "password_hash": hash_password(creds.password, username=creds.username),
        }
        atomic_write(file, json.dumps(payload, indent=2).encode(), mode=0o600)
        logger.info("created control-plane broker user %s in %s", creds.username, file)
        return creds


def _control_hash(settings: EdgeSettings) -> tuple[str, str]:
    creds = control_plane_credentials(settings)
    data = (
        json.loads(settings.control_credentials_file.read_text())
        if settings.control_credentials_file.is_file()
        else {}
    )
    hashed = data.get("password_hash")
    if not isinstance(hashed, str) or not verify_mosquitto_hash(creds.password, hashed):
        hashed = hash_password(creds.password, username=creds.username)
    return creds.username, hashed


def write_broker_files(settings: EdgeSettings, store: EnrolmentStore) -> tuple[Path, Path]:
    """Regenerate the Mosquitto password and ACL files from the store (atomically).

    Returns:
        ``(password_file, acl_file)``. A running Mosquitto needs SIGHUP to re-read them.
    """
    control_user, control_hash = _control_hash(settings)
    entries = store.credentials()
    passwd = "".join(
        f"{user}:{hashed}\n" for user, _, hashed in [(control_user, "", control_hash), *entries]
    )
    acl = build_acl(
        [(a, s) for a, s, _ in entries], prefix=settings.topic_prefix, control_user=control_user
    )
    pw_file, acl_file = settings.password_file, settings.acl_file
    group = settings.mosquitto_group
    with _file_lock(pw_file.parent / ".lock"):
        # 0600; group-readable only for a Mosquitto running as its own user in `group`.
        for file, text in ((pw_file, passwd), (acl_file, acl)):
            atomic_write(file, text.encode(), mode=0o640 if group else 0o600)
            if group:
                shutil.chown(file, group=group)
    logger.info("wrote %s and %s for %d agents", pw_file, acl_file, len(entries))
    return pw_file, acl_file


def embedded_broker_login(settings: EdgeSettings) -> tuple[Path, BrokerCredentials]:
    """The password file an embedded broker checks logins against, and the control plane's login.

    Writes the broker files from the store (creating the control plane's
    credentials on first use), so the mesh's own clients (edge bus, replicas'
    responders) and every enrolled agent can log in, and nobody else: the demo
    stays zero-config and the broker is not anonymous. Agents enrolled later are
    let in as the broker re-reads the file.

    Raises:
        EnrolmentError: the files could not be written.
    """
    with EnrolmentStore(settings.store_path) as store:
        try:
            password_file, _ = write_broker_files(settings, store)
        except OSError as exc:
            raise EnrolmentError(
                f"cannot write the broker files under {settings.data_dir}: {exc}"
            ) from exc
    return password_file, control_plane_credentials(settings)


# ------------------------------------------------------------------------ enrolment


def device_command(
    *,
    agent_id: str,
    site: str,
    broker_url: str,
    username: str,
    password_file: Path,
    public_key: str,
    prefix: str = DEFAULT_PREFIX,
    ca_file: str | None = None,
) -> list[str]:
    """The ``mesh-edge-agent`` command line for a device, as argv.

    The flags are the agent's own (``edge_agent._settings``); the password is read
    from ``password_file``, never given on the command line. Artifact URLs are
    not among them: they travel, pre-signed for the agent, in its desired state.
    ``ca_file`` is given as ``--ca-file`` for an ``mqtts://`` broker only.
    """
    argv = [
        "mesh-edge-agent",
        "--broker",
        broker_url,
        "--id",
        agent_id,
        "--site",
        site,
        "--username",
        username,
        "--password-file",
        str(password_file),
        "--public-key",
        public_key,
    ]
    if prefix != DEFAULT_PREFIX:
        argv += ["--prefix", prefix]
    if ca_file and urlsplit(broker_url).scheme in TLS_SCHEMES:
        argv += ["--ca-file", ca_file]
    return argv


def _check_id(kind: str, value: str) -> str:
    try:
        Topics.check_segment(value)
    except ValueError as exc:
        raise EnrolmentError(f"bad {kind}: {exc}") from exc
    return value


def enroll(
    agent_id: str,
    *,
    site: str,
    settings: EdgeSettings | None = None,
    broker_url: str | None = None,
    store: EnrolmentStore | None = None,
    public_key: str | None = None,
    password_file: Path | None = None,
) -> EnrolmentResult:
    """Enrol (or re-enrol, rotating its secrets) an agent.

    Rewrites the broker files whole (atomically), so each call costs time in
    the number of agents enrolled: enrol a fleet with :func:`enroll_many`.

    Args:
        agent_id: the agent's id; one topic level (``[A-Za-z0-9_.:@-]``).
        site: the agent's site; one topic level.
        settings: edge settings (data dir, broker URL, prefix); read from ``MESH_*``.
        broker_url: broker URL for the device; default ``settings.device_broker_url``.
        store: an open store; default the SQLite file at ``settings.store_path``.
        public_key: artifact-signing public key; default the data dir's key (created).
        password_file: where to write the agent's MQTT password (0600) for its device;
            default ``<data_dir>/agents/<id>/mqtt-password``.

    Raises:
        EnrolmentError: bad id or site, or the broker or password files could not
            be written.

    Example:
        >>> settings = EdgeSettings(data_dir=tmp)                 # doctest: +SKIP
        >>> enroll("cam-07", site="int-2-1", settings=settings)   # doctest: +SKIP
    """
    files = {agent_id: password_file} if password_file is not None else None
    (result,) = enroll_many(
        [(agent_id, site)],
        settings=settings,
        broker_url=broker_url,
        store=store,
        public_key=public_key,
        password_files=files,
    )
    return result


def _device_files(
    agents: Sequence[tuple[str, str]], settings: EdgeSettings, chosen: Mapping[str, Path]
) -> list[Path]:
    """Check every ``(agent_id, site)`` and return each one's device password file."""
    seen: set[str] = set()
    files = []
    for agent_id, site in agents:
        _check_id("agent id", agent_id)
        _check_id("site", site)
        try:
            check_name(agent_id, "agent id")  # it names the device's password file too
            default = confined(settings.data_dir / "agents", agent_id, "mqtt-password")
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        if agent_id in _RESERVED_IDS:
            raise EnrolmentError(f"agent id {agent_id!r} is reserved; choose another")
        if agent_id in seen:
            raise EnrolmentError(f"agent id {agent_id!r} is given twice; give each agent once")
        seen.add(agent_id)
        files.append(chosen.get(agent_id, default))
    return files


def enroll_many(
    agents: Sequence[tuple[str, str]],
    *,
    settings: EdgeSettings | None = None,
    broker_url: str | None = None,
    store: EnrolmentStore | None = None,
    public_key: str | None = None,
    password_files: Mapping[str, Path] | None = None,
) -> list[EnrolmentResult]:
    """Enrol (or re-enrol) many agents at once, as :func:`enroll` would each, in order.

    Every id and site is checked before anything is written (a bad one changes
    nothing); the passwords are hashed in one ``mosquitto_passwd`` run, the agents
    stored in one transaction and the broker files written once, so a fleet of N
    costs time in N, where N calls of :func:`enroll` cost time in N².

    Args:
        agents: ``(agent_id, site)`` pairs; an id at most once.
        settings: as :func:`enroll`.
        broker_url: as :func:`enroll`.
        store: as :func:`enroll`.
        public_key: as :func:`enroll`.
        password_files: agent id to where its password is written (0600); default
            ``<data_dir>/agents/<id>/mqtt-password`` for each agent not named.

    Raises:
        EnrolmentError: a bad or repeated id or site, or the broker or password
            files could not be written.

    Example:
        >>> enroll_many([("cam-07", "int-2-1"), ("cam-08", "int-2-1")])  # doctest: +SKIP
    """
    settings = settings or EdgeSettings()
    device_files = _device_files(agents, settings, password_files or {})
    if not agents:
        return []
    if public_key is None:
        from mesh.models._artifacts import ArtifactSigner

        public_key = ArtifactSigner.load_or_create(settings.data_dir).public_key_b64()
    passwords = [secrets.token_urlsafe(24) for _ in agents]
    tokens = [secrets.token_urlsafe(32) for _ in agents]
    hashes = hash_passwords(passwords)
    own_store = store is None
    db = store or EnrolmentStore(settings.store_path)
    try:
        db.upsert_many(
            [(a, s, a, h, t) for (a, s), h, t in zip(agents, hashes, tokens, strict=True)]
        )
        try:
            pw_file, acl_file = write_broker_files(settings, db)
        except OSError as exc:
            raise EnrolmentError(
                f"cannot write the broker files for {len(agents)} agents: {exc}"
            ) from exc
    finally:
        if own_store:
            db.close()
    url = broker_url or settings.device_broker_url
    results = []
    for (agent_id, site), password, token, device_file in zip(
        agents, passwords, tokens, device_files, strict=True
    ):
        try:
            atomic_write(device_file, password.encode(), mode=0o600)
        except OSError as exc:
            raise EnrolmentError(f"cannot write the password file {device_file}: {exc}") from exc
        command = device_command(
            agent_id=agent_id,
            site=site,
            broker_url=url,
            username=agent_id,
            password_file=device_file,
            public_key=public_key,
            prefix=settings.topic_prefix,
            ca_file=settings.device_ca_file,
        )
        logger.info("enrolled agent %s (site %s)", agent_id, site)
        results.append(
            EnrolmentResult(
                agent_id=agent_id,
                site=site,
                username=agent_id,
                password=password,
                token=token,
                public_key=public_key,
                broker_url=url,
                artifact_url=settings.artifact_url,
                command=command,
                device_password_file=device_file,
                password_file=pw_file,
                acl_file=acl_file,
            )
        )
    return results


def revoke(
    agent_id: str, *, settings: EdgeSettings | None = None, store: EnrolmentStore | None = None
) -> bool:
    """Remove an agent and its broker credentials; returns whether it was enrolled."""
    settings = settings or EdgeSettings()
    own_store = store is None
    db = store or EnrolmentStore(settings.store_path)
    try:
        existed = db.delete(agent_id)
        write_broker_files(settings, db)
    finally:
        if own_store:
            db.close()
    if existed:
        logger.info("revoked agent %s", agent_id)
    return existed
