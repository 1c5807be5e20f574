"""ONNX Runtime modules: load, check inputs against the signature, serve from a queue.

A :class:`ModuleServer` owns one module name: a bounded queue, its worker
thread(s) and the *current* :class:`LoadedModel`. A hot swap replaces the
current model with one that is already loaded and warmed, in one reference
assignment; a job takes the model at the moment it starts, so requests in flight
finish on the version they started with and none fails during a swap.
"""

from __future__ import annotations

import logging
import math
import operator
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ._budget import MemoryBudget
from ._drift_stats import DriftStats
from .protocol import ErrorCode, ModuleStats, ProtocolError, Tensor, TensorSpec

__all__ = [
    "Job",
    "JobResult",
    "LoadedModel",
    "ModuleLoadError",
    "ModuleServer",
    "load_model",
]

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

Array = npt.NDArray[Any]


class ModuleLoadError(RuntimeError):
    """A module could not be loaded; ``code`` is UNSUPPORTED or INTERNAL."""

    def __init__(self, module: str, version: str, code: ErrorCode, reason: str) -> None:
        super().__init__(f"module {module}@{version}: {reason}")
        self.module = module
        self.version = version
        self.code = code
        self.reason = reason


def _spec(arg: Any, module: str, version: str) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModuleLoadError(
            module, version, ErrorCode.UNSUPPORTED, f"{arg.name}: type {arg.type} not supported"
        )
    shape = [
        d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
        for d in arg.shape
    ]
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


class _OneInput(NamedTuple):
    """What :meth:`LoadedModel.feeds` checks of a one-input model, worked out once.

    The general check walks the signature's pydantic specs for every request;
    this is a few comparisons, then the same numpy view.
    """

    name: str
    dtype: str
    np_dtype: np.dtype[Any]
    rank: int
    fixed: Callable[[tuple[int, ...]], Any] | None  # picks the fixed dims of a shape
    want: Any  # what ``fixed`` must give


def _one_input(inputs: Sequence[TensorSpec]) -> _OneInput | None:
    if len(inputs) != 1:
        return None
    spec = inputs[0]
    at = [i for i, d in enumerate(spec.shape) if isinstance(d, int)]
    want = tuple(spec.shape[i] for i in at)
    return _OneInput(
        spec.name,
        spec.dtype,
        np.dtype(spec.dtype).newbyteorder("<"),
        len(spec.shape),
        operator.itemgetter(*at) if at else None,
        want[0] if len(at) == 1 else want,
    )


