"""Waiting on work sent to Ray, and how it ends: results, timeouts, cancellation, errors.

:class:`TaskCall` is the :class:`~mesh.compute._backend.Call` of one Ray task
(a function or stream invocation). The helpers turn what Ray raises into the
mesh's errors (:func:`remote_error` for the function's own exception,
:func:`system_error` for Ray's failures) and count a spec's ``timeout_s`` from
submission (:func:`deadline_for`, :func:`wait_budget`). :class:`JobCall` is the call of a
Tune search or batch job running in a job thread; it stops at :class:`JobStopped`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
import time
import traceback
from typing import Any

import ray
from ray import exceptions as ray_exceptions

from mesh.compute._backend import CallResult
from mesh.core._errors import (
    BackendError,
    CancelledError,
    FunctionTimeoutError,
    MeshError,
    RemoteFunctionError,
)
from mesh.sdk._specs import FunctionSpec

__all__ = [
    "JobCall",
    "JobStopped",
    "TaskCall",
    "deadline_for",
    "local_error",
    "qualified_name",
    "remote_error",
    "system_error",
    "wait_budget",
]

logger = logging.getLogger(__name__)


def qualified_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` otherwise."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$")


def remote_error(
    exc: ray_exceptions.RayTaskError, *, function: str, run_id: str
) -> RemoteFunctionError:
    """A :class:`RemoteFunctionError` carrying what a Ray task raised and its traceback."""
    # ray.get raises a dual "RayTaskError(UserError)" instance that forwards attribute
    # lookups to the cause and has no traceback_str; its str() is the remote traceback.
    traceback_text = _ANSI.sub("", str(vars(exc).get("traceback_str") or exc))
    cause = vars(exc).get("cause")
    cause = cause if isinstance(cause, BaseException) else None
    if cause is not None and not isinstance(cause, ray_exceptions.RayError):
        remote_type, remote_message = qualified_name(cause), str(cause)
    else:
        remote_type, remote_message = qualified_name(cause or exc), str(cause or exc)
        if isinstance(cause, ray_exceptions.UserCodeException):
            # Ray Data wraps a UDF's exception; only the traceback text names the original.
            for line in traceback_text.splitlines():
                match = _EXCEPTION_LINE.match(line)
                if match and not match.group(1).startswith("ray."):
                    remote_type, remote_message = match.group(1), match.group(2)
                    break
    return RemoteFunctionError(
        function=function,
        run_id=run_id,
        remote_type=remote_type,
        remote_message=remote_message,
        remote_traceback=traceback_text,
    )


def system_error(exc: BaseException, *, function: str, run_id: str, retries: int) -> BackendError:
    """A :class:`BackendError` for a Ray failure that is not the function's own exception."""
    if isinstance(
        exc,
        ray_exceptions.WorkerCrashedError
        | ray_exceptions.NodeDiedError
        | ray_exceptions.LocalRayletDiedError,
    ):
        what = "the worker or node running it died"
    elif isinstance(exc, ray_exceptions.OutOfMemoryError):
        what = "its worker was killed for using too much memory"
    elif isinstance(exc, ray_exceptions.ObjectLostError):
        what = "its result was lost with the node that held it"
    elif isinstance(exc, ray_exceptions.RuntimeEnvSetupError):
        what = "its runtime environment could not be set up"
    else:
        what = f"Ray failed ({type(exc).__name__})"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendError(
        f"{function} (run {run_id}) did not finish: {what} after {retries} "
        f"retr{'y' if retries == 1 else 'ies'}: {detail}"
    )


def deadline_for(spec: FunctionSpec, submitted: float) -> float | None:
    """When the spec's ``timeout_s`` runs out, on the monotonic clock."""
    return None if spec.timeout_s is None else submitted + spec.timeout_s


def wait_budget(
    timeout_s: float | None, deadline: float | None, spec_timeout_s: float | None
) -> tuple[float | None, float | None]:
    """How long ``result()`` may wait, and the timeout to name if that runs out."""
    if deadline is None:
        return timeout_s, timeout_s
    left = max(0.0, deadline - time.monotonic())
    if timeout_s is None or left <= timeout_s:
        return left, spec_timeout_s
    return timeout_s, timeout_s


class TaskCall:
    """A submitted FUNCTION/STREAM invocation: one Ray task."""

    __slots__ = (
        "_cancelled",
        "_deadline",
        "_error",
        "_function",
        "_outcome",
        "_ref",
        "_retries",
        "_run_id",
        "_spec_timeout_s",
    )

    def __init__(
        self, ref: ray.ObjectRef[tuple[Any, str]], spec: FunctionSpec, run_id: str, submitted: float
    ) -> None:
        self._ref = ref
        self._function = spec.name
        self._run_id = run_id
        self._retries = spec.retries
        self._spec_timeout_s = spec.timeout_s
        self._deadline = deadline_for(spec, submitted)
        self._outcome: CallResult | None = None
        self._error: MeshError | None = None
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<RayCall {self._function} run={self._run_id} done={self.done()}>"

    def result(self, timeout_s: float | None = None) -> CallResult:
        """Wait for the task; see :class:`mesh.Call`.

        The spec's ``timeout_s`` counts from submission; ``timeout_s`` here
        limits this wait. Either running out cancels the task.
        """
        if self._outcome is not None:
            return self._outcome
        if self._error is not None:
            raise self._error
        if self._cancelled:
            raise self._cancelled_error()
        wait, named = wait_budget(timeout_s, self._deadline, self._spec_timeout_s)
        try:
            value, node_id = ray.get(self._ref, timeout=wait)
        except ray_exceptions.GetTimeoutError as exc:
            ray.cancel(self._ref, force=True)
            self._error = FunctionTimeoutError(
                function=self._function,
                run_id=self._run_id,
                timeout_s=named if named is not None else 0.0,
            )
            raise self._error from exc
        except ray_exceptions.TaskCancelledError as exc:
            self._error = self._cancelled_error()
            raise self._error from exc
        except ray_exceptions.RayTaskError as exc:
            self._error = remote_error(exc, function=self._function, run_id=self._run_id)
            raise self._error from exc
        except ray_exceptions.RayError as exc:
            self._error = system_error(
                exc, function=self._function, run_id=self._run_id, retries=self._retries
            )
            raise self._error from exc
        self._outcome = CallResult(value, node_id)
        return self._outcome

    def cancel(self) -> None:
        """Stop the task (its worker is killed if it is running); result() then raises."""
        if self._outcome is not None or self._error is not None or self._cancelled:
            return
        self._cancelled = True
        ray.cancel(self._ref, force=True)
        logger.info("cancelled %s (run %s)", self._function, self._run_id)

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        if self._outcome is not None or self._error is not None or self._cancelled:
            return True
        ready, _ = ray.wait([self._ref], timeout=0, fetch_local=False)
        return bool(ready)

    def _cancelled_error(self) -> CancelledError:
        return CancelledError(
            f"{self._function} was cancelled (run {self._run_id})",
            function=self._function,
            run_id=self._run_id,
        )


def local_error(exc: BaseException, function: str, run_id: str) -> RemoteFunctionError:
    """A :class:`RemoteFunctionError` for an exception raised in this process (a job thread)."""
    return RemoteFunctionError(
        function=function,
        run_id=run_id,
        remote_type=qualified_name(exc),
        remote_message=str(exc),
        remote_traceback="".join(traceback.format_exception(exc)),
    )


class JobStopped(Exception):
    """The job saw its stop event (cancel or timeout)."""


class JobCall:
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
        except JobStopped as exc:
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
