"""The runner: invoke registered functions on the backend and record every run.

The order of checks is what keeps bad input from changing anything: the name
is looked up, the arguments are validated against the signature, a node that
can run the function is found — and only then is a run recorded and the work
submitted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.compute._backend import (
    BatchResult,
    Call,
    CallResult,
    ComputeBackend,
    NodeInfo,
    TuneResult,
)
from mesh.compute._backend import check_satisfiable as _check_satisfiable
from mesh.compute._runs import RunRecord, RunStatus, Store
from mesh.core._errors import (
    CancelledError,
    FunctionTimeoutError,
    InvalidArgumentsError,
    MeshError,
    SpecError,
    UnknownFunctionError,
    UnsatisfiableError,
)
from mesh.sdk._app import Mesh
from mesh.sdk._arguments import bind_arguments
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import FunctionKind

__all__ = ["Run", "Runner"]

logger = logging.getLogger(__name__)

# Run ids: 128 random bits from a generator seeded once from the OS, because
# os.urandom per call (uuid4) measured ~60 µs on this VM, on every invocation.
_IDS = random.Random(os.urandom(32))
_PREVIEW_CHARS = 200
_INLINE_RESULT_CHARS = 2000


class Run:
    """A submitted invocation: wait for it, cancel it, read its record.

    Returned by :meth:`Runner.submit`; :meth:`result` records how the run
    ended in the store exactly once, whoever calls it first.
    """

    def __init__(
        self, runner: Runner, registered: RegisteredFunction, record: RunRecord, call: Call
    ) -> None:
        """Wrap a submitted ``call``; made by :meth:`Runner.submit`."""
        self.id = record.id
        self.function = registered.name
        self._runner = runner
        self._registered = registered
        self._record = record
        self._call = call
        self._lock = threading.Lock()
        self._outcome: CallResult | BaseException | None = None
        self._node_id: str | None = None

    def __repr__(self) -> str:
        state = "done" if self._outcome is not None else "running"
        return f"Run({self.id[:8]}, {self.function}, {state})"

    @property
    def node_id(self) -> str | None:
        """The node the run executed on, once known."""
        return self._node_id

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        return self._outcome is not None or self._call.done()

    def cancel(self) -> None:
        """Stop the work; :meth:`result` then raises :class:`mesh.CancelledError`."""
        self._call.cancel()

    def result(self) -> Any:
        """Wait for the value (up to the function's ``timeout_s``).

        Raises:
            RemoteFunctionError: the function raised on its node.
            FunctionTimeoutError: it ran past ``timeout_s`` and was cancelled.
            CancelledError: the run was cancelled.
        """
        with self._lock:
            if self._outcome is None:
                self._outcome = self._wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome.value

    def _wait(self) -> CallResult | BaseException:
        spec = self._registered.spec
        try:
            outcome = self._call.result(timeout_s=spec.timeout_s)
        except KeyboardInterrupt:
            self._call.cancel()
            error = CancelledError(
                f"{spec.name} was interrupted (run {self.id})", function=spec.name, run_id=self.id
            )
            self._finish(RunStatus.CANCELLED, error=error)
            return error
        except MeshError as exc:
            status = (
                RunStatus.TIMED_OUT
                if isinstance(exc, FunctionTimeoutError)
                else RunStatus.CANCELLED
                if isinstance(exc, CancelledError)
                else RunStatus.FAILED
            )
            self._finish(status, error=exc)
            return exc
        self._node_id = outcome.node_id
        self._finish(
            RunStatus.SUCCEEDED, node_id=outcome.node_id, result_ref=_result_ref(outcome.value)
        )
        return outcome

    def _finish(
        self,
        status: RunStatus,
        *,
        node_id: str | None = None,
        result_ref: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        duration = time.time() - self._record.started_at
        labels = self._runner.node_labels(node_id) if node_id else None
        message = f"{type(error).__name__}: {error}"[:4000] if error is not None else None
        self._runner.store.finish_run(
            self.id,
            status=status,
            duration_s=duration,
            node_id=node_id,
            node_labels=labels,
            result_ref=result_ref,
            error=message,
        )
        logger.info(
            "run %s of %s %s in %.3f s on node %s",
            self.id[:8],
            self.function,
            status.value,
            duration,
            (node_id or "-")[:8],
        )


class Runner:
    """Invokes registered functions through a backend and records each run.

    Example:
        >>> runner = Runner([app], backend=RayBackend.connect(MeshSettings()),  # doctest: +SKIP
        ...                 store=SQLiteStore(".mesh/mesh.db"))
        >>> runner.invoke("train_counter", epochs=3)  # doctest: +SKIP
    """

    def __init__(self, apps: Iterable[Mesh], *, backend: ComputeBackend, store: Store) -> None:
        """Serve the functions of ``apps`` on ``backend``, recording runs in ``store``."""
        self.backend = backend
        self.store = store
        self._functions: dict[str, RegisteredFunction] = {}
        for app in apps:
            for name, registered in app.functions.items():
                if name in self._functions:
                    other = self._functions[name].app
                    raise SpecError(
                        f"function {name!r} is registered by both app {other!r} and "
                        f"app {app.name!r}; give one of them another name="
                    )
                self._functions[name] = registered

    @property
    def functions(self) -> Mapping[str, RegisteredFunction]:
        """Every function the runner can invoke, by name."""
        return dict(self._functions)

    def get(self, name: str) -> RegisteredFunction:
        """The function registered as ``name``.

        Raises:
            UnknownFunctionError: with the closest name as a hint.
        """
        try:
            return self._functions[name]
        except KeyError:
            raise UnknownFunctionError(name, self._functions) from None

    def node_labels(self, node_id: str) -> dict[str, str]:
        """Labels of a node by id, from the backend's node list."""
        for node in self.backend.nodes():
            if node.node_id == node_id:
                return dict(node.labels)
        return {}

    def check_satisfiable(self, registered: RegisteredFunction) -> NodeInfo:
        """A node that can run ``registered``, refreshing the node list once if needed."""
        try:
            return _check_satisfiable(registered.spec, self.backend.nodes())
        except UnsatisfiableError:
            # A node may have joined since the cached list was read.
            return _check_satisfiable(registered.spec, self.backend.nodes(refresh=True))

    def submit(self, name: str, /, **kwargs: Any) -> Run:
        """Start ``name(**kwargs)`` on a node of its tier and return at once.

        Raises:
            UnknownFunctionError: no such function.
            InvalidArgumentsError: arguments do not fit its signature.
            UnsatisfiableError: no node has its tier, site or resources.
        """
        return self.fire(name, kwargs, trigger=None)

    def fire(self, name: str, kwargs: Mapping[str, Any], *, trigger: str | None) -> Run:
        """Start ``name(**kwargs)`` for ``trigger``, which its run record names (None: none).

        Raises:
            as :meth:`submit`.
        """
        registered = self.get(name)
        bound = self._bind(registered, kwargs)
        self.check_satisfiable(registered)
        return self._start(registered, bound, trigger=trigger)

    def invoke(self, name: str, /, **kwargs: Any) -> Any:
        """Run ``name(**kwargs)`` and wait for its value; see :meth:`submit`."""
        return self.submit(name, **kwargs).result()

    def _bind(self, registered: RegisteredFunction, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        spec = registered.spec
        if spec.kind is FunctionKind.TUNE:
            if kwargs:
                raise InvalidArgumentsError(
                    spec.name,
                    [
                        f"a tune function takes no arguments, got {', '.join(kwargs)}; "
                        "its search space is declared on @app.tune"
                    ],
                    "()",
                )
            return {}
        if spec.kind is FunctionKind.BATCH:
            rest = dict(kwargs)
            source = rest.pop("input", None)
            if not isinstance(source, str) or not source:
                raise InvalidArgumentsError(
                    spec.name,
                    [
                        "missing input=: a file, directory or glob of "
                        f"{getattr(spec, 'input_format', 'csv')} files"
                    ],
                    "(input: str, ...)",
                )
            dataset_param = next(iter(registered.signature.parameters))
            bound = bind_arguments(spec.name, registered.fn, rest, skip={dataset_param})
            return {"input": source, **bound}
        return registered.bind(kwargs)

    def _start(
        self, registered: RegisteredFunction, bound: dict[str, Any], *, trigger: str | None = None
    ) -> Run:
        spec = registered.spec
        canonical = _canonical(bound)
        record = RunRecord(
            id=f"{_IDS.getrandbits(128):032x}",
            function=spec.name,
            app=registered.app,
            kind=spec.kind.value,
            args_digest=hashlib.sha256(canonical.encode()).hexdigest(),
            args_preview=_preview(canonical),
            tier=spec.tier,
            status=RunStatus.RUNNING,
            started_at=time.time(),
            trigger=trigger,
        )
        self.store.start_run(record)
        try:
            call = self.backend.submit(registered, bound, run_id=record.id)
        except BaseException as exc:
            self.store.finish_run(
                record.id,
                status=RunStatus.FAILED,
                duration_s=time.time() - record.started_at,
                error=f"{type(exc).__name__}: {exc}"[:4000],
            )
            raise
        return Run(self, registered, record, call)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def _preview(text: str) -> str:
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def _result_ref(value: Any) -> str:
    """A short, JSON reference to a result, kept in the run store."""
    if isinstance(value, TuneResult | BatchResult):
        payload: Any = {"type": type(value).__name__, **dataclasses.asdict(value)}
        if isinstance(value, TuneResult):
            payload.pop("trials")
            payload["num_trials"] = len(value.trials)
    else:
        payload = value
    text = _canonical(payload)
    if len(text) > _INLINE_RESULT_CHARS:
        text = _canonical({"type": type(value).__name__, "truncated": text[:_INLINE_RESULT_CHARS]})
    return text