def _session_run(session: Any) -> Callable[[list[str], dict[str, Array], Any], list[Array]]:
    """``session.run``, or on the CPU provider the C++ session's own ``run``.

    ``InferenceSession.run`` first validates the feed names and ownership and
    checks for graph capture, in Python, on every call; feeds checked by
    :meth:`LoadedModel.feeds` need none of it. Other providers keep the wrapper
    for its fallback to the CPU.
    """
    inner = getattr(session, "_sess", None)
    if inner is not None and session.get_providers() == ["CPUExecutionProvider"]:
        run: Callable[[list[str], dict[str, Array], Any], list[Array]] = inner.run
        return run
    wrapped: Callable[[list[str], dict[str, Array], Any], list[Array]] = session.run
    return wrapped


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """An ONNX Runtime session for one module version, with its signature."""

    name: str
    version: str
    sha256: str | None
    session: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    loaded_at: float
    # Worked out once from the above, for the request path.
    _one: _OneInput | None = field(default=None, init=False, repr=False, compare=False)
    _run: Callable[[list[str], dict[str, Array], Any], list[Array]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _output_names: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_one", _one_input(self.inputs))
        object.__setattr__(self, "_run", _session_run(self.session))
        object.__setattr__(self, "_output_names", [s.name for s in self.outputs])

    def describe_inputs(self) -> str:
        """E.g. ``input: float32[?,1,32,32]``."""
        return ", ".join(s.describe() for s in self.inputs)

    def feeds(self, tensors: Sequence[Tensor]) -> dict[str, Array]:
        """Map request tensors to session inputs, checking names, dtypes and shapes.

        A model with one input accepts one tensor under any name.

        Raises:
            ProtocolError: BAD_INPUT, naming the expected signature.
        """
        one = self._one
        if one is not None and len(tensors) == 1:
            t = tensors[0]
            shape = t.shape
            if (
                t.dtype == one.dtype
                and len(shape) == one.rank
                and (one.fixed is None or one.fixed(shape) == one.want)
            ):
                return {one.name: np.frombuffer(t.data, dtype=one.np_dtype).reshape(shape)}
        return self._check_feeds(tensors)

    def _check_feeds(self, tensors: Sequence[Tensor]) -> dict[str, Array]:
        if len(self.inputs) == 1 and len(tensors) == 1:
            pairs = [(self.inputs[0], tensors[0])]
        else:
            given = {t.name: t for t in tensors}
            missing = [s.name for s in self.inputs if s.name not in given]
            extra = sorted(set(given) - {s.name for s in self.inputs})
            if missing or extra:
                raise self._bad(f"missing {missing}, unexpected {extra}")
            pairs = [(s, given[s.name]) for s in self.inputs]
        out: dict[str, Array] = {}
        for spec, t in pairs:
            if t.dtype != spec.dtype:
                raise self._bad(f"{spec.name}: dtype {t.dtype}, expected {spec.dtype}")
            if len(t.shape) != len(spec.shape) or any(
                isinstance(want, int) and want != got
                for want, got in zip(spec.shape, t.shape, strict=True)
            ):
                raise self._bad(f"{spec.name}: shape {list(t.shape)}, expected {spec.describe()}")
            out[spec.name] = t.to_numpy()
        return out

    def _bad(self, what: str) -> ProtocolError:
        return ProtocolError(
            ErrorCode.BAD_INPUT,
            f"module {self.name}@{self.version}: {what}; signature: {self.describe_inputs()}",
        )

    def run(self, feeds: Mapping[str, Array]) -> list[Tensor]:
        """Run the session; outputs as tensors named by the model."""
        names = self._output_names
        run = self._run
        arrays = (run or self.session.run)(
            names, feeds if type(feeds) is dict else dict(feeds), None
        )
        return [
            Tensor.from_numpy(name, np.asarray(a)) for name, a in zip(names, arrays, strict=True)
        ]

    @property
    def batchable(self) -> bool:
        """Whether every input and output has a dynamic first (batch) dimension."""
        return all(
            s.shape and not isinstance(s.shape[0], int) for s in (*self.inputs, *self.outputs)
        )

    def run_batch(self, feeds: Sequence[Mapping[str, Array]]) -> list[list[Tensor]]:
        """Run several requests as one batch (stacked on axis 0) and split the outputs."""
        sizes = [int(next(iter(f.values())).shape[0]) for f in feeds]
        stacked = {s.name: np.concatenate([f[s.name] for f in feeds]) for s in self.inputs}
        arrays = self.session.run(None, stacked)
        total = sum(sizes)
        if any(np.asarray(a).shape[:1] != (total,) for a in arrays):
            raise ValueError("outputs do not follow the batch dimension")
        out: list[list[Tensor]] = []
        at = 0
        for n in sizes:
            out.append(
                [
                    Tensor.from_numpy(s.name, np.asarray(a)[at : at + n])
                    for s, a in zip(self.outputs, arrays, strict=True)
                ]
            )
            at += n
        return out

    def warm_up(self, runs: int) -> None:
        """Run ``runs`` times on zeros (dynamic dims = 1) so the first request is not slow."""
        feeds = {
            s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], dtype=s.dtype)
            for s in self.inputs
        }
        for _ in range(runs):
            self.session.run(None, feeds)


def load_model(
    path: Path,
    *,
    name: str,
    version: str,
    sha256: str | None = None,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    warmup_runs: int = 1,
) -> LoadedModel:
    """Open an ONNX Runtime session for ``path`` and warm it up.

    Raises:
        ModuleLoadError: UNSUPPORTED when the device lacks every provider asked for,
            the model does not load (opset, operator) or its types are unsupported.
    """
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available]
    if not chosen:
        raise ModuleLoadError(
            name,
            version,
            ErrorCode.UNSUPPORTED,
            f"needs one of providers {list(providers)}, device has {available}",
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads == 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen[:1])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ModuleLoadError(
            name, version, ErrorCode.UNSUPPORTED, f"ONNX Runtime cannot load it: {exc}"
        ) from exc
    model = LoadedModel(
        name=name,
        version=version,
        sha256=sha256,
        session=session,
        inputs=tuple(_spec(a, name, version) for a in session.get_inputs()),
        outputs=tuple(_spec(a, name, version) for a in session.get_outputs()),
        provider=chosen[0],
        loaded_at=time.time(),
    )
    try:
        model.warm_up(warmup_runs)
    except Exception as exc:
        raise ModuleLoadError(
            name, version, ErrorCode.UNSUPPORTED, f"warm-up run failed: {exc}"
        ) from exc
    return model


