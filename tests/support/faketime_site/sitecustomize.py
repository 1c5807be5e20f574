"""Loaded at start-up by the Python processes :mod:`tests.support.faketime` skews.

libfaketime 0.9.10 (Debian bookworm's) with ``FAKETIME_DONT_FAKE_MONOTONIC=1``
turns ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, which ``time.sleep``
calls from Python 3.11 on, into EINVAL: every sleep raises
(wolfcw/libfaketime#426). Sleeping in ``select`` instead takes the same time
and no absolute deadline. Nothing else changes.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
