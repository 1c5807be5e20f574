"""Tune searches and Ray Data batch jobs, driven from a thread of this process.

Why a thread and not a driver task on the tier: a driver task holds part of a
node's CPUs while it waits, and Ray Data's map tasks ask for a whole CPU by
default, so on a one-CPU fog node the data tasks would queue behind their own
driver forever (measured here: a 0.25-CPU driver task never finished a CSV
groupby on a 1-CPU node). The *work* is pinned instead, with what Ray 2.60 offers:

- Tune: each trial's placement group carries ``bundle_label_selector`` with the
  tier (and site), via ``tune.with_resources(PlacementGroupFactory(...))``.
- Ray Data: ``DataContext.execution_options.label_selector`` puts the selector on
  every task and actor the dataset launches (reads, maps, shuffles, writes).

Cancellation is cooperative: Tune stops through a ``Stopper`` (stuck trials are
killed after ``TUNE_FORCE_TRIAL_CLEANUP_S``); a batch job stops at its next output
batch. ``result()`` does not wait for either: it raises at once.
"""

from __future__ import annotations

import concurrent.futures
import glob
import itertools
import logging
import os
import re
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import exceptions as ray_exceptions

from mesh.compute._backend import BatchResult, CallResult, TuneResult
from mesh.core._errors import (
    BackendError,
    CancelledError,
    FunctionTimeoutError,
    InvalidArgumentsError,
    InvocationError,
    MeshError,
    RemoteFunctionError,
)
from mesh.ray._calls import deadline_for, qualified_name, remote_error, system_error, wait_budget
from mesh.ray._remote import ensure_picklable, label_selector
from mesh.ray._tune import NODE_ID_METRIC, report_trial
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import BatchSpec, Domain, FunctionSpec, TuneSpec

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

