"""Quiet logs under stress: a line a loop repeats round after round is logged once, with a count.

A reconcile loop that finds the same condition every round (a node
overloaded, a pin to a node that is down, a probe that fails) would write the
same line every round, for minutes. A :class:`RepeatLog` wraps a logger for one
loop (one instance each, so two controllers in a process do not quiet each
other): the first time a line is logged it goes through; the identical lines
after it are counted, not written; the count is written

* with the line itself when it passes again after ``every_s``
  (``... (repeated 239 times in 300 s)``), and
* as soon as the same call (the same format string) logs a different line: the
  condition changed (``... (before: '...' repeated 12 times)``).

The counts are public (:attr:`RepeatLog.suppressed`) for tests and chaos runs.
Bounded: at most ``max_lines`` distinct lines are remembered (the oldest is
forgotten first).

Example:
    >>> quiet = RepeatLog(logging.getLogger("mesh.control._round"), every_s=300.0)
    >>> quiet.info("placement round: %s; %d move(s)", "node overloaded: fog-1", 0)
    True
    >>> quiet.info("placement round: %s; %d move(s)", "node overloaded: fog-1", 0)
    False
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RepeatLog"]


@dataclass(slots=True)
class _Line:
    """A line written at ``since``, and how often it came again unwritten."""

    since: float
    repeats: int = 0


class RepeatLog:
    """Writes a repeated log line once, then how many times it repeated.

    Args:
        logger: where lines go.
        every_s: a line still repeating is written again (with its count) this often.
        max_lines: distinct lines remembered at most.
        clock: monotonic seconds (injected in tests).

    Raises:
        ValueError: ``every_s`` or ``max_lines`` not positive.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 300.0,
        max_lines: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Nothing written yet."""
        if not every_s > 0 or max_lines < 1:
            raise ValueError(
                f"every_s must be > 0 and max_lines >= 1, got every_s={every_s!r}, "
                f"max_lines={max_lines!r}"
            )
        self.logger = logger
        self._every_s = every_s
        self._max_lines = max_lines
        self._clock = clock
        self._lock = threading.Lock()
        # (level, format, text, key): a line; the same (level, format): the same call.
        self._lines: OrderedDict[tuple[int, str, str, str], _Line] = OrderedDict()
        #: Lines counted and not written, in all.
        self.suppressed = 0

    def debug(self, msg: str, *args: Any, **kw: Any) -> bool:
        """:meth:`log` at DEBUG."""
        return self.log(logging.DEBUG, msg, *args, _stacklevel=3, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, msg, *args, _stacklevel=3, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, msg, *args, _stacklevel=3, **kw)

    def exception(self, msg: str, *args: Any, exc: BaseException, **kw: Any) -> bool:
        """:meth:`log` at ERROR with ``exc``'s traceback; the same error again is a repeat."""
        return self.log(
            logging.ERROR, msg, *args, exc_info=exc, key=repr(exc)[:200], _stacklevel=3, **kw
        )

    def log(
        self,
        level: int,
        msg: str,
        *args: Any,
        key: str = "",
        exc_info: BaseException | None = None,
        _stacklevel: int = 2,
    ) -> bool:
        """Write ``msg % args`` unless it is a repeat; returns whether it was written.

        Args:
            level: the logging level.
            msg: the format string (lazy ``%`` formatting, as ``logging``'s).
            args: its arguments.
            key: what else tells two lines apart (an exception's repr, say).
            exc_info: an exception whose traceback goes with the line.
        """
        if not self.logger.isEnabledFor(level):
            return False
        text = msg % args if args else msg
        line_key = (level, msg, text, key)
        now = self._clock()
        with self._lock:
            line = self._lines.get(line_key)
            if line is not None and now - line.since < self._every_s:
                line.repeats += 1
                self.suppressed += 1
                return False
            notes = []
            if line is not None and line.repeats:
                notes.append(f"repeated {line.repeats} times in {now - line.since:.0f} s")
            for other_key, other in self._lines.items():
                # The same call said something else: that condition changed.
                if other_key[:2] == line_key[:2] and other_key != line_key and other.repeats:
                    notes.append(f"before: {other_key[2][:160]!r} repeated {other.repeats} times")
                    other.repeats = 0
            self._lines.pop(line_key, None)
            self._lines[line_key] = _Line(now)
            while len(self._lines) > self._max_lines:
                self._lines.popitem(last=False)
        suffix = f" ({'; '.join(notes)})" if notes else ""
        self.logger.log(level, "%s%s", text, suffix, exc_info=exc_info, stacklevel=_stacklevel)
        return True
