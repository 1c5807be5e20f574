"""Live flow forecasts for a traffic scenario: counts in, next-minute forecasts out.

:class:`ForecastFeed` sits between the junctions' counts events and the
counts messages the fog stream function reads. It keeps each junction's
per-minute mean of the vehicles on every approach (the quantity the
forecaster was trained on, ``functions.traffic.sim.history``); when a junction's
minute completes and the last ``lags`` minutes are all known, it asks the
forecaster for the next minute. The calls go through a :class:`Predictor`
on a worker thread, so the event callback never waits on the network;
:class:`GatewayPredictor` is the real one, a client of the control plane's
Open Inference Protocol endpoint (``POST /v2/models/{module}/infer``), the
path any client takes, wherever the module is placed. A forecast is attached
to the junction's messages during the minute it is for, and each call's
``(sim_s, latency_ms)`` goes to ``on_latency`` (the scenario report's module
latency samples).

Example:
    >>> feed = ForecastFeed(predictor, lags=4, on_latency=print).start()  # doctest: +SKIP
    >>> feed.observe("B1", 241.0, (3.0, 5.0, 2.0, 0.0))                   # doctest: +SKIP
    >>> feed.forecast("B1", 242.0)                                        # doctest: +SKIP
    {'north': 4.2, 'east': 6.1, 'south': 2.3, 'west': 0.4}
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mesh.serving import HEADER_LENGTH, ServingError, decode_response, encode_request

__all__ = [
    "FeedStats",
    "Forecast",
    "ForecastFeed",
    "GatewayPredictor",
    "Predictor",
    "gateway_feed",
]

logger = logging.getLogger(__name__)

APPROACHES = ("north", "east", "south", "west")


class Predictor(Protocol):
    """Next-minute values from windows: ``[N, approaches, lags]`` -> ``[N, approaches]``."""

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Forecast each window's next minute (oldest minute first in each window).

        Raises:
            Exception: anything; the feed logs it and carries on.
        """
        ...


@dataclass(frozen=True, slots=True)
class Forecast:
    """A junction's forecast: the mean vehicles per approach over ``minute``."""

    junction: str
    minute: int
    values: dict[str, float]


@dataclass(slots=True)
class FeedStats:
    """What the feed did: calls asked for, answered, failed and dropped (queue full)."""

    requested: int = 0
    answered: int = 0
    failed: int = 0
    dropped: int = 0
    late: int = 0

    def describe(self) -> str:
        """One line for the report."""
        return (
            f"{self.answered} of {self.requested} forecasts answered "
            f"({self.failed} failed, {self.dropped} dropped, {self.late} late counts ignored)"
        )


@dataclass(slots=True)
class _Junction:
    """One junction's minute being summed and the last ``lags`` complete minutes."""

    lags: int
    minute: int | None = None
    sums: list[float] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    means: collections.deque[tuple[int, tuple[float, ...]]] = field(
        default_factory=collections.deque
    )
    latest: Forecast | None = None


