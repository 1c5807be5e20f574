"""Offload: send a pipeline's input to a module's remote placement and wait for the answer.

Requests go to ``{p}/agents/{agent}/offload/{module}/{target}`` (under the agent's
own topics: the broker's ACL lets an agent publish nothing on another node's infer
topic) with ``reply_to`` set to this agent's offload reply topic and a fresh
correlation id; the replica answers there, and replies are matched back by
correlation id. Over MQTT 5 ResponseTopic/CorrelationData are set too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from ._runtime import JobResult
from ._transport import Message, Transport
from .protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ErrorCode,
    InferReply,
    InferRequest,
    ProtocolError,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    new_id,
    parse_header,
)

__all__ = ["OffloadClient"]

logger = logging.getLogger(__name__)


class OffloadClient:
    """Request/response over MQTT to remote module replicas."""

    def __init__(
        self,
        transport: Transport,
        topics: Topics,
        agent_id: str,
        *,
        qos: int = 1,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """Replies come to ``topics.offload_reply(agent_id)``."""
        self._transport = transport
        self._topics = topics
        self._agent = agent_id
        self._qos = qos
        self._max = max_payload_bytes
        self.reply_topic = topics.offload_reply(agent_id)
        self._pending: dict[str, Future[JobResult]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Subscribe to the reply topic."""
        self._transport.subscribe(self.reply_topic, self._on_reply, qos=self._qos)

    def request(
        self, module: str, target: str, tensors: Sequence[Tensor], timeout_s: float
    ) -> JobResult:
        """Run ``module`` on node ``target``; an error result if it fails or times out."""
        start = time.perf_counter()
        corr = new_id()
        req = InferRequest(
            module=module,
            reply_to=self.reply_topic,
            correlation_id=corr,
            deadline_ts=time.time() + timeout_s,
        )
        fut: Future[JobResult] = Future()
        with self._lock:
            self._pending[corr] = fut
        try:
            handle = self._transport.publish(
                self._topics.offload(self._agent, module, target),
                encode_frame(req, tensors),
                qos=self._qos,
                response_topic=self.reply_topic,
                correlation_data=corr.encode(),
                expiry_s=max(1, int(timeout_s + 0.999)),
            )
            if handle is None:
                return self._failed(module, target, "broker not reachable", start)
            try:
                return fut.result(timeout_s)
            except FutureTimeout:
                return self._failed(module, target, f"no reply within {timeout_s:.3f}s", start)
        finally:
            with self._lock:
                self._pending.pop(corr, None)

    @staticmethod
    def _failed(module: str, target: str, why: str, start: float) -> JobResult:
        err = ProtocolError(ErrorCode.OFFLOAD_FAILED, f"module {module} on {target}: {why}")
        return JobResult(None, err, None, 0.0, (time.perf_counter() - start) * 1e3)

    def _on_reply(self, msg: Message) -> None:
        try:
            header, tensors = decode_frame(msg.payload, max_bytes=self._max)
            reply = parse_header(header, InferReply)
        except ProtocolError as exc:
            logger.warning("agent %s: bad offload reply on %s: %s", self._agent, msg.topic, exc)
            return
        corr = reply.correlation_id
        if corr is None and msg.correlation_data:
            corr = msg.correlation_data.decode(errors="replace")
        with self._lock:
            fut = self._pending.get(corr or "")
        if fut is None or fut.done():
            logger.debug("agent %s: late or unknown offload reply %s", self._agent, corr)
            return
        if reply.error is not None:
            err = ProtocolError(reply.error.code, reply.error.message)
            fut.set_result(JobResult(None, err, reply.version, 0.0, reply.compute_ms or 0.0))
        else:
            owned = [Tensor(t.name, t.dtype, t.shape, bytes(t.data)) for t in tensors]
            fut.set_result(
                JobResult(
                    owned, None, reply.version, reply.queue_ms or 0.0, reply.compute_ms or 0.0
                )
            )
