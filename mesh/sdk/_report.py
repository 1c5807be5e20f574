"""Reporting metrics from inside a tune trial."""

from __future__ import annotations

__all__ = ["report"]


def report(**metrics: float) -> None:
    """Report metrics for the current tune trial; call it once per epoch or step.

    Works only inside a trial started by an ``@app.tune`` function.

    Example:
        >>> @app.tune(metric="val_mae", mode="min")  # doctest: +SKIP
        ... def tune_counter(config: dict) -> None:
        ...     for epoch in range(5):
        ...         mesh.report(val_mae=train_one_epoch(config))
    """
    from mesh.ray._tune import report_trial  # only trials, which run under Ray, get here

    report_trial(dict(metrics))