class ForecastFeed:
    """Per-junction minute means in, forecasts through ``predictor`` out (see the module doc).

    Args:
        predictor: answers the forecast calls (on the feed's worker thread).
        lags: minutes per window (the forecaster's input).
        approaches: the order of counts in :meth:`observe` and of the forecaster's axis.
        minute_s: simulated seconds per step of the series.
        on_latency: called with ``(sim_s, latency_ms)`` (one tuple) after each answered call.
        on_failure: called with ``sim_s`` of each call that failed or was dropped.
        queue_size: calls waiting at most; more are dropped (counted).
        clock: seconds for latencies (injected in tests).
        name: the module's name, in log messages.
        on_close: called by :meth:`close` after the worker stopped (e.g. the predictor's).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        lags: int,
        approaches: Sequence[str] = APPROACHES,
        minute_s: float = 60.0,
        on_latency: Callable[[tuple[float, float]], object] | None = None,
        on_failure: Callable[[float], object] | None = None,
        queue_size: int = 64,
        clock: Callable[[], float] = time.perf_counter,
        name: str = "forecaster",
        on_close: Callable[[], object] | None = None,
    ) -> None:
        """Nothing runs before :meth:`start`."""
        if lags < 1 or minute_s <= 0 or queue_size < 1:
            raise ValueError(
                f"need lags >= 1, minute_s > 0 and queue_size >= 1; got {lags}, "
                f"{minute_s}, {queue_size}"
            )
        self.predictor = predictor
        self.lags = lags
        self.approaches = tuple(approaches)
        self.minute_s = minute_s
        self.name = name
        self._on_latency = on_latency
        self._on_failure = on_failure
        self._clock = clock
        self._on_close = on_close
        self._junctions: dict[str, _Junction] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._stats = FeedStats()
        self._queue: queue.Queue[tuple[str, int, float, npt.NDArray[np.float32]] | None] = (
            queue.Queue(maxsize=queue_size)
        )
        self._thread: threading.Thread | None = None

    # -- the caller's side (the event callback) ----------------------------------------

    def start(self) -> ForecastFeed:
        """Start the worker thread; returns the feed."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"forecast-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def observe(
        self, junction: str, sim_s: float, counts: Sequence[float | None]
    ) -> dict[str, float] | None:
        """Add one observation of ``junction``'s approaches at ``sim_s``; never blocks.

        A count that is None or not finite is skipped. An observation from a
        minute already complete is late and ignored. Completing a minute with
        ``lags`` contiguous minutes known queues a call for the next one.

        Returns:
            :meth:`forecast` for the junction at ``sim_s`` (what to attach to its message).
        """
        if len(counts) != len(self.approaches):
            raise ValueError(f"expected {len(self.approaches)} counts, got {len(counts)}")
        minute = math.floor(sim_s / self.minute_s)
        request: tuple[str, int, float, npt.NDArray[np.float32]] | None = None
        with self._lock:
            state = self._junctions.get(junction)
            if state is None:
                state = self._junctions[junction] = _Junction(self.lags)
            if state.minute is None:
                self._open(state, minute)
            elif minute < state.minute:
                self._stats.late += 1
                return self._current(state, sim_s)
            elif minute > state.minute:
                request = self._close_minute(junction, state, minute, sim_s)
                self._open(state, minute)
            for k, value in enumerate(counts):
                if value is not None and math.isfinite(float(value)):
                    state.sums[k] += float(value)
                    state.seen[k] += 1
            if request is not None:
                self._stats.requested += 1
                self._pending += 1
            current = self._current(state, sim_s)
        if request is not None:
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                with self._lock:
                    self._stats.dropped += 1
                    self._done()
                self._failed(sim_s)
                logger.warning(
                    "%s: forecast queue full; dropped junction %s minute %d",
                    self.name,
                    junction,
                    request[1],
                )
        return current

    def forecast(self, junction: str, sim_s: float) -> dict[str, float] | None:
        """The forecast for the minute ``sim_s`` is in, when one has arrived (else None)."""
        with self._lock:
            state = self._junctions.get(junction)
            return None if state is None else self._current(state, sim_s)

    def _current(self, state: _Junction, sim_s: float) -> dict[str, float] | None:
        latest = state.latest
        if latest is None or latest.minute != math.floor(sim_s / self.minute_s):
            return None
        return dict(latest.values)

    @property
    def stats(self) -> FeedStats:
        """A copy of the counters."""
        with self._lock:
            return replace(self._stats)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued call is answered or failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (after the calls already queued)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                logger.warning("%s: forecast queue still full at close", self.name)
            thread.join(timeout_s)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    # -- minutes ------------------------------------------------------------------------

    def _open(self, state: _Junction, minute: int) -> None:
        state.minute = minute
        state.sums = [0.0] * len(self.approaches)
        state.seen = [0] * len(self.approaches)

    def _close_minute(
        self, junction: str, state: _Junction, now_minute: int, sim_s: float
    ) -> tuple[str, int, float, npt.NDArray[np.float32]] | None:
        """Keep the finished minute's means; a window when the next minute is due now."""
        assert state.minute is not None
        done = state.minute
        if not all(state.seen):
            state.means.clear()  # an approach never seen: the series breaks here
            return None
        if state.means and state.means[-1][0] != done - 1:
            state.means.clear()  # minutes missing in between
        state.means.append(
            (done, tuple(s / n for s, n in zip(state.sums, state.seen, strict=True)))
        )
        while len(state.means) > self.lags:
            state.means.popleft()
        if len(state.means) < self.lags or now_minute != done + 1:
            return None
        window = np.asarray([m for _, m in state.means], dtype=np.float32).T  # [approaches, lags]
        return junction, done + 1, sim_s, np.ascontiguousarray(window)

    # -- the worker -----------------------------------------------------------------------

    def _done(self) -> None:
        self._pending -= 1
        if not self._pending:
            self._idle.notify_all()

    def _failed(self, sim_s: float) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(sim_s)
            except Exception:
                logger.exception("%s: recording a failed forecast failed", self.name)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            junction, minute, sim_s, window = item
            try:
                started = self._clock()
                out = np.asarray(self.predictor.predict(window[None]), dtype=np.float64)
                elapsed_ms = (self._clock() - started) * 1e3
                values = out.reshape(-1)
                if values.shape != (len(self.approaches),) or not np.all(np.isfinite(values)):
                    raise ValueError(
                        f"expected {len(self.approaches)} finite values, got shape "
                        f"{list(out.shape)}"
                    )
            except Exception as exc:
                logger.warning(
                    "%s: forecast for junction %s minute %d failed: %s",
                    self.name,
                    junction,
                    minute,
                    exc,
                )
                with self._lock:
                    self._stats.failed += 1
                    self._done()
                self._failed(sim_s)
                continue
            forecast = Forecast(
                junction,
                minute,
                {a: max(0.0, float(v)) for a, v in zip(self.approaches, values, strict=True)},
            )
            if self._on_latency is not None:
                try:
                    self._on_latency((sim_s, elapsed_ms))
                except Exception:
                    logger.exception("%s: recording a forecast's latency failed", self.name)
            with self._lock:
                state = self._junctions[junction]
                if state.latest is None or state.latest.minute <= minute:
                    state.latest = forecast
                self._stats.answered += 1
                self._done()


