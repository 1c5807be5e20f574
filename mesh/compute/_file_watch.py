"""File triggers: a file that appears under a watched glob, once it stopped changing.

:class:`FileWatch` polls (one ``glob`` per engine step, at most
``_MAX_FILES`` paths): inotify would need a thread per watch and misses files
on network mounts, and a step every half second is soon enough for batch
work. Files there when the watch starts are not new; a file fires once, when
its size and modification time have stayed the same for ``settle_s`` of the
engine's clock (a file still being written does not fire half-written), and
again only when it changes.
"""

from __future__ import annotations

import glob
import logging
import os
import stat as stat_module

__all__ = ["FileWatch"]

logger = logging.getLogger(__name__)

_MAX_FILES = 10_000

_Signature = tuple[int, int]


class FileWatch:
    """New or changed files matching ``pattern``, each once it settled.

    Example:
        >>> watch = FileWatch("/tmp/incoming/*.csv", settle_s=1.0, now=0.0)  # doctest: +SKIP
        >>> watch.scan(now=5.0)  # doctest: +SKIP
        ['/tmp/incoming/counts-1.csv']
    """

    def __init__(self, pattern: str, *, settle_s: float, now: float) -> None:
        """Watch ``pattern`` (a glob; ``**`` recurses); files there now are known."""
        self.pattern = pattern
        self.settle_s = settle_s
        self.truncated = False
        self._done: dict[str, _Signature] = dict(self._listing())
        self._pending: dict[str, tuple[_Signature, float]] = {}

    def _listing(self) -> list[tuple[str, _Signature]]:
        found: list[tuple[str, _Signature]] = []
        for path in glob.iglob(self.pattern, recursive=True):
            if len(found) >= _MAX_FILES:
                if not self.truncated:
                    logger.warning(
                        "file trigger %s: over %d files; the rest unseen", self.pattern, _MAX_FILES
                    )
                self.truncated = True
                break
            try:
                stat = os.stat(path)
            except OSError:  # gone between the listing and the stat
                continue
            if stat_module.S_ISREG(stat.st_mode):
                found.append((path, (stat.st_size, stat.st_mtime_ns)))
        return found

    def scan(self, now: float) -> list[str]:
        """The files that settled since the last scan, in name order."""
        ready: list[str] = []
        listing = dict(self._listing())
        for path, signature in sorted(listing.items()):
            if self._done.get(path) == signature:
                continue
            pending = self._pending.get(path)
            if pending is None or pending[0] != signature:
                self._pending[path] = (signature, now)
                if self.settle_s > 0:
                    continue
            if now - self._pending[path][1] >= self.settle_s:
                del self._pending[path]
                self._done[path] = signature
                ready.append(path)
        for path in [p for p in self._pending if p not in listing]:
            del self._pending[path]  # deleted before it settled
        for path in [p for p in self._done if p not in listing]:
            del self._done[path]  # a file written again under its name is new
        return ready
