"""Ray Tune: a trial's report, and the Tune search driven from a job thread.

:func:`report_trial` is what ``mesh.report(...)`` calls inside a trial; it
records the trial's node under :data:`NODE_ID_METRIC`. :func:`run_tune` runs
one search (one at a time in a process) for :class:`~mesh.ray._jobs.JobRunner`:
each trial's placement group carries the tier's ``bundle_label_selector``, and
a ``Stopper`` ends the search when the job's stop event is set.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import exceptions as ray_exceptions

from mesh.compute._backend import CallResult, TuneResult
from mesh.core._errors import BackendError, InvocationError
from mesh.ray._calls import JobStopped, local_error, remote_error, system_error
from mesh.ray._remote import label_selector, safe_name, trial_bundle
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._report import trial_reporter
from mesh.sdk._specs import Domain, TuneSpec

__all__ = ["NODE_ID_METRIC", "report_trial", "run_tune"]

logger = logging.getLogger(__name__)

#: Metric key under which :func:`report_trial` records the trial's node (stripped from results).
NODE_ID_METRIC = "mesh_node_id"
# Keys Tune adds to every result; TuneResult keeps the user's metrics (and the iteration).
_TUNE_BOOKKEEPING = frozenset(
    {
        "config",
        "timestamp",
        "checkpoint_dir_name",
        "should_checkpoint",
        "done",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "time_since_restore",
        "iterations_since_restore",
        "experiment_tag",
        NODE_ID_METRIC,
    }
)
# One Tuner at a time in a process: Tune keeps process-wide state (trainable registry,
# callbacks, environment) that concurrent fits would share.
_TUNE_LOCK = threading.Lock()
_stop_events: dict[str, threading.Event] = {}
_token_counter = itertools.count()


def report_trial(metrics: Mapping[str, Any]) -> None:
    """Report one round of a Tune trial's metrics (``mesh.report(**metrics)``).

    Inside a trial of an ``@app.tune`` function this calls ``ray.tune.report``
    (``ray.train.report`` raises under Tune in Ray 2.60). Outside a trial, e.g.
    when the trainable is called locally, it does nothing, so trainables stay
    callable as plain functions.

    Example:
        >>> report_trial({"val_mae": 0.42})   # outside a trial: a no-op
    """
    if not _in_tune_session():
        logger.debug("report outside a Tune trial ignored: %s", sorted(metrics))
        return
    from ray import tune

    payload = dict(metrics)
    payload[NODE_ID_METRIC] = ray.get_runtime_context().get_node_id()
    tune.report(payload)


def _in_tune_session() -> bool:
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # Ray moved its session helper: let tune.report decide
        return True
    return get_session() is not None


def _stop_requested(token: str) -> bool:
    event = _stop_events.get(token)
    return event is not None and event.is_set()


def run_tune(
    fn: RegisteredFunction,
    spec: TuneSpec,
    kwargs: Mapping[str, Any],
    run_id: str,
    stop: threading.Event,
    *,
    data_dir: Path,
) -> CallResult:
    """Run a Tune search of ``fn`` (``kwargs`` join the config as constants); the best trial.

    Results are stored under ``data_dir/tune``.
    """
    from ray import tune

    token = f"{spec.name}-{run_id}-{next(_token_counter)}"
    _stop_events[token] = stop
    try:
        with _TUNE_LOCK:
            if stop.is_set():
                raise JobStopped
            started = time.monotonic()
            grid = _fit(tune, fn, spec, kwargs, run_id, token, data_dir)
            if stop.is_set():
                raise JobStopped
            logger.info(
                "tune %s (run %s): %d trials in %.1f s",
                spec.name,
                run_id,
                len(grid),
                time.monotonic() - started,
            )
    finally:
        _stop_events.pop(token, None)
    return _tune_result(grid, spec, run_id)


def _fit(
    tune: Any,
    fn: RegisteredFunction,
    spec: TuneSpec,
    kwargs: Mapping[str, Any],
    run_id: str,
    token: str,
    data_dir: Path,
) -> Any:
    from ray.tune.logger import JsonLoggerCallback

    user_fn = fn.fn

    def trainable(config: dict[str, Any]) -> None:
        with trial_reporter(report_trial):  # mesh.report() inside the trial
            out = user_fn(config)
        if isinstance(out, Mapping):
            report_trial(out)

    trainable.__name__ = trainable.__qualname__ = spec.name
    bundle = {k: v for k, v in trial_bundle(spec).items() if v}
    resources = tune.PlacementGroupFactory(
        [bundle], strategy="PACK", bundle_label_selector=[label_selector(spec)]
    )
    scheduler: Any = None
    if spec.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(max_t=spec.max_iterations)
    param_space = {key: _tune_domain(tune, value) for key, value in spec.search_space.items()}
    param_space.update(kwargs)
    storage = (data_dir / "tune").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            scheduler=scheduler,
            reuse_actors=True,  # a fresh trial process costs ~2 s on a small host
        ),
        run_config=tune.RunConfig(
            name=safe_name(f"{spec.name}-{run_id}"),
            storage_path=str(storage),
            verbose=0,
            stop=_event_stopper(tune)(token),
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            # The auto loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS); the JSON one
            # keeps result.json, which the ResultGrid reads back (and warns without).
            callbacks=[JsonLoggerCallback()],  # type: ignore[no-untyped-call]
        ),
    )
    try:
        return tuner.fit()
    except ray_exceptions.RayTaskError as exc:
        raise remote_error(exc, function=spec.name, run_id=run_id) from exc
    except ray_exceptions.RayError as exc:
        raise system_error(exc, function=spec.name, run_id=run_id, retries=spec.retries) from exc
    except Exception as exc:
        if "did not include the specified metric" in _chain_text(exc):
            raise InvocationError(
                f"{spec.name}: a trial reported metrics without {spec.metric!r}; include it "
                f"in every mesh.report(...) call (run {run_id})",
                function=spec.name,
                run_id=run_id,
            ) from exc
        raise BackendError(f"Tune failed to run {spec.name} (run {run_id}): {exc}") from exc


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _tune_domain(tune: Any, value: Any) -> Any:
    if not isinstance(value, Domain):
        return value
    if value.kind == "uniform":
        return tune.uniform(value.low, value.high)
    if value.kind == "loguniform":
        return tune.loguniform(value.low, value.high)
    if value.kind == "randint":
        return tune.randint(int(value.low or 0), int(value.high or 0))
    if value.kind == "choice":
        return tune.choice(list(value.values or ()))
    return tune.grid_search(list(value.values or ()))


_stopper_cls: type | None = None


def _event_stopper(tune: Any) -> type:
    """A ``tune.Stopper`` class that stops everything once a job's stop event is set.

    It holds a token, not the event, because Tune pickles its run config; the
    module-level lookup is pickled by reference.
    """
    global _stopper_cls
    if _stopper_cls is None:

        class EventStopper(tune.Stopper):  # type: ignore[misc]
            def __init__(self, token: str) -> None:
                self._token = token

            def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
                return _stop_requested(self._token)

            def stop_all(self) -> bool:
                return _stop_requested(self._token)

        _stopper_cls = EventStopper
    return _stopper_cls


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if k not in _TUNE_BOOKKEEPING}


def _tune_result(grid: Any, spec: TuneSpec, run_id: str) -> CallResult:
    trials: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    for result in grid:
        entry: dict[str, Any] = {
            "config": dict(result.config or {}),
            "metrics": _clean_metrics(result.metrics),
        }
        if result.error is not None:
            entry["error"] = f"{type(result.error).__name__}: {result.error}"
            errors.append(result.error)
        trials.append(entry)
    reported = [r for r in grid if r.metrics and spec.metric in r.metrics]
    if not reported:
        if errors:
            first = errors[0]
            if isinstance(first, ray_exceptions.RayTaskError):
                raise remote_error(first, function=spec.name, run_id=run_id) from first
            raise local_error(first, spec.name, run_id) from first
        seen = sorted({k for t in trials for k in t["metrics"]})
        raise InvocationError(
            f"{spec.name}: no trial reported the metric {spec.metric!r} (reported: "
            f"{', '.join(seen) or 'nothing'}); call mesh.report({spec.metric}=...) or return "
            f"a dict (run {run_id})",
            function=spec.name,
            run_id=run_id,
        )
    best = grid.get_best_result(metric=spec.metric, mode=spec.mode)
    node_id = str((best.metrics or {}).get(NODE_ID_METRIC, ""))
    if not node_id:
        node_id = ray.get_runtime_context().get_node_id()
    value = TuneResult(
        metric=spec.metric,
        mode=spec.mode,
        best_config=dict(best.config or {}),
        best_metrics=_clean_metrics(best.metrics),
        trials=trials,
    )
    return CallResult(value, node_id)
