"""Mosquitto password hashes: one (:func:`hash_password`) or a batch (:func:`hash_passwords`).

The broker's password file holds ``user:$7$...`` lines (PBKDF2-SHA512, what
``mosquitto_passwd`` 2.0 writes). Hashes come from ``mosquitto_passwd`` when it
is installed (so the format is the installed broker's own), else from the same
computation in Python. A batch runs ``mosquitto_passwd -U`` once over a private
plain-text file instead of once per password: enrolling a fleet spawns one
process, not one per agent. :func:`verify_mosquitto_hash` checks a password
against ``$6$`` and ``$7$`` hashes (the embedded broker's logins, the control
plane's stored hash).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from mesh.core._errors import MeshError

__all__ = [
    "EnrolmentError",
    "hash_password",
    "hash_passwords",
    "verify_mosquitto_hash",
]

_PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
_SALT_BYTES = 12
# A password `mosquitto_passwd -U` reads back whole: no ':' or line break, no
# leading '$' (it would take the line as hashed already), no spaces to trim.
_PLAIN = re.compile(r"[A-Za-z0-9._~+/=-]+")

HashMode = Literal["auto", "binary", "python"]


class EnrolmentError(MeshError, ValueError):
    """An agent could not be enrolled (bad id, files not writable, no hash, ...).

    Defined here, with the hashes enrolment needs first; :mod:`mesh.edge._enrolment`
    re-exports it.
    """


def _python_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    salt_b64 = base64.b64encode(salt).decode()
    return f"$7${_PBKDF2_ITERATIONS}${salt_b64}${base64.b64encode(digest).decode()}"


def _run_tool(args: list[str], what: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise EnrolmentError(
            f"mosquitto_passwd failed for {what} (exit {proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )


def _binary_hash(tool: str, username: str, password: str) -> str:
    with tempfile.TemporaryDirectory(prefix="mesh-passwd-") as tmp:
        file = Path(tmp) / "passwd"
        # -c creates the file; -b takes the password from the command line, so it
        # only ever lives in this private temp dir and this short-lived process.
        _run_tool([tool, "-c", "-b", str(file), username, password], repr(username))
        line = file.read_text().strip()
    user, _, hashed = line.partition(":")
    if user != username or not hashed.startswith("$"):
        raise EnrolmentError(f"unexpected mosquitto_passwd output for {username!r}")
    return hashed


def _binary_hashes(tool: str, passwords: Sequence[str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="mesh-passwd-") as tmp:
        file = Path(tmp) / "passwd"
        # Plain text only in this private (0700) temp dir, 0600, until -U hashes it
        # in place; users are placeholders (u<index>), so no id can break a line.
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"u{i}:{p}\n" for i, p in enumerate(passwords))
        _run_tool([tool, "-U", str(file)], f"{len(passwords)} passwords")
        lines = file.read_text().splitlines()
    hashes = [line.partition(":")[2] for line in lines]
    users = [line.partition(":")[0] for line in lines]
    if users != [f"u{i}" for i in range(len(passwords))] or not all(
        verify_mosquitto_hash(p, h) for p, h in zip(passwords, hashes, strict=True)
    ):
        raise EnrolmentError(
            f"unexpected mosquitto_passwd -U output for {len(passwords)} passwords"
        )
    return hashes


def _tool(mode: HashMode) -> str | None:
    tool = shutil.which("mosquitto_passwd") if mode != "python" else None
    if mode == "binary" and tool is None:
        raise EnrolmentError("mosquitto_passwd is not installed")
    return tool


def hash_password(password: str, *, username: str = "user", mode: HashMode = "auto") -> str:
    """Return a Mosquitto password-file hash (``$7$`` PBKDF2-SHA512) of ``password``.

    Args:
        password: the secret.
        username: the user it is for (``mosquitto_passwd`` needs one).
        mode: ``"binary"`` uses ``mosquitto_passwd -b``, ``"python"`` computes the same
            format itself, ``"auto"`` prefers the binary when installed.

    Raises:
        EnrolmentError: ``mode="binary"`` without the tool, or the tool failed.

    Example:
        >>> verify_mosquitto_hash("s3cret", hash_password("s3cret", mode="python"))
        True
    """
    tool = _tool(mode)
    if tool is not None:
        return _binary_hash(tool, username, password)
    return _python_hash(password)


def hash_passwords(passwords: Sequence[str], *, mode: HashMode = "auto") -> list[str]:
    """Hash many passwords, in order, as :func:`hash_password` would each.

    With the binary, one ``mosquitto_passwd -U`` run hashes them all (each hash is
    checked against its password); a password ``-U`` could misread (``:``, a line
    break, a leading ``$``, spaces) is hashed on its own instead.

    Raises:
        EnrolmentError: ``mode="binary"`` without the tool, or the tool failed.

    Example:
        >>> [h[:7] for h in hash_passwords(["a", "b"], mode="python")]
        ['$7$101$', '$7$101$']
    """
    tool = _tool(mode)
    if tool is None:
        return [_python_hash(p) for p in passwords]
    plain = [i for i, p in enumerate(passwords) if _PLAIN.fullmatch(p)]
    batch = _binary_hashes(tool, [passwords[i] for i in plain]) if plain else []
    hashes = dict(zip(plain, batch, strict=True))
    return [
        hashes[i] if i in hashes else _binary_hash(tool, "user", p) for i, p in enumerate(passwords)
    ]


def verify_mosquitto_hash(password: str, hashed: str) -> bool:
    """Check ``password`` against a ``$6$`` or ``$7$`` Mosquitto hash."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            got = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), base64.b64decode(salt), iterations, 64
            )
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            got = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
        return hmac.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False
