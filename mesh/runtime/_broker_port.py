"""The embedded broker's port, kept across restarts once devices were told it.

``MESH_EMBEDDED_BROKER_PORT`` names the port; when it is taken at start, the
broker takes a free one instead, and every agent started meanwhile is told that
one (``cluster.json``, the enrolment command). A restart that bound the named
port again, now free, would leave those agents knocking at a port nobody
listens on. So the port really used is recorded (``<data>/mqtt/broker-port.json``)
with the one that was asked for, and a later start asking for the same port
tries the recorded one first.

Example:
    >>> import tempfile, pathlib
    >>> record = pathlib.Path(tempfile.mkdtemp()) / "broker-port.json"
    >>> ports_to_try(1883, record)
    [1883]
    >>> remember(record, asked=1883, used=42935)
    >>> ports_to_try(1883, record), ports_to_try(1884, record)
    ([42935, 1883], [1884])
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["ports_to_try", "remember"]


def ports_to_try(asked: int, record: Path) -> list[int]:
    """The ports to bind, in order: the one used last for this request, then ``asked``."""
    if asked == 0:
        return [0]
    try:
        last = json.loads(record.read_text())
        used, was_asked = int(last["used"]), int(last["asked"])
    except (OSError, ValueError, KeyError, TypeError):
        return [asked]
    if was_asked != asked or used in (0, asked) or not 0 < used < 65536:
        return [asked]
    return [used, asked]


def remember(record: Path, *, asked: int, used: int) -> None:
    """Record that asking for ``asked`` gave ``used`` (written atomically; best effort)."""
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"asked": asked, "used": used}))
        os.replace(tmp, record)
