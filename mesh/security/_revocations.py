"""Revoked tokens: a deny list of token ids in the mesh's SQLite file.

``mesh tokens revoke ID`` adds a token id (the ``jti`` claim, shown by ``mesh
tokens create --show-id`` and in the gateway's logs) to the ``revoked_tokens``
table of ``mesh.db``; :class:`~mesh.security._token_auth.TokenAuth` refuses a
token whose id is on it, cached tokens included. A running control plane sees
a revocation made by another process within a second: :meth:`TokenRevocations.is_revoked`
looks at the file again at most once a second (``PRAGMA data_version``, then
the ids only when something was written), so a request costs a set lookup.

Entries outlive their token's expiry by nothing: an expired token is refused
anyway, so :meth:`TokenRevocations.revoke` drops the entries whose token has
expired.

Example:
    >>> revocations = TokenRevocations(":memory:")
    >>> revocations.revoke("0123456789abcdef", expires_at=2e9, now=1e9)
    True
    >>> revocations.is_revoked("0123456789abcdef")
    True
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mesh.core._errors import StoreError
from mesh.core._sqlite import Schema, open_sqlite, write_transaction

__all__ = ["TokenRevocations"]

logger = logging.getLogger(__name__)

_SCHEMA = Schema(
    "revoked_tokens",
    """
CREATE TABLE IF NOT EXISTS revoked_tokens (
    token_id TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
""",
)
_TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")
_CHECK_S = 1.0


class TokenRevocations:
    """The deny list of revoked token ids; thread-safe.

    Args:
        path: the SQLite file (the mesh's ``mesh.db``).
        clock: monotonic seconds (injected in tests), for the once-a-second look.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Open (creating if needed) the table in the SQLite file at ``path``."""
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = open_sqlite(self.path, _SCHEMA, named_rows=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the token deny list in {self.path}: {exc}") from exc
        self._ids: frozenset[str] = frozenset()
        self._version: int | None = None
        self._checked = float("-inf")
        self._load(force=True)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> TokenRevocations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def check_id(token_id: str) -> str:
        """Return ``token_id`` if it is one (16 hex digits), else raise ValueError."""
        if not isinstance(token_id, str) or not _TOKEN_ID.match(token_id):
            raise ValueError(
                f"{token_id!r} is not a token id: expected 16 hex digits (the token's 'jti')"
            )
        return token_id

    def revoke(
        self, token_id: str, *, expires_at: float | None = None, now: float | None = None
    ) -> bool:
        """Put ``token_id`` on the deny list; returns whether it was not there yet.

        Args:
            token_id: the token's id.
            expires_at: when the token expires anyway (default: a maximum lifetime from now,
                kept for as long as any token can live).
            now: Unix seconds (tests).
        """
        self.check_id(token_id)
        now = time.time() if now is None else now
        until = expires_at if expires_at is not None else now + 366 * 86400.0
        with write_transaction(self._db, self._lock, f"token deny list ({self.path})") as db:
            db.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (now,))
            cur = db.execute(
                "INSERT OR IGNORE INTO revoked_tokens (token_id, revoked_at, expires_at) "
                "VALUES (?, ?, ?)",
                (token_id, now, until),
            )
            added = cur.rowcount > 0
        self._load(force=True)
        return added

    def is_revoked(self, token_id: str) -> bool:
        """Whether ``token_id`` is on the list (as of at most a second ago)."""
        self._load()
        return token_id in self._ids

    def ids(self) -> frozenset[str]:
        """Every revoked id (fresh from the file)."""
        self._load(force=True)
        return self._ids

    def _load(self, *, force: bool = False) -> None:
        now = self._clock()
        with self._lock:
            if not force and now - self._checked < _CHECK_S:
                return
            self._checked = now
            try:
                # data_version changes when another connection commits: cheap to ask.
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
                if version == self._version and not force:
                    return
                rows = self._db.execute("SELECT token_id FROM revoked_tokens").fetchall()
            except sqlite3.Error as exc:
                if force:
                    raise StoreError(f"token deny list {self.path}: {exc}") from exc
                # A request keeps the list it has rather than fail; the next look retries.
                logger.warning("token deny list %s not re-read: %s", self.path, exc)
                return
            self._version = version
            self._ids = frozenset(str(r[0]) for r in rows)