class GatewayPredictor:
    """A :class:`Predictor` over the Open Inference Protocol: the control plane's gateway.

    One keep-alive HTTP connection (the feed calls from one thread; a lock
    guards it anyway); binary tensors both ways.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:8080``.
        module: the served module's name (``/v2/models/{module}/infer``).
        token: a bearer token with the ``invoke`` (and, for :meth:`metadata`, ``read``) scope.
        timeout_s: per request.
    """

    def __init__(
        self, base_url: str, module: str, *, token: str | None = None, timeout_s: float = 2.0
    ) -> None:
        """Connect on the first request."""
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// gateway URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.module = module
        self._host = parts.hostname
        self._port = parts.port or 80
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._input: str | None = None
        self._output: str | None = None

    def metadata(self) -> dict[str, Any]:
        """The module's OIP metadata (``GET /v2/models/{module}``).

        Raises:
            ServingError: not served, or the gateway answered an error.
        """
        status, _, body = self._request("GET", f"/v2/models/{self.module}", None, {})
        doc = self._document(status, body)
        inputs, outputs = doc.get("inputs") or [], doc.get("outputs") or []
        if len(inputs) != 1 or not outputs:
            raise ServingError(
                f"{self.module}: expected one input and an output, got {len(inputs)} and "
                f"{len(outputs)}"
            )
        self._input, self._output = str(inputs[0]["name"]), str(outputs[0]["name"])
        return doc

    def lags(self) -> int:
        """Minutes per window: the last axis of the module's input ``[N, approaches, lags]``.

        Raises:
            ServingError: the module is not served or its input is not 3-d with fixed lags.
        """
        shape = self.metadata()["inputs"][0].get("shape") or []
        if len(shape) != 3 or not isinstance(shape[2], int) or shape[2] < 1:
            raise ServingError(f"{self.module}: input shape {shape} is not [N, approaches, lags]")
        return int(shape[2])

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Forecasts for ``windows`` ``[N, approaches, lags]``.

        Raises:
            ServingError: the gateway answered an error (the message has its status).
            OSError: the gateway could not be reached.
        """
        if self._input is None:
            self.metadata()
        assert self._input is not None
        body, header_length = encode_request(
            {self._input: np.ascontiguousarray(windows, dtype=np.float32)},
            binary=True,
            binary_output=True,
        )
        headers = {"Content-Type": "application/octet-stream"}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        status, reply, data = self._request(
            "POST", f"/v2/models/{self.module}/infer", body, headers
        )
        if status != 200:
            self._document(status, data)
        length = reply.get(HEADER_LENGTH)
        outputs = decode_response(data, int(length) if length else None)
        out = outputs.get(self._output or "", None)
        if out is None:
            out = next(iter(outputs.values()))
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _document(self, status: int, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {"error": body[:200].decode(errors="replace")}
        if status != 200 or not isinstance(doc, dict):
            message = doc.get("error", doc) if isinstance(doc, dict) else doc
            raise ServingError(f"{self.module}: HTTP {status} from {self.base_url}: {message}")
        return doc

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                conn = self._conn or http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout_s
                )
                self._conn = conn
                try:
                    conn.request(method, path, body=body, headers={**self._headers, **headers})
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    self._conn = None
                    # A kept-alive connection the server closed meanwhile: once more
                    # (not on a timeout: that would double the wait).
                    stale = isinstance(exc, ConnectionError | http.client.BadStatusLine)
                    if reused and stale and attempt == 0:
                        continue
                    raise
                reply = {k.lower(): v for k, v in response.getheaders()}
                if reply.get("connection", "").lower() == "close":
                    conn.close()
                    self._conn = None
                return response.status, reply, data
        raise AssertionError("unreachable")


def gateway_feed(
    gateway_url: str,
    data_dir: Path,
    module: str,
    *,
    on_latency: Callable[[tuple[float, float]], object] | None = None,
    on_failure: Callable[[float], object] | None = None,
    token_ttl_s: float = 12 * 3600.0,
) -> ForecastFeed:
    """A started feed whose calls go to ``module`` through the gateway at ``gateway_url``.

    The token is issued with the control plane's signer in ``data_dir``; the
    window length comes from the module's metadata. :meth:`ForecastFeed.close`
    closes the connection too.

    Raises:
        ServingError: the module is not served, or its input is not ``[N, approaches, lags]``.
        OSError: the gateway does not answer.
    """
    from mesh.security import TokenSigner

    token = TokenSigner.load_or_create(data_dir).issue(
        "scenario-forecast", ["invoke", "read"], ttl_s=token_ttl_s, now=time.time()
    )
    predictor = GatewayPredictor(gateway_url, module, token=token)
    try:
        lags = predictor.lags()
    except BaseException:
        predictor.close()
        raise
    return ForecastFeed(
        predictor,
        lags=lags,
        on_latency=on_latency,
        on_failure=on_failure,
        name=module,
        on_close=predictor.close,
    ).start()