__all__ = ["JobRunner"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
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


class _Stopped(Exception):
    """The job saw its stop event (cancel or timeout)."""


def _stop_requested(token: str) -> bool:
    event = _stop_events.get(token)
    return event is not None and event.is_set()


class _JobCall:
    """A submitted TUNE or BATCH invocation running in a job thread."""

    def __init__(self, spec: FunctionSpec, run_id: str, submitted: float) -> None:
        self._function = spec.name
        self._run_id = run_id
        self._spec_timeout_s = spec.timeout_s
        self._deadline = deadline_for(spec, submitted)
        self.stop_event = threading.Event()
        self.future: concurrent.futures.Future[CallResult] = concurrent.futures.Future()
        self._error: MeshError | None = None

    def __repr__(self) -> str:
        return f"<RayJobCall {self._function} run={self._run_id} done={self.done()}>"

    def result(self, timeout_s: float | None = None) -> CallResult:
        """Wait for the job; see :class:`mesh.Call` (the spec's timeout counts from submission)."""
        if self._error is not None:
            raise self._error
        wait, named = wait_budget(timeout_s, self._deadline, self._spec_timeout_s)
        try:
            return self.future.result(timeout=wait)
        except concurrent.futures.TimeoutError as exc:
            self.stop_event.set()
            self._error = FunctionTimeoutError(
                function=self._function,
                run_id=self._run_id,
                timeout_s=named if named is not None else 0.0,
            )
            raise self._error from exc
        except concurrent.futures.CancelledError as exc:
            self._error = self._cancelled_error()
            raise self._error from exc
        except _Stopped as exc:
            self._error = self._cancelled_error()
            raise self._error from exc
        except MeshError as exc:
            self._error = exc
            raise
        except Exception as exc:
            self._error = BackendError(
                f"{self._function} (run {self._run_id}) failed in the Ray backend: {exc}"
            )
            raise self._error from exc

    def cancel(self) -> None:
        """Ask the job to stop; :meth:`result` raises CancelledError from now on."""
        if self._error is not None or (self.future.done() and not self.stop_event.is_set()):
            return
        self.stop_event.set()
        self.future.cancel()
        self._error = self._cancelled_error()
        logger.info("cancelled %s (run %s)", self._function, self._run_id)

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        return self._error is not None or self.future.done()

    def _cancelled_error(self) -> CancelledError:
        return CancelledError(
            f"{self._function} was cancelled (run {self._run_id})",
            function=self._function,
            run_id=self._run_id,
        )


class JobRunner:
    """Runs Tune and batch functions for a :class:`RayBackend` in worker threads."""

    def __init__(self, backend: RayBackend, *, max_workers: int = 4) -> None:
        """Create the thread pool (threads start on first use)."""
        self._backend = backend
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="mesh-ray-job"
        )
        self._calls: weakref.WeakSet[_JobCall] = weakref.WeakSet()

    def submit_tune(
        self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str
    ) -> _JobCall:
        """Start a Tune search of ``fn`` (extra ``kwargs`` join the config as constants)."""
        spec = fn.spec
        if not isinstance(spec, TuneSpec):
            raise BackendError(f"{fn.name} is not a tune function ({type(spec).__name__})")
        ensure_picklable(fn.fn)
        constants = dict(kwargs)
        return self._start(
            spec, run_id, lambda call: self._run_tune(fn, spec, constants, run_id, call.stop_event)
        )

    def submit_batch(
        self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str
    ) -> _JobCall:
        """Start a batch job: read ``kwargs["input"]``, apply ``fn``, write Parquet.

        Raises:
            InvalidArgumentsError: ``input`` is missing or matches no file.
        """
        spec = fn.spec
        if not isinstance(spec, BatchSpec):
            raise BackendError(f"{fn.name} is not a batch function ({type(spec).__name__})")
        extra = dict(kwargs)
        paths = _input_paths(spec, extra.pop("input", None), str(fn.signature))
        ensure_picklable(fn.fn)
        return self._start(
            spec,
            run_id,
            lambda call: self._run_batch(fn, spec, paths, extra, run_id, call.stop_event),
        )

    def _start(
        self, spec: FunctionSpec, run_id: str, body: Callable[[_JobCall], CallResult]
    ) -> _JobCall:
        call = _JobCall(spec, run_id, time.monotonic())

        def run() -> None:
            if not call.future.set_running_or_notify_cancel():
                return
            try:
                call.future.set_result(body(call))
            except BaseException as exc:  # handed to the caller through the future
                call.future.set_exception(exc)

        try:
            self._pool.submit(run)
        except RuntimeError as exc:
            raise BackendError(f"the Ray backend is closed; {spec.name} not started") from exc
        self._calls.add(call)
        return call

    def close(self) -> None:
        """Stop every running job and the thread pool (without waiting for them)."""
        for call in list(self._calls):
            call.stop_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- Tune -----------------------------------------------------------------

    def _run_tune(
        self,
        fn: RegisteredFunction,
        spec: TuneSpec,
        kwargs: Mapping[str, Any],
        run_id: str,
        stop: threading.Event,
    ) -> CallResult:
        from ray import tune

        token = f"{spec.name}-{run_id}-{next(_token_counter)}"
        _stop_events[token] = stop
        try:
            with _TUNE_LOCK:
                if stop.is_set():
                    raise _Stopped
                started = time.monotonic()
                grid = self._fit(tune, fn, spec, kwargs, run_id, token)
                if stop.is_set():
                    raise _Stopped
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
        self,
        tune: Any,
        fn: RegisteredFunction,
        spec: TuneSpec,
        kwargs: Mapping[str, Any],
        run_id: str,
        token: str,
    ) -> Any:
        from ray.tune.logger import JsonLoggerCallback

        user_fn = fn.fn

        def trainable(config: dict[str, Any]) -> None:
            out = user_fn(config)
            if isinstance(out, Mapping):
                report_trial(out)

        trainable.__name__ = trainable.__qualname__ = spec.name
        bundle = {k: v for k, v in _bundle(spec).items() if v}
        resources = tune.PlacementGroupFactory(
            [bundle], strategy="PACK", bundle_label_selector=[label_selector(spec)]
        )
        scheduler: Any = None
        if spec.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(max_t=spec.max_iterations)
        param_space = {key: _tune_domain(tune, value) for key, value in spec.search_space.items()}
        param_space.update(kwargs)
        storage = (self._backend.settings.data_dir / "tune").resolve()
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
                name=_safe_name(f"{spec.name}-{run_id}"),
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
            raise system_error(
                exc, function=spec.name, run_id=run_id, retries=spec.retries
            ) from exc
        except Exception as exc:
            if "did not include the specified metric" in _chain_text(exc):
                raise InvocationError(
                    f"{spec.name}: a trial reported metrics without {spec.metric!r}; include it "
                    f"in every mesh.report(...) call (run {run_id})",
                    function=spec.name,
                    run_id=run_id,
                ) from exc
            raise BackendError(f"Tune failed to run {spec.name} (run {run_id}): {exc}") from exc

    # -- batch ----------------------------------------------------------------

    def _run_batch(
        self,
        fn: RegisteredFunction,
        spec: BatchSpec,
        paths: list[str],
        extra: Mapping[str, Any],
        run_id: str,
        stop: threading.Event,
    ) -> CallResult:
        node = self._backend.check(spec)
        limit = sum(
            n.resources_total.get("CPU", 0.0)
            for n in self._backend.nodes()
            if n.alive and _matches(n.labels, label_selector(spec))
        )
        out_dir = (
            self._backend.settings.data_dir / "batch" / spec.name / _safe_name(run_id)
        ).resolve()
        for attempt in range(spec.retries + 1):
            try:
                started = time.monotonic()
                rows, columns = _batch_once(fn, spec, paths, extra, out_dir, limit, stop, run_id)
                logger.info(
                    "batch %s (run %s): %d rows to %s in %.1f s",
                    spec.name,
                    run_id,
                    rows,
                    out_dir,
                    time.monotonic() - started,
                )
                return CallResult(BatchResult(str(out_dir), rows, columns), node.node_id)
            except (_Stopped, InvalidArgumentsError):
                raise
            except MeshError as exc:
                if attempt >= spec.retries or stop.is_set():
                    raise
                logger.warning(
                    "batch %s (run %s) attempt %d failed, retrying: %s",
                    spec.name,
                    run_id,
                    attempt + 1,
                    exc,
                )
        raise AssertionError("unreachable")


