"""Dynamic batching in a replica: requests that arrive together share one model run.

Opportunistic: one worker runs the model; requests that arrive while it is busy
are concatenated along the batch axis into the next run (up to ``max_batch``),
so a lone request never waits for a window, and a loaded replica runs fewer,
larger batches. Used by the replica's HTTP server
(:mod:`mesh.serving.replica._server`) and its MQTT responder
(:mod:`mesh.serving.replica._mqtt`).

A full queue refuses the request with :class:`ReplicaOverloadedError`, which
answers HTTP 503, so the gateway retries it once on another replica.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mesh.serving._oip import OverloadedError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "BatchedModel",
    "Batcher",
    "Feeds",
    "ReplicaOverloadedError",
    "compatible",
    "run_together",
]

Feeds = dict[str, "npt.NDArray[Any]"]


class ReplicaOverloadedError(OverloadedError):
    """The replica's queue is full (HTTP 503); the caller should try another replica."""


class BatchedModel(Protocol):
    """What batching needs of a model (:class:`~mesh.serving.replica._server.ModelRunner`)."""

    @property
    def batching(self) -> bool:
        """Whether requests that arrive together run as one batch."""
        ...

    @property
    def max_batch(self) -> int:
        """The largest batch one run takes."""
        ...

    def run(self, feeds: Feeds) -> Feeds:
        """Run the model once (blocking)."""
        ...


@dataclass(slots=True)
class _Job:
    feeds: Feeds
    future: asyncio.Future[Feeds]
    size: int


def compatible(a: Feeds, b: Feeds) -> bool:
    """Whether two requests' inputs stack along the batch axis."""
    return all(b[name].shape[1:] == arr.shape[1:] for name, arr in a.items())


def run_together(
    runner: BatchedModel, jobs: Sequence[tuple[Feeds, int]]
) -> tuple[list[Feeds], bool]:
    """Run requests ``(feeds, batch size)`` as one batch; outputs per request, and whether batched.

    The caller picks :func:`compatible` requests; a model whose outputs turn out
    not to follow the batch axis runs them one by one.
    """
    if len(jobs) == 1:
        return [runner.run(jobs[0][0])], False
    import numpy as np

    names = list(jobs[0][0])
    merged = {n: np.concatenate([feeds[n] for feeds, _ in jobs], axis=0) for n in names}
    outputs = runner.run(merged)
    total = sum(size for _, size in jobs)
    if any(o.ndim == 0 or o.shape[0] != total for o in outputs.values()):
        return [runner.run(feeds) for feeds, _ in jobs], False  # not batch-wise after all
    cuts = np.cumsum([size for _, size in jobs])[:-1]
    split = {n: np.split(o, cuts, axis=0) for n, o in outputs.items()}
    return [{n: parts[i] for n, parts in split.items()} for i in range(len(jobs))], True


class Batcher:
    """Runs the model for queued jobs; jobs queued together share one run when batching.

    Fast models run inline on the event loop, after the requests that arrived in
    the same loop iteration were parsed (so those can share the run): a thread
    hop costs more than the model. Slow ones run on one worker thread, so the
    loop keeps answering health checks and parsing the next requests meanwhile.
    """

    def __init__(self, runner: BatchedModel, max_queue: int, inline: bool) -> None:
        """Run ``runner`` for at most ``max_queue`` queued jobs; ``inline`` on the event loop."""
        self._runner = runner
        self._queue: collections.deque[_Job] = collections.deque()
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._max_queue = max_queue
        self.inline = inline
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mesh-model")
        self.batches = 0
        self.batched_requests = 0

    def depth(self) -> int:
        """Jobs queued now."""
        return len(self._queue)

    async def submit(self, feeds: Feeds, model: str) -> Feeds:
        """Run ``feeds`` (maybe with others) and return their outputs.

        Raises:
            ReplicaOverloadedError: ``max_queue`` jobs are queued already (HTTP 503).
        """
        if len(self._queue) >= self._max_queue:
            raise ReplicaOverloadedError(
                f"replica of {model!r} has {len(self._queue)} requests queued; try another replica"
            )
        loop = asyncio.get_running_loop()
        first = next(iter(feeds.values()))
        job = _Job(feeds, loop.create_future(), int(first.shape[0]) if first.ndim else 1)
        self._queue.append(job)
        if not self._scheduled:
            self._scheduled = True
            if self.inline:
                loop.call_soon(self._run_inline)
            else:
                self._task = loop.create_task(self._drain())
        return await job.future

    def _take(self) -> list[_Job]:
        first = self._queue.popleft()
        jobs = [first]
        if not self._runner.batching:
            return jobs
        size = first.size
        while (
            self._queue
            and size + self._queue[0].size <= self._runner.max_batch
            and compatible(first.feeds, self._queue[0].feeds)
        ):
            job = self._queue.popleft()
            jobs.append(job)
            size += job.size
        return jobs

    @staticmethod
    def _deliver(jobs: list[_Job], results: list[Feeds] | BaseException) -> None:
        for i, job in enumerate(jobs):
            if job.future.done():
                continue
            if isinstance(results, BaseException):
                job.future.set_exception(results)
            else:
                job.future.set_result(results[i])

    def _run_inline(self) -> None:
        jobs = self._take()
        try:
            results: list[Feeds] | BaseException = self._run(jobs)
        except Exception as exc:
            results = exc
        self._deliver(jobs, results)
        if self._queue:
            asyncio.get_running_loop().call_soon(self._run_inline)
        else:
            self._scheduled = False

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                jobs = self._take()
                try:
                    results: list[Feeds] | BaseException = await loop.run_in_executor(
                        self._pool, self._run, jobs
                    )
                except Exception as exc:
                    results = exc
                self._deliver(jobs, results)
        finally:
            self._scheduled = False

    def _run(self, jobs: list[_Job]) -> list[Feeds]:
        results, batched = run_together(self._runner, [(j.feeds, j.size) for j in jobs])
        if batched:
            self.batches += 1
            self.batched_requests += len(jobs)
        return results

    def close(self) -> None:
        """Stop the worker thread (queued jobs are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