# ------------------------------------------------------------------ serving


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a job produced: outputs, or an error; with the version that ran it."""

    outputs: list[Tensor] | None
    error: ProtocolError | None
    version: str | None
    queue_ms: float
    compute_ms: float


@dataclass(frozen=True, slots=True)
class Job:
    """One inference to run: tensors, an optional wall-clock deadline and a callback.

    ``done`` runs on the worker thread; ``on_expired`` is called instead when the
    deadline passed before the job started.
    """

    tensors: Sequence[Tensor]
    done: Callable[[JobResult], None]
    deadline_ts: float | None = None
    version: str | None = None
    enqueued: float = 0.0
    on_expired: Callable[[], None] | None = None
    nbytes: int = 0
    """Bytes the job holds until it is done (its request's payload), for the memory budget."""


class _Stats:
    """Counters and a window of recent latencies; safe to read from other threads."""

    def __init__(self, window: int = 2048) -> None:
        self.requests = 0
        self.errors = 0
        self.expired = 0
        self.latencies: deque[float] = deque(maxlen=window)

    def snapshot(self, version: str | None, depth: int) -> ModuleStats:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, math.ceil(q * len(lat)) - 1)], 3)

        return ModuleStats(
            version=version,
            requests=self.requests,
            errors=self.errors,
            expired=self.expired,
            p50_ms=pct(0.5),
            p95_ms=pct(0.95),
            queue_depth=depth,
        )


_STOP = object()


