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
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mesh.compute._backend import BatchResult, CallResult, NodeInfo
from mesh.core._errors import BackendError, InvalidArgumentsError, MeshError
from mesh.core._settings import MeshSettings
from mesh.ray._batch import batch_once, input_paths
from mesh.ray._calls import JobCall, JobStopped
from mesh.ray._remote import ensure_picklable, label_selector, matches_selector, safe_name
from mesh.ray._tune import run_tune
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import BatchSpec, FunctionSpec, TuneSpec

__all__ = ["JobBackend", "JobRunner"]

logger = logging.getLogger(__name__)


class JobBackend(Protocol):
    """What a :class:`JobRunner` needs of its backend (:class:`mesh.ray._backend.RayBackend`)."""

    @property
    def settings(self) -> MeshSettings:
        """The settings (the data directory jobs write under)."""
        ...

    def check(self, spec: FunctionSpec) -> NodeInfo:
        """A live node that could run ``spec`` (raises UnsatisfiableError)."""
        ...

    def nodes(self, *, refresh: bool = False) -> list[NodeInfo]:
        """Every node of the cluster."""
        ...


class JobRunner:
    """Runs Tune and batch functions for a :class:`RayBackend` in worker threads."""

    def __init__(self, backend: JobBackend, *, max_workers: int = 4) -> None:
        """Create the thread pool (threads start on first use)."""
        self._backend = backend
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="mesh-ray-job"
        )
        self._calls: weakref.WeakSet[JobCall] = weakref.WeakSet()

    def submit_tune(
        self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str
    ) -> JobCall:
        """Start a Tune search of ``fn`` (extra ``kwargs`` join the config as constants)."""
        spec = fn.spec
        if not isinstance(spec, TuneSpec):
            raise BackendError(f"{fn.name} is not a tune function ({type(spec).__name__})")
        ensure_picklable(fn.fn)
        constants = dict(kwargs)
        return self._start(
            spec,
            run_id,
            lambda call: run_tune(
                fn,
                spec,
                constants,
                run_id,
                call.stop_event,
                data_dir=self._backend.settings.data_dir,
            ),
        )

    def submit_batch(
        self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str
    ) -> JobCall:
        """Start a batch job: read ``kwargs["input"]``, apply ``fn``, write Parquet.

        Raises:
            InvalidArgumentsError: ``input`` is missing or matches no file.
        """
        spec = fn.spec
        if not isinstance(spec, BatchSpec):
            raise BackendError(f"{fn.name} is not a batch function ({type(spec).__name__})")
        extra = dict(kwargs)
        paths = input_paths(spec, extra.pop("input", None), str(fn.signature))
        ensure_picklable(fn.fn)
        return self._start(
            spec,
            run_id,
            lambda call: self._run_batch(fn, spec, paths, extra, run_id, call.stop_event),
        )

    def _start(
        self, spec: FunctionSpec, run_id: str, body: Callable[[JobCall], CallResult]
    ) -> JobCall:
        call = JobCall(spec, run_id, time.monotonic())

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
            if n.alive and matches_selector(n.labels, label_selector(spec))
        )
        out_dir = (
            self._backend.settings.data_dir / "batch" / spec.name / safe_name(run_id)
        ).resolve()
        for attempt in range(spec.retries + 1):
            try:
                started = time.monotonic()
                rows, columns = batch_once(fn, spec, paths, extra, out_dir, limit, stop, run_id)
                logger.info(
                    "batch %s (run %s): %d rows to %s in %.1f s",
                    spec.name,
                    run_id,
                    rows,
                    out_dir,
                    time.monotonic() - started,
                )
                return CallResult(BatchResult(str(out_dir), rows, columns), node.node_id)
            except (JobStopped, InvalidArgumentsError):
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
