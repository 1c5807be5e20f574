"""paho's network loop without select()'s bound: descriptors numbered 1024 and up.

paho 2.2's loop (``Client._loop``, run by ``loop_start`` and ``loop_forever``)
waits with ``select.select``, which raises ``ValueError`` for a descriptor
numbered ``FD_SETSIZE`` (1024) or more. paho reads that as a lost connection
and reconnects; the new socket gets a high number again, and the client loops
through connects that never see their CONNACK. Any process holding over a
thousand descriptors hits it: the control plane while its gateway serves up to
``MESH_GATEWAY_MAX_CONNECTIONS`` (1,024) artifact downloads of a fleet rollout,
a replica under many clients, or ``bench/fleet.py``, whose simulated agents
hold two thousand sockets beside the bench's own bus (issue 19: "no CONNACK
from broker" at 2,000 agents was this).

:func:`install` gives paho's module a ``select`` whose ``select()`` keeps the
signature and errors of ``select.select`` and waits with ``poll()`` (no bound).
:func:`edge_agent._mqtt.new_client` installs it before it builds any client.

Example:
    >>> import socket
    >>> a, b = socket.socketpair()
    >>> _ = b.send(b"x")
    >>> PollSelect().select([a], [], [], 1.0)[0] == [a]
    True
"""

from __future__ import annotations

import select
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["PollSelect", "install"]

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITE = select.POLLOUT | select.POLLERR


def _fileno(obj: Any) -> int:
    """What ``select.select`` takes: an int, or an object with ``fileno()``."""
    fd = obj if isinstance(obj, int) else obj.fileno()  # AttributeError -> TypeError below
    if not isinstance(fd, int):
        raise TypeError(f"fileno() returned a non-integer: {fd!r}")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


class PollSelect(types.ModuleType):
    """Stands in for the ``select`` module in paho's namespace (only ``select()`` differs)."""

    def __init__(self) -> None:
        super().__init__("select", "select.select over poll(): no FD_SETSIZE bound")
        self.__dict__.update({k: v for k, v in vars(select).items() if not k.startswith("__")})
        self.select = self._select

    @staticmethod
    def _select(
        rlist: Sequence[Any],
        wlist: Sequence[Any],
        xlist: Sequence[Any],
        timeout: float | None = None,
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """``select.select(rlist, wlist, xlist, timeout)``, waiting in ``poll()``.

        Raises:
            TypeError: an entry is neither an int nor has ``fileno()`` (as select's).
            ValueError: a negative descriptor (a closed socket's -1), as select's.
        """
        try:
            wanted: dict[int, int] = {}
            for objs, mask in ((rlist, _READ), (wlist, _WRITE), (xlist, select.POLLPRI)):
                for obj in objs:
                    fd = _fileno(obj)
                    wanted[fd] = wanted.get(fd, 0) | mask
        except AttributeError as exc:
            raise TypeError(str(exc)) from exc
        poller = select.poll()
        for fd, mask in wanted.items():
            poller.register(fd, mask)
        ready = dict(poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0))
        for fd, events in ready.items():
            if events & select.POLLNVAL:
                raise OSError(9, f"Bad file descriptor ({fd})")

        def picked(objs: Sequence[Any], mask: int) -> list[Any]:
            return [o for o in objs if ready.get(_fileno(o), 0) & mask]

        return (
            picked(rlist, _READ),
            picked(wlist, _WRITE),
            picked(xlist, select.POLLPRI),
        )


def install() -> None:
    """Give paho's client module :class:`PollSelect` as its ``select`` (once; idempotent)."""
    module = sys.modules.get("paho.mqtt.client")
    if module is None or isinstance(getattr(module, "select", None), PollSelect):
        return
    module.select = PollSelect()  # type: ignore[attr-defined]