class ModuleServer:
    """Serves one module name with a bounded queue and worker thread(s).

    Example:
        >>> server = ModuleServer("counter", max_queue=8)
        >>> server.current is None
        True
        >>> server.stop()
    """

    def __init__(
        self,
        name: str,
        *,
        max_queue: int = 256,
        workers: int = 1,
        max_batch: int = 16,
        budget: MemoryBudget | None = None,
        max_batch_bytes: int | None = None,
    ) -> None:
        """Start ``workers`` threads (the model comes later via :meth:`swap`).

        Jobs already queued when a worker becomes free run as one batch of up to
        ``max_batch`` when the model's batch dimension is dynamic, and of at most
        ``max_batch_bytes`` (batching copies the batch's inputs once more). Each
        job holds its ``nbytes`` of ``budget`` from :meth:`submit` until done.
        """
        self._max_batch = max_batch
        self._budget = budget
        self._max_batch_bytes = max_batch_bytes
        self.name = name
        # SimpleQueue (C) hands jobs over faster than queue.Queue; the bound is ours.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_queue = max_queue
        self._depth = 0
        self._depth_lock = threading.Lock()
        self._current: LoadedModel | None = None
        self._stats = _Stats()
        self._drift = DriftStats()  # each inference's mean input and output, per heartbeat
        self.drift_stats = False  # summarise inferences: the desired state's drift_stats
        self._threads = [
            threading.Thread(target=self._work, name=f"module-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    @property
    def current(self) -> LoadedModel | None:
        """The model jobs run on now (None before the first install)."""
        return self._current

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` current; returns the previous one (still finishing its jobs)."""
        old, self._current = self._current, model
        # The heartbeat's p95 is the new version's alone (a canary compares versions by it).
        self._stats.latencies.clear()
        logger.info(
            "module %s: now serving version %s (was %s)",
            self.name,
            model.version,
            old.version if old else None,
        )
        return old

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue or the memory budget is full (answer OVERLOADED)."""
        return self.submit_or_reason(job) is None

    def submit_or_reason(self, job: Job) -> str | None:
        """Queue ``job``; else why not (the queue or the memory budget is full)."""
        with self._depth_lock:
            if self._depth >= self._max_queue:
                self._stats.errors += 1
                return f"module {self.name}: queue full ({self._max_queue} requests)"
            self._depth += 1
        budget = self._budget
        if budget is not None and job.nbytes and not budget.take(job.nbytes):
            with self._depth_lock:
                self._depth -= 1
                self._stats.errors += 1
            return (
                f"module {self.name}: memory budget full "
                f"({budget.in_use} of {budget.limit_bytes} bytes held)"
            )
        self._queue.put(job)
        return None

    def count_expired(self) -> None:
        """Count a request that expired before it was queued (it was answered ``expired``)."""
        self._stats.expired += 1

    @property
    def depth(self) -> int:
        """Jobs waiting."""
        return self._depth

    def stats(self) -> ModuleStats:
        """Counters and latency percentiles, and the drift summary since the last call."""
        cur = self._current
        snapshot = self._stats.snapshot(cur.version if cur else None, self.depth)
        return snapshot.model_copy(update={"summary": self._drift.take()})

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the workers after the jobs already queued."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout_s)

    def _work(self) -> None:
        carried: Any = None  # a job taken that would have made the last batch too big
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            batch: list[Job] = [first]
            nbytes = first.nbytes
            cap = self._max_batch_bytes
            # Dynamic batching: take whatever else is already waiting (never wait for more).
            # empty() first: usually nothing is, and an Empty raised costs more.
            stop_after = False
            while len(batch) < self._max_batch and not self._queue.empty():
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:  # another worker took it
                    break
                if more is _STOP:
                    stop_after = True
                    break
                if cap is not None and nbytes + more.nbytes > cap:
                    carried = more  # it starts the next batch
                    break
                batch.append(more)
                nbytes += more.nbytes
            with self._depth_lock:
                self._depth -= len(batch)
            try:
                self._run(batch)
            except Exception:
                logger.exception("module %s: job callback failed", self.name)
            finally:
                del batch  # the payloads go before the budget says they have
                if self._budget is not None and nbytes:
                    self._budget.give(nbytes)
            if stop_after:
                if carried is not None:
                    self._queue.put(_STOP)  # run the carried job first, then stop
                    continue
                return

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        now = time.time()
        model = self._current
        ready: list[tuple[Job, dict[str, Array], float]] = []
        for job in batch:
            queue_ms = (start - job.enqueued) * 1e3 if job.enqueued else 0.0
            if job.deadline_ts is not None and now > job.deadline_ts:
                self._stats.expired += 1
                logger.debug("module %s: a request expired while queued", self.name)
                if job.on_expired is not None:
                    job.on_expired()
                continue
            self._stats.requests += 1
            try:
                if model is None:
                    raise ProtocolError(ErrorCode.NOT_READY, f"module {self.name}: not loaded yet")
                if job.version is not None and job.version != model.version:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_MODULE,
                        f"module {self.name}@{job.version} is not served here "
                        f"(serving {model.version})",
                    )
                ready.append((job, model.feeds(job.tensors), queue_ms))
            except ProtocolError as exc:
                self._finish(job, None, exc, model, queue_ms, start)
        if not ready or model is None:
            return
        if len(ready) > 1 and model.batchable:
            try:
                results = model.run_batch([feeds for _, feeds, _ in ready])
            except Exception as exc:  # e.g. shapes that do not stack: run one by one
                logger.debug(
                    "module %s: batch of %d not run together: %s", self.name, len(ready), exc
                )
            else:
                for (job, _, queue_ms), outputs in zip(ready, results, strict=True):
                    self._finish(job, outputs, None, model, queue_ms, start)
                return
        for job, feeds, queue_ms in ready:
            try:
                outputs = model.run(feeds)
            except Exception as exc:
                logger.warning("module %s@%s: inference failed: %s", self.name, model.version, exc)
                err = ProtocolError(ErrorCode.INTERNAL, f"inference failed: {exc}")
                self._finish(job, None, err, model, queue_ms, start)
            else:
                self._finish(job, outputs, None, model, queue_ms, start)

    def _finish(
        self,
        job: Job,
        outputs: list[Tensor] | None,
        error: ProtocolError | None,
        model: LoadedModel | None,
        queue_ms: float,
        start: float,
    ) -> None:
        compute_ms = (time.perf_counter() - start) * 1e3
        if error is not None:
            self._stats.errors += 1
        else:
            self._stats.latencies.append(queue_ms + compute_ms)
            if outputs and self.drift_stats:
                self._drift.observe(model.version if model else None, job.tensors, outputs)
        try:
            job.done(
                JobResult(outputs, error, model.version if model else None, queue_ms, compute_ms)
            )
        except Exception:
            logger.exception("module %s: job callback failed", self.name)