def _batch_once(
    fn: RegisteredFunction,
    spec: BatchSpec,
    paths: list[str],
    extra: Mapping[str, Any],
    out_dir: Path,
    cpu_limit: float,
    stop: threading.Event,
    run_id: str,
) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq
    import ray.data

    read = ray.data.read_csv if spec.input_format == "csv" else ray.data.read_parquet
    try:
        source = read(paths, **_read_resources(spec))
        out = fn.fn(source, **extra)
    except ray_exceptions.RayTaskError as exc:
        raise remote_error(exc, function=spec.name, run_id=run_id) from exc
    except Exception as exc:
        raise _local_error(exc, spec.name, run_id) from exc
    if not isinstance(out, ray.data.Dataset):
        raise RemoteFunctionError(
            function=spec.name,
            run_id=run_id,
            remote_type="TypeError",
            remote_message=f"a batch function must return a ray.data.Dataset, "
            f"got {type(out).__name__}",
            remote_traceback="",
        )
    ctx = out.context
    # Everything this dataset launches carries the tier's selector, within the tier's CPUs.
    ctx.execution_options.label_selector = label_selector(spec)
    if cpu_limit > 0:
        ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            cpu=cpu_limit
        )
    # The default shuffle spins up aggregator actors that stall on a couple of CPUs
    # (ray#57979); the pull-based sort shuffle runs as plain tasks.
    ctx.shuffle_strategy = "sort_shuffle_pull_based"
    ctx.enable_progress_bars = False
    if out_dir.exists():
        for stale in out_dir.glob("part-*.parquet"):
            stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, columns, part = 0, None, 0
    try:
        table: Any
        for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            if stop.is_set():
                raise _Stopped
            if table.num_rows == 0 and part > 0:
                continue
            pq.write_table(table, out_dir / f"part-{part:05d}.parquet")
            part += 1
            rows += table.num_rows
            if columns is None:
                columns = list(table.column_names)
        if columns is None:
            schema = out.schema()
            columns = list(schema.names) if schema is not None else []
    except (_Stopped, MeshError):
        raise
    except ray_exceptions.RayTaskError as exc:
        raise remote_error(exc, function=spec.name, run_id=run_id) from exc
    except ray_exceptions.RayError as exc:
        raise system_error(exc, function=spec.name, run_id=run_id, retries=spec.retries) from exc
    except Exception as exc:
        raise _local_error(exc, spec.name, run_id) from exc
    return rows, columns


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _local_error(exc: BaseException, function: str, run_id: str) -> RemoteFunctionError:
    return RemoteFunctionError(
        function=function,
        run_id=run_id,
        remote_type=qualified_name(exc),
        remote_message=str(exc),
        remote_traceback="".join(traceback.format_exception(exc)),
    )


def _input_paths(spec: BatchSpec, value: Any, signature: str) -> list[str]:
    if value is None:
        raise InvalidArgumentsError(
            spec.name,
            [f"missing required argument 'input' (a {spec.input_format} file, directory or glob)"],
            signature,
        )
    items = [value] if isinstance(value, str | os.PathLike) else list(value)
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if "://" in text:  # a remote filesystem URI: Ray Data resolves it
            paths.append(text)
            continue
        matches = sorted(glob.glob(os.path.expanduser(text)))
        if not matches:
            raise InvalidArgumentsError(spec.name, [f"input={text!r} matches no file"], signature)
        paths.extend(os.path.abspath(m) for m in matches)
    return paths


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:120]


def _read_resources(spec: FunctionSpec) -> dict[str, Any]:
    res = spec.resources
    options: dict[str, Any] = {"num_cpus": res.cpus}
    if res.memory_mb:
        options["memory"] = float(res.memory_mb * _MIB)
    if res.custom:
        options["resources"] = dict(res.custom)
    return options


def _bundle(spec: FunctionSpec) -> dict[str, float]:
    res = spec.resources
    bundle = {"CPU": res.cpus, "GPU": res.gpus, **res.custom}
    if res.memory_mb:
        bundle["memory"] = float(res.memory_mb * _MIB)
    return bundle


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
            raise _local_error(first, spec.name, run_id) from first
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
