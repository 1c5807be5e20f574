"""Reporting metrics from inside a tune trial: :func:`report`.

The SDK does not know Ray: the backend that runs a trial installs a reporter
for the trial's duration (:func:`trial_reporter`), and :func:`report` hands the
metrics to it. Outside a trial, e.g. when a trainable is called locally, there
is no reporter and :func:`report` does nothing, so trainables stay callable as
plain functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar

__all__ = ["report", "trial_reporter"]

logger = logging.getLogger(__name__)

Reporter = Callable[[Mapping[str, float]], None]

_reporter: ContextVar[Reporter | None] = ContextVar("mesh_trial_reporter", default=None)


def report(**metrics: float) -> None:
    """Report metrics for the current tune trial; call it once per epoch or step.

    Works only inside a trial started by an ``@app.tune`` function; elsewhere
    it does nothing.

    Example:
        >>> @app.tune(metric="val_mae", mode="min")  # doctest: +SKIP
        ... def tune_counter(config: dict) -> None:
        ...     for epoch in range(5):
        ...         mesh.report(val_mae=train_one_epoch(config))
    """
    reporter = _reporter.get()
    if reporter is None:
        logger.debug("report outside a tune trial ignored: %s", sorted(metrics))
        return
    reporter(dict(metrics))


@contextlib.contextmanager
def trial_reporter(reporter: Reporter) -> Iterator[None]:
    """Send :func:`report` calls made in this context to ``reporter``.

    The backend that runs a tune trial wraps the user's trainable in it.

    Example:
        >>> seen = []
        >>> with trial_reporter(seen.append):
        ...     report(loss=0.5)
        >>> seen
        [{'loss': 0.5}]
    """
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
