"""Ray Tune: a trial's report, and the Tune search driven from a job thread.

:func:`report_trial` is what ``mesh.report(...)`` calls inside a trial; it
records the trial's node under :data:`NODE_ID_METRIC`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import ray

__all__ = ["NODE_ID_METRIC", "report_trial"]

logger = logging.getLogger(__name__)

#: Metric key under which :func:`report_trial` records the trial's node (stripped from results).
NODE_ID_METRIC = "mesh_node_id"


def report_trial(metrics: Mapping[str, Any]) -> None:
    """Report one round of a Tune trial's metrics (``mesh.report(**metrics)``).

    Inside a trial of an ``@app.tune`` function this calls ``ray.tune.report``
    (``ray.train.report`` raises under Tune in Ray 2.60). Outside a trial, e.g.
    when the trainable is called locally, it does nothing, so trainables stay
    callable as plain functions.

    Example:
        >>> report_trial({"val_mae": 0.42})   # outside a trial: a no-op
    """
    if not in_tune_session():
        logger.debug("report outside a Tune trial ignored: %s", sorted(metrics))
        return
    from ray import tune

    payload = dict(metrics)
    payload[NODE_ID_METRIC] = ray.get_runtime_context().get_node_id()
    tune.report(payload)


def in_tune_session() -> bool:
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # Ray moved its session helper: let tune.report decide
        return True
    return get_session() is not None
