"""Inference requests in flight: request frames out, replies matched back by correlation id.

The gateway opens a request here (a frame with a fresh correlation id, registered
as pending), publishes the frame and waits on the returned future; replies are fed
in from paho's network thread, so nothing here blocks. A reply that matches nothing
(a QoS 1 duplicate, the answer to a request that already timed out, or the second
answer to a request sent again) is counted and dropped.

:meth:`PendingRequests.again` gives the frames of a node's requests still
awaiting a reply, to send again when that node came (back) online after they
were sent: a broker that restarted drops a request published before the agent
subscribed again, and a reply published before the gateway did. Each copy has
a fresh request id (the agent runs it even if it ran the first one, whose reply
may be what was lost; inference is idempotent) and the same correlation id and
deadline, so the first reply wins.

No MQTT here: the gateway publishes, and hands over each reply's payload and
MQTT 5 properties, so this is tested by feeding it frames.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn

from edge_agent.protocol import (
    DropLog,
    InferReply,
    InferRequest,
    ProtocolError,
    Tensor,
    decode_frame,
    encode_frame,
    new_id,
    parse_header,
)
from mesh.edge._records import (
    EdgeBusError,
    EdgeInferenceError,
    EdgeRequestTimeoutError,
    InferResult,
    _Counters,
)

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["PendingRequests", "ReplyFuture", "Resend", "infer_result"]

logger = logging.getLogger(__name__)

ReplyFuture = concurrent.futures.Future[tuple[InferReply, list[Tensor]]]


@dataclass(slots=True)
class _Pending:
    future: ReplyFuture
    module: str
    node: str
    header: InferRequest
    tensors: list[Tensor]
    sent: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class Resend:
    """A request to send again: its module, correlation id, new frame and time left.

    Attributes:
        module: the module asked for.
        correlation_id: the request's (unchanged) correlation id.
        frame: the request frame with a fresh request id.
        left_s: seconds until the request's deadline.
    """

    module: str
    correlation_id: str
    frame: bytes
    left_s: float


class PendingRequests:
    """Requests awaiting a reply, by correlation id; thread-safe.

    Args:
        name: who sends the requests, for messages (the gateway's client id).
        reply_topic: where replies are to be sent.

    Example:
        >>> pending = PendingRequests(name="gw", reply_topic="mesh/v1/replies/gw")
        >>> corr, frame, future = pending.open("counter", "cam-07", [], timeout_s=2.0)
        >>> pending.handle_reply(b"not a frame")  # logged and counted as malformed
        >>> future.done()
        False
    """

    def __init__(self, *, name: str, reply_topic: str) -> None:
        """Start with nothing in flight."""
        self._name = name
        self._drops = DropLog(logger)  # malformed replies: a log line per interval
        self._reply_topic = reply_topic
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        # requests, replies, unmatched_replies, timeouts, resent and malformed (replies) only
        self._counters = _Counters()

    def open(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[Tensor],
        *,
        timeout_s: float,
        version: str | None = None,
    ) -> tuple[str, bytes, ReplyFuture]:
        """Make a request frame and register it as pending, before it is sent.

        Returns:
            Its correlation id, the frame, and the future of its reply.
        """
        tensors = (
            list(inputs)
            if not isinstance(inputs, Mapping)
            else [Tensor.from_numpy(name, array) for name, array in inputs.items()]
        )
        corr = new_id()
        header = InferRequest(
            module=module,
            version=version,
            reply_to=self._reply_topic,
            correlation_id=corr,
            deadline_ts=time.time() + timeout_s,
        )
        frame = encode_frame(header, tensors)
        future: ReplyFuture = concurrent.futures.Future()
        with self._lock:
            self._pending[corr] = _Pending(future, module, node, header, tensors)
            self._counters.requests += 1
        return corr, frame, future

    def again(self, node: str) -> list[Resend]:
        """The requests to ``node`` still awaiting a reply, as frames to send again.

        Called when ``node`` came online: every request pending now was sent
        before, so it may have been dropped by a broker that lost the node's
        subscription (or its reply may have been). Requests past their deadline
        are left to time out.
        """
        now = time.time()
        with self._lock:
            waiting = [
                (corr, p)
                for corr, p in self._pending.items()
                if p.node == node and not p.future.done()
            ]
        out = []
        for corr, p in waiting:
            deadline = p.header.deadline_ts
            left = math.inf if deadline is None else deadline - now
            if left <= 0:
                continue
            header = p.header.model_copy(update={"id": new_id(), "ts": now})
            out.append(Resend(p.module, corr, encode_frame(header, p.tensors), left))
        if out:
            with self._lock:
                self._counters.resent += len(out)
        return out

    def handle_reply(self, payload: bytes, properties: Any = None) -> None:
        """Resolve the request a reply frame answers.

        The correlation id comes from the reply's header, else from the MQTT 5
        ``CorrelationData`` of ``properties``. Never raises and never blocks:
        it runs on the network thread.
        """
        try:
            header, tensors = decode_frame(payload)
            reply = parse_header(header, InferReply)
        except ProtocolError as exc:
            with self._lock:
                self._counters.malformed += 1
            self._drops.drop(
                "gateway %s: dropped a malformed reply on %s: %s",
                self._name,
                self._reply_topic,
                exc,
            )
            return
        corr = reply.correlation_id
        if corr is None and properties is not None:
            raw = getattr(properties, "CorrelationData", None)
            corr = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else None
        with self._lock:
            pending = self._pending.pop(corr, None) if corr else None
            if pending is None:
                self._counters.unmatched_replies += 1
            else:
                self._counters.replies += 1
        if pending is None:
            # A QoS 1 duplicate, or the answer to a request that already timed out.
            logger.debug("gateway %s: reply %s matches no pending request", self._name, corr)
            return
        if not pending.future.done():
            pending.future.set_result((reply, tensors))

    def timed_out(self, correlation_id: str, module: str, node: str, timeout_s: float) -> NoReturn:
        """Forget a request that got no reply in time, and raise for it.

        Raises:
            EdgeRequestTimeoutError: always.
        """
        with self._lock:
            self._pending.pop(correlation_id, None)
            self._counters.timeouts += 1
        raise EdgeRequestTimeoutError(
            module=module, node=node, correlation_id=correlation_id, timeout_s=timeout_s
        )

    def fail_all(self) -> None:
        """Fail every request in flight (the gateway is stopping)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for corr, p in pending.items():
            if not p.future.done():
                p.future.set_exception(
                    EdgeBusError(
                        f"gateway {self._name} stopped before {p.module} on {p.node} "
                        f"answered (correlation id {corr})"
                    )
                )

    def counters(self) -> _Counters:
        """A copy of the counters kept here."""
        with self._lock:
            return replace(self._counters)


def infer_result(
    module: str, node: str, reply: InferReply, tensors: list[Tensor], started: float
) -> InferResult:
    """The result of a reply that arrived, measured from ``started`` (``perf_counter``).

    Raises:
        EdgeInferenceError: the node answered with an error.
    """
    if reply.error is not None:
        expected = [s.describe() for s in reply.error.expected or []]
        raise EdgeInferenceError(
            module=module,
            node=node,
            code=str(reply.error.code),
            message=reply.error.message,
            expected=expected,
        )
    outputs = {t.name: t.to_numpy() for t in tensors}
    return InferResult(outputs, reply, (time.perf_counter() - started) * 1000.0)
