"""The embedded broker's login check: the Mosquitto password file enrolment writes.

:class:`PasswordFileAuth` is an amqtt authentication plugin (amqtt loads it from
the broker config's plugin list, its :class:`PasswordFileAuth.Config` from the
entry's options). It lets a client in only with a username and the password
whose ``$7$``/``$6$`` hash stands for that user in the file
(:func:`mesh.edge._enrolment.write_broker_files` writes it from the control
plane's key store: the control plane's own user and every enrolled agent). The
file is read again when it changes (one ``stat`` per login, which is rare next
to messages), so an agent enrolled while the broker runs can log in, and a
revoked one cannot, without a restart.

A client let in is never marked anonymous, so its persistent session keeps QoS
1 messages while it is away (see :mod:`mesh.edge.broker._amqtt_sessions`).

Only :mod:`mesh.edge.broker._broker` uses this module; it imports amqtt.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin

from mesh.edge._enrolment import verify_mosquitto_hash

__all__ = ["PasswordFileAuth", "read_password_file"]

logger = logging.getLogger(__name__)


def read_password_file(path: Path) -> dict[str, str]:
    """``username -> hash`` from a Mosquitto password file (comments and blanks skipped)."""
    users: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            user, sep, hashed = line.partition(":")
            if sep and user:
                users[user] = hashed
    return users


class PasswordFileAuth(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication against a Mosquitto password file, re-read when it changes."""

    @dataclass
    class Config:
        """The plugin's options in the broker config."""

        password_file: str = ""

    def __init__(self, context: Any) -> None:
        """Read the password file named in the plugin's options."""
        super().__init__(context)
        self._path = Path(self.config.password_file)
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._reload()

    def _reload(self) -> None:
        with self._lock:
            try:
                st = self._path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    self._users = read_password_file(self._path)
                    self._stamp = stamp
                    logger.info("embedded broker: %d user(s) from %s", len(self._users), self._path)
            except OSError as exc:
                # Keep the users known so far: a file being replaced is not a lock-out.
                logger.warning("embedded broker: cannot read %s: %s", self._path, exc)

    async def authenticate(self, *, session: Any) -> bool:
        """Whether the client's username and password match the file."""
        self._reload()
        username = getattr(session, "username", None)
        password = getattr(session, "password", None)
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        hashed = self._users.get(username) if username else None
        ok = (
            hashed is not None
            and isinstance(password, str)
            and verify_mosquitto_hash(password, hashed)
        )
        if ok:
            session.is_anonymous = False
        else:
            logger.warning(
                "embedded broker: refused client %s (user %r)",
                getattr(session, "client_id", "?"),
                username,
            )
        return ok
