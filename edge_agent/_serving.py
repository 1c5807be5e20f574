"""Inference over MQTT: requests in, replies out, work handed to the module servers.

Runs on paho's network thread, so it only decodes, checks and queues: the
model runs on the module's worker, which also publishes the reply. Replies go to
``reply_to`` (or the MQTT 5 ResponseTopic) with the request's correlation id
(and CorrelationData). Every refusal is an error reply with a code; a request
that cannot even be addressed is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._frames import pack_frame, peek_header
from ._runtime import Job, JobResult, LoadedModel, ModuleServer
from ._transport import Message, Transport
from .protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    ErrorCode,
    ErrorInfo,
    InferRequest,
    ProtocolError,
    decode_frame,
    new_id,
    parse_header,
)

__all__ = ["InferenceEndpoint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _ReplyTo:
    topic: str
    correlation_id: str | None
    correlation_data: bytes | None


class InferenceEndpoint:
    """Serves ``{p}/modules/+/infer/{agent}`` for one agent."""

    def __init__(
        self,
        transport: Transport,
        agent_id: str,
        lookup: Callable[[str], ModuleServer | None],
        *,
        qos: int = 1,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        served: Callable[[], list[str]] | None = None,
    ) -> None:
        """``lookup(module)`` finds the server of a module (None if not served)."""
        self._transport = transport
        self._agent = agent_id
        self._lookup = lookup
        self._served_fn = served
        self._qos = qos
        self._max = max_payload_bytes
        self._recent_ids: OrderedDict[str, None] = OrderedDict()

    def _served(self) -> list[str]:
        return sorted(self._served_fn()) if self._served_fn else []

    def _reply_target(self, header: dict[str, Any] | None, msg: Message) -> _ReplyTo | None:
        header = header or {}
        topic = header.get("reply_to") or msg.response_topic
        if not isinstance(topic, str) or not topic:
            return None
        corr = header.get("correlation_id")
        if corr is None and msg.correlation_data:
            corr = msg.correlation_data.decode(errors="replace")
        return _ReplyTo(topic, str(corr) if corr is not None else None, msg.correlation_data)

    def _send_error(
        self,
        to: _ReplyTo | None,
        module: str | None,
        error: ProtocolError,
        model: LoadedModel | None = None,
    ) -> None:
        if to is None:
            return
        expected = (
            list(model.inputs) if model is not None and error.code == ErrorCode.BAD_INPUT else None
        )
        info = ErrorInfo(code=error.code, message=error.reason, expected=expected)
        header = {
            "schema_version": SCHEMA_VERSION,
            "kind": "infer_reply",
            "id": new_id(),
            "ts": time.time(),
            "correlation_id": to.correlation_id,
            "module": module,
            "node": self._agent,
            "error": info.model_dump(mode="json", exclude_none=True),
        }
        self._transport.publish(
            to.topic,
            pack_frame(header),
            qos=self._qos,
            correlation_data=to.correlation_data,
        )

    def on_request(self, msg: Message) -> None:
        """Handle one request (on the network thread: decode, check, queue)."""
        module = msg.topic.rsplit("/", 3)[-3]
        try:
            header, tensors = decode_frame(msg.payload, max_bytes=self._max)
        except ProtocolError as exc:
            logger.warning("agent %s: request for module %s refused: %s", self._agent, module, exc)
            self._send_error(self._reply_target(peek_header(msg.payload), msg), module, exc)
            return
        to = self._reply_target(header, msg)
        try:
            req = parse_header(header, InferRequest)
        except ProtocolError as exc:
            logger.warning("agent %s: request for module %s refused: %s", self._agent, module, exc)
            self._send_error(to, module, exc)
            return
        if req.module != module:
            err = ProtocolError(
                ErrorCode.BAD_REQUEST, f"topic names module {module}, header names {req.module}"
            )
            self._send_error(to, module, err)
            return
        if self._seen(req.id):
            return  # a QoS 1 duplicate
        server = self._lookup(module)
        if server is None or server.current is None:
            served = self._served()
            err = ProtocolError(
                ErrorCode.UNKNOWN_MODULE,
                f"module {module} is not served by agent {self._agent}; serving {served}",
            )
            logger.warning("agent %s: %s", self._agent, err.reason)
            self._send_error(to, module, err)
            return
        job = Job(
            tensors,
            lambda result: self._send_result(to, module, server, req, result),
            deadline_ts=req.deadline_ts,
            version=req.version,
            enqueued=time.perf_counter(),
        )
        if not server.submit(job):
            self._send_error(
                to, module, ProtocolError(ErrorCode.OVERLOADED, f"module {module}: queue full")
            )

    def _seen(self, request_id: str) -> bool:
        ids = self._recent_ids
        if request_id in ids:
            return True
        ids[request_id] = None
        if len(ids) > 4096:
            ids.popitem(last=False)
        return False

    def _send_result(
        self,
        to: _ReplyTo | None,
        module: str,
        server: ModuleServer,
        req: InferRequest,
        result: JobResult,
    ) -> None:
        if to is None:
            return
        if result.error is not None:
            self._send_error(to, module, result.error, server.current)
            return
        header = {
            "schema_version": SCHEMA_VERSION,
            "kind": "infer_reply",
            "id": new_id(),
            "ts": time.time(),
            "correlation_id": to.correlation_id,
            "module": module,
            "version": result.version,
            "node": self._agent,
            "queue_ms": round(result.queue_ms, 3),
            "compute_ms": round(result.compute_ms, 3),
        }
        self._transport.publish(
            to.topic,
            pack_frame(header, result.outputs or ()),
            qos=self._qos,
            correlation_data=to.correlation_data,
        )
