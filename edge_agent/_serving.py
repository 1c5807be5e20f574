"""Inference over MQTT: requests in, replies out, work handed to the module servers.

Runs on paho's network thread, so it only decodes, checks and queues: the
model runs on the module's worker, which also publishes the reply. Replies go to
``reply_to`` (or the MQTT 5 ResponseTopic) with the request's correlation id
(and CorrelationData), and only to a valid topic under ``{p}/replies/``
(:func:`~edge_agent.protocol.reply_target`): a broker disconnects a client that
publishes to a bad one. Every refusal is an error reply with a code; a request
that cannot be addressed is dropped, with one log line per interval however
many arrive.

Deadlines are read through the agent's estimate of the control plane's clock
(:class:`~edge_agent._clock.ClockOffset`, fed by each request's ``ts``), and a
request past its deadline, on arrival or still queued, is answered ``expired``
and counted in its module's ``expired``: never dropped without a word.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from ._budget import MemoryBudget
from ._clock import ClockOffset
from ._runtime import Job, JobResult, LoadedModel, ModuleServer
from ._transport import Message, PublishHandle, Transport
from .protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_ID_CHARS,
    PING_MODULE,
    SCHEMA_VERSION,
    DropLog,
    ErrorCode,
    ErrorInfo,
    InferRequest,
    ProtocolError,
    ReplyTo,
    Topics,
    parse_header,
    reply_target,
)
from .protocol._frames import frame_with_head, pack_frame, peek_header, unpack_frame

__all__ = ["InferenceEndpoint"]

logger = logging.getLogger(__name__)


class _Request(NamedTuple):
    """What serving needs of an :class:`InferRequest` header."""

    id: str
    module: str
    version: str | None
    deadline_ts: float | None
    ts: float | None = None
    """When the sender stamped it (its clock), if it did."""


# The fields of InferRequest, with the exact JSON types that pass its validation
# unchanged (a unit test keeps this in step with the model).
_STR = (str,)
_OPT_STR = (str, type(None))
_NUMBER = (int, float)
_OPT_NUMBER = (int, float, type(None))
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "kind": _STR,
    "id": _STR,
    "ts": _NUMBER,
    "module": _STR,
    "version": _OPT_STR,
    "reply_to": _OPT_STR,
    "correlation_id": _OPT_STR,
    "deadline_ts": _OPT_NUMBER,
}


_COUNTED_REPLY = 64 * 1024
"""Replies this large or larger hold memory budget until acknowledged (small ones: noise)."""

_json_str = json.encoder.encode_basestring_ascii
"""A str as JSON text (C), as json.dumps writes it."""


def plain_request(header: dict[str, Any]) -> _Request | None:
    """The request, when every field has exactly the type :class:`InferRequest` wants.

    Validation through pydantic costs more than the rest of a request's trip
    through the network thread, and a plain header (what clients send) needs
    none of its coercions. None means "not plain": the caller validates with
    pydantic, which accepts or refuses the header with the precise reason.
    """
    version = header.get("schema_version")
    if type(version) is not int or version != 1:
        return None
    for key, types in _PLAIN_TYPES.items():
        value = header.get(key, ...)
        if value is not ... and type(value) not in types:
            return None
    if header.get("kind", "infer_request") != "infer_request":
        return None
    metas = header.get("tensors", [])
    if type(metas) is not list:
        return None
    for m in metas:
        if type(m) is not dict or type(m.get("name")) is not str:
            return None
        shape = m.get("shape")
        if type(m.get("dtype")) is not str or type(shape) is not list:
            return None
        for d in shape:
            if type(d) is not int:
                return None
    rid, module = header.get("id"), header.get("module")
    if rid is None or module is None:  # id has a default, module is required
        return None
    deadline, ts = header.get("deadline_ts"), header.get("ts")
    if (
        len(rid) > MAX_ID_CHARS
        or (ts is not None and not math.isfinite(ts))
        or (deadline is not None and not math.isfinite(deadline))
    ):
        return None  # pydantic says which bound it breaks
    return _Request(rid, module, header.get("version"), deadline, ts)


class InferenceEndpoint:
    """Serves ``{p}/modules/+/infer/{agent}`` for one agent."""

    def __init__(
        self,
        transport: Transport,
        agent_id: str,
        lookup: Callable[[str], ModuleServer | None],
        *,
        topics: Topics | None = None,
        qos: int = 1,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        served: Callable[[], list[str]] | None = None,
        budget: MemoryBudget | None = None,
        clock: ClockOffset | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``lookup(module)`` finds the server of a module (None if not served).

        Replies go only to topics under ``topics``' ``{p}/replies/``. Deadlines
        are read through ``clock`` (fed here with each request's ``ts``); ``now``
        is this device's wall clock.
        """
        self.clock = clock or ClockOffset()
        self._now = now
        self._transport = transport
        self._topics = topics or Topics()
        self._drops = DropLog(logger)
        self._agent = agent_id
        self._lookup = lookup
        self._served_fn = served
        self._qos = qos
        self._max = max_payload_bytes
        # A reply is held by paho until the broker acknowledges it: its bytes
        # count in the budget until then (results that are large fill it too).
        self._budget = budget
        self._unacked: deque[tuple[PublishHandle, int]] = deque()
        self._unacked_lock = threading.Lock()
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        # Reply ids: unique per process start, cheaper than a uuid4 per reply.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_seq = itertools.count()
        # A result's header is written from this text (what pack_frame would write).
        self._result_start = (
            f'{{"schema_version":{SCHEMA_VERSION},"kind":"infer_reply","id":"{self._id_prefix}'
        )
        self._node_json = _json_str(agent_id)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_seq):016x}"

    def _served(self) -> list[str]:
        return sorted(self._served_fn()) if self._served_fn else []

    def _refuse(self, to: ReplyTo | None, module: str, error: ProtocolError) -> None:
        """Answer ``error`` to ``to``; without a reply topic, drop (logged rate-limited)."""
        if to is None:
            self._drops.drop(
                "agent %s: dropped a request for module %.64r (no valid reply topic): %s",
                self._agent,
                module,
                error,
            )
            return
        logger.warning("agent %s: request for module %s refused: %s", self._agent, module, error)
        self._send_error(to, module, error)

    def _send_error(
        self,
        to: ReplyTo | None,
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
            "id": self._new_id(),
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
        topics = self._topics
        self.release_acknowledged()
        try:
            header, tensors = unpack_frame(msg.payload, max_bytes=self._max)
        except ProtocolError as exc:
            peeked = peek_header(msg.payload)
            to, _ = reply_target(peeked, msg.response_topic, msg.correlation_data, topics)
            self._refuse(to, module, exc)
            return
        to, bad = reply_target(header, msg.response_topic, msg.correlation_data, topics)
        if bad is not None:
            self._refuse(to, module, bad)
            return
        req = plain_request(header)
        if req is None:
            try:
                full = parse_header(header, InferRequest)
            except ProtocolError as exc:
                self._refuse(to, module, exc)
                return
            ts = full.ts if "ts" in header else None
            req = _Request(full.id, full.module, full.version, full.deadline_ts, ts)
        if req.module != module:
            err = ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"topic names module {module}, header names {req.module[:64]!r}",
            )
            self._refuse(to, module, err)
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
            # The control plane's RTT probe asks for a module no agent serves.
            level = logging.DEBUG if module == PING_MODULE else logging.WARNING
            logger.log(level, "agent %s: %s", self._agent, err.reason)
            self._send_error(to, module, err)
            return
        now = self._now()
        if req.ts is not None:
            self.clock.observe(req.ts, now)
        deadline = None if req.deadline_ts is None else self.clock.local_deadline(req.deadline_ts)
        if deadline is not None and now > deadline:
            server.count_expired()
            self._send_expired(to, module, f"{now - deadline:.3f}s before it arrived")
            return
        job = Job(
            tensors,
            partial(self._send_result, to, module, server),
            deadline_ts=deadline,
            version=req.version,
            enqueued=time.perf_counter(),
            nbytes=len(msg.payload),
            on_expired=partial(self._send_expired, to, module, "while it was queued"),
        )
        refusal = server.submit_or_reason(job)
        if refusal is not None:
            self._refuse(to, module, ProtocolError(ErrorCode.OVERLOADED, refusal))

    def _send_expired(self, to: ReplyTo | None, module: str, when: str) -> None:
        offset = self.clock.offset_s
        err = ProtocolError(
            ErrorCode.EXPIRED,
            f"module {module} on agent {self._agent}: the request's deadline passed {when} "
            f"(deadlines read with a {offset:+.3f}s clock offset)",
        )
        logger.debug("agent %s: %s", self._agent, err.reason)
        self._send_error(to, module, err)

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
        to: ReplyTo | None,
        module: str,
        server: ModuleServer,
        result: JobResult,
    ) -> None:
        if to is None:
            return
        if result.error is not None:
            self._send_error(to, module, result.error, server.current)
            return
        # The header pack_frame would write for {schema_version, kind, id, ts,
        # correlation_id, module, version, node, queue_ms, compute_ms}, written
        # straight from its parts: a reply is on every request's path.
        corr, version = to.correlation_id, result.version
        head = (
            f"{self._result_start}{next(self._id_seq):016x}"
            f'","ts":{time.time()!r}'
            f',"correlation_id":{"null" if corr is None else _json_str(corr)}'
            f',"module":{_json_str(module)}'
            f',"version":{"null" if version is None else _json_str(version)}'
            f',"node":{self._node_json}'
            f',"queue_ms":{round(result.queue_ms, 3)!r}'
            f',"compute_ms":{round(result.compute_ms, 3)!r},'
        )
        frame = frame_with_head(head, result.outputs or ())
        handle = self._transport.publish(
            to.topic, frame, qos=self._qos, correlation_data=to.correlation_data
        )
        if self._budget is not None and handle is not None and len(frame) >= _COUNTED_REPLY:
            self._budget.hold(len(frame))
            with self._unacked_lock:
                self._unacked.append((handle, len(frame)))
        self.release_acknowledged()

    def release_acknowledged(self) -> None:
        """Give back the budget of replies the broker has acknowledged (oldest first)."""
        if not self._unacked:
            return
        freed = 0
        with self._unacked_lock:
            while self._unacked and self._unacked[0][0].is_published():
                freed += self._unacked.popleft()[1]
        if freed and self._budget is not None:
            self._budget.give(freed)
