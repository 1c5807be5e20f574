"""A replica's MQTT responder: edge agents offload straight to a fog or cloud replica.

An agent whose module route says ``offload`` to ``target`` publishes
:class:`~edge_agent.protocol.InferRequest` frames on
``{p}/modules/{module}/infer/{target}`` and waits on its reply topic. A replica
given broker settings (:class:`~mesh.serving._contract.ReplicaMqtt`) answers
those itself, with its replica id as the target, so there is no hop through
the control plane and make-before-break moves the target from the old replica
to the new one.

This is the one cloud-side module besides the edge gateway that uses paho: it
runs inside a replica's process (a data-plane endpoint, like an agent), never
in the control plane.

Threads: paho's network thread only decodes and checks a request (the agent's
rules: schema version, module and version, QoS 1 duplicates dropped by id,
expired requests dropped, inputs against the signature with ``bad_input`` and
the expected inputs on a mismatch) and queues it; one worker thread runs the
model (queued requests together when the replica batches) and publishes each
reply to ``reply_to`` with the correlation id (and, over MQTT 5, the
CorrelationData). The requests count in the replica's ``/stats``, so a
draining replica is stopped only once its MQTT work is done too.

The same worker runs agents' pipelines whose source was handed to this
replica (route ``remote``): see :mod:`mesh.serving.replica._pipelines`.

:meth:`MqttResponder.start` returns once the subscription is acknowledged (the
replica reports ready only then); :meth:`MqttResponder.stop` unsubscribes,
finishes the requests it holds and disconnects.

Example:
    >>> config = ReplicaMqtt("mqtt://127.0.0.1:1883")
    >>> responder = MqttResponder(app, config).start()  # doctest: +SKIP
    >>> responder.topic                                  # doctest: +SKIP
    'mesh/v1/modules/counter/infer/counter-v1-3f2a1b'
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAGIC,
    SCHEMA_VERSION,
    ErrorCode,
    ErrorInfo,
    InferRequest,
    ProtocolError,
    Tensor,
    TensorSpec,
    Topics,
    decode_frame,
    encode_frame,
    new_id,
    parse_header,
)
from mesh.core._errors import MeshError
from mesh.serving._contract import ReplicaMqtt
from mesh.serving._oip import InferenceInputError, check_inputs
from mesh.serving.replica._batching import Feeds, compatible, run_together
from mesh.serving.replica._pipelines import Done, ReplicaPipelines
from mesh.serving.replica._server import ReplicaApp

__all__ = ["MqttResponder", "Publish"]

logger = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK: unsupported protocol version (a v3 rc 1 maps here)
_V5_SILENCE_S = 3.0  # a 3.1.1-only broker may never answer a v5 CONNECT with credentials
_RECENT_IDS = 4096

#: ``publish(topic, payload, correlation_data)``: how replies leave (paho, or a test's fake).
Publish = Callable[[str, bytes, "bytes | None"], None]


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise MeshError(
            "a replica answering MQTT needs paho-mqtt: pip install 'fogmesh[cloud]'"
        ) from exc
    return mqtt


def _set_nodelay(client: Any, userdata: Any, sock: Any) -> None:
    # Nagle + delayed ACKs add ~40-88 ms to every small request/reply.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        logger.debug("TCP_NODELAY not set on %r", sock)


def _peek_header(payload: bytes) -> dict[str, Any] | None:
    """Best-effort header of a request that failed to decode (to address the error)."""
    try:
        if payload[:4] == MAGIC and len(payload) >= 8:
            obj = json.loads(payload[8 : 8 + int.from_bytes(payload[4:8], "little")])
        elif payload[:1] == b"{":
            obj = json.loads(payload)
        else:
            return None
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True, slots=True)
class _ReplyTo:
    topic: str
    correlation_id: str | None
    correlation_data: bytes | None


@dataclass(slots=True)
class _Work:
    reply: _ReplyTo | None
    feeds: Feeds
    size: int
    deadline_ts: float | None
    received: float  # perf_counter
    done: Done | None = None  # a handed-over pipeline's frame: its answer goes here


class MqttResponder:
    """Answers ``{p}/modules/{model}/infer/{replica_id}`` for one replica.

    Args:
        app: the replica (its model, version, stats and queue limit are used).
        config: the broker and topic prefix.
        replica_id: the target id agents name (default ``app.replica_id``).
        client_id: MQTT client id (default ``mesh-replica-{replica_id}-{random}``).
        qos: QoS of the subscription and of replies.
        max_payload_bytes: larger requests are refused.
        publish: send replies through this instead of the broker (unit tests,
            with :meth:`handle`; :meth:`start` is then not needed).
    """

    def __init__(
        self,
        app: ReplicaApp,
        config: ReplicaMqtt,
        *,
        replica_id: str | None = None,
        client_id: str | None = None,
        qos: int = 1,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        publish: Publish | None = None,
    ) -> None:
        """Configure; :meth:`start` connects and subscribes."""
        self._app = app
        self._config = config
        self.replica_id = Topics.check_segment(replica_id or app.replica_id)
        self.topics = Topics(config.prefix)
        self.topic = self.topics.infer(app.model, self.replica_id)
        # Unique per process: a replica Ray restarts elsewhere while the old process
        # still lingers (its node is going) must not take turns kicking it off the broker.
        self.client_id = client_id or f"mesh-replica-{self.replica_id}-{secrets.token_hex(3)}"
        self.protocol: str | None = None
        self._qos = qos
        self._max = max_payload_bytes
        self._send: Publish = publish or self._publish
        self._publish_override = publish
        self._expected = [
            TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape))
            for s in app.runner.signature.inputs
        ]
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Work] = collections.deque()
        self._busy = 0
        self._closed = False
        self._worker = threading.Thread(
            target=self._work, name=f"mqtt-{self.replica_id}", daemon=True
        )
        self._worker.start()
        self._client: Any = None
        self._connack: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._sub_mid: int | None = None
        self._unsub_mid: int | None = None
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._stopping = False
        self._last_reply: Any = None
        # Counted from paho's thread and the worker: under a lock, so none is lost.
        self._counts_lock = threading.Lock()
        self._counts = dict.fromkeys(("requests", "errors", "expired", "duplicates"), 0)
        self.pipelines = ReplicaPipelines(
            self,
            prefix=config.prefix,
            model=app.model,
            version=app.version,
            max_payload_bytes=max_payload_bytes,
        )
        app.reporters["mqtt"] = self.describe

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float | None = None) -> MqttResponder:
        """Connect, subscribe, and return once the broker acknowledged the subscription.

        Raises:
            MeshError: the broker is unreachable, refused the client, or did not
                acknowledge within ``timeout_s`` (default ``config.connect_timeout_s``).
        """
        cfg = self._config
        host, port, _, _ = cfg.endpoint()
        deadline = time.monotonic() + (cfg.connect_timeout_s if timeout_s is None else timeout_s)
        proto = "3.1.1" if cfg.protocol == "3.1.1" else "5"
        try:
            wait_s = deadline - time.monotonic()
            if cfg.protocol == "auto":
                wait_s = min(wait_s, _V5_SILENCE_S)
            code = self._connect(proto, wait_s)
            if cfg.protocol == "auto" and code in (None, _UNSUPPORTED_PROTOCOL):
                logger.info(
                    "replica %s: broker %s:%d does not take MQTT 5; using 3.1.1",
                    self.replica_id,
                    host,
                    port,
                )
                proto = "3.1.1"
                code = self._connect(proto, deadline - time.monotonic())
            if code is None:
                raise MeshError(
                    f"replica {self.replica_id}: no answer from broker {host}:{port} (MQTT {proto})"
                )
            if code != 0:
                raise MeshError(
                    f"replica {self.replica_id}: broker {host}:{port} refused it "
                    f"(MQTT {proto}, reason code {code})"
                )
            if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
                raise MeshError(
                    f"replica {self.replica_id}: broker {host}:{port} did not acknowledge "
                    f"the subscription to {self.topic}"
                )
        except BaseException:
            self.stop(timeout_s=0.5)
            raise
        logger.info(
            "replica %s of %s %s answers MQTT on %s (broker %s:%d, MQTT %s)",
            self.replica_id,
            self._app.model,
            self._app.version,
            self.topic,
            host,
            port,
            proto,
        )
        return self

    def _connect(self, proto: str, wait_s: float) -> int | None:
        """A fresh client; the CONNACK reason code, or None when none came in ``wait_s``."""
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion

        self._teardown()
        cfg = self._config
        host, port, user, password = cfg.endpoint()
        v5 = proto == "5"
        kwargs: dict[str, Any] = {
            "client_id": self.client_id,
            "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        }
        if not v5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(1000)
        if user is not None:
            client.username_pw_set(user, password)
        self._client = client
        self.protocol = proto
        try:
            if v5:  # clean start, no session kept: a restarted replica subscribes anew
                client.connect(host, port, keepalive=cfg.keepalive_s, clean_start=True)
            else:
                client.connect(host, port, keepalive=cfg.keepalive_s)
        except OSError as exc:
            raise MeshError(
                f"replica {self.replica_id}: cannot reach broker {host}:{port}: {exc}"
            ) from exc
        client.loop_start()
        try:
            return self._connack.get(timeout=max(0.01, wait_s))
        except queue.Empty:
            return None

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # already gone
            logger.debug("replica %s: disconnect failed", self.replica_id, exc_info=True)
        client.loop_stop()
        self._subscribed.clear()
        while True:  # drop stale CONNACK codes of that client
            try:
                self._connack.get_nowait()
            except queue.Empty:
                break

    def stop(self, timeout_s: float = 10.0) -> None:
        """Unsubscribe, finish the requests already taken (up to ``timeout_s``), disconnect."""
        if self._stopping:
            return
        self._stopping = True
        self._app.reporters.pop("mqtt", None)
        deadline = time.monotonic() + timeout_s
        client = self._client
        if client is not None and self._subscribed.is_set():
            self._unsubscribed.clear()
            _, self._unsub_mid = client.unsubscribe(self.topic)
            # Requests the broker sent before the UNSUBACK arrive before it, in order.
            self._unsubscribed.wait(max(0.0, min(2.0, deadline - time.monotonic())))
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning(
                        "replica %s: stopped with %d MQTT request(s) unanswered",
                        self.replica_id,
                        len(self._queue) + self._busy,
                    )
                    break
                self._cond.wait(left)
        self._worker.join(max(0.0, deadline - time.monotonic()))
        last = self._last_reply
        while last is not None and not last.is_published() and time.monotonic() < deadline:
            time.sleep(0.005)  # the last reply's PUBACK: nothing still in paho's queue
        self._teardown()
        logger.info("replica %s: MQTT responder stopped", self.replica_id)

    # ---------------------------------------------------------------- paho callbacks
    # On paho's network thread: no blocking, no model runs.

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        code = int(getattr(reason_code, "value", reason_code))
        self._connack.put(code)
        if code != 0:
            probing = code == _UNSUPPORTED_PROTOCOL and self._config.protocol == "auto"
            logger.log(
                logging.DEBUG if probing else logging.WARNING,
                "replica %s: broker refused the connection: %s",
                self.replica_id,
                reason_code,
            )
            return
        if self._stopping:
            return
        _, self._sub_mid = client.subscribe(self.topic, qos=self._qos)
        self.pipelines.on_connected()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        self._subscribed.clear()
        if not self._stopping:
            logger.warning(
                "replica %s lost the broker (%s); reconnecting", self.replica_id, reason_code
            )

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        if mid != self._sub_mid:
            self.pipelines.on_subscribed(mid)
            return
        failed = [str(rc) for rc in reason_codes if int(getattr(rc, "value", rc)) >= 0x80]
        if failed:
            logger.error(
                "replica %s: broker refused the subscription to %s: %s",
                self.replica_id,
                self.topic,
                ", ".join(failed),
            )
            return
        self._subscribed.set()

    def _on_unsubscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        if mid == self._unsub_mid:
            self._unsubscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic != self.topic:
            # A lease list or a handed-over frame (one of a source just given back,
            # still in flight before the UNSUBACK, is dropped there: not a request).
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            self.pipelines.on_message(msg.topic, payload)
            return
        props = getattr(msg, "properties", None)
        self.handle(
            msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload),
            getattr(props, "ResponseTopic", None) if props is not None else None,
            getattr(props, "CorrelationData", None) if props is not None else None,
        )

    # ---------------------------------------------------------------- requests

    def handle(
        self,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Decode, check and queue one request (or answer its refusal); never blocks."""
        app = self._app
        try:
            header, tensors = decode_frame(payload, max_bytes=self._max)
        except ProtocolError as exc:
            to = self._reply_to(_peek_header(payload), response_topic, correlation_data)
            self._refuse(to, exc)
            return
        to = self._reply_to(header, response_topic, correlation_data)
        try:
            req = parse_header(header, InferRequest)
            if req.module != app.model:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"replica {self.replica_id} serves module {app.model}, "
                    f"the request names {req.module}",
                )
            if req.version is not None and req.version != app.version:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_MODULE,
                    f"module {app.model}@{req.version} is not served by replica "
                    f"{self.replica_id} (serving {app.version})",
                )
            if self._seen(req.id):
                self._count("duplicates")
                return  # a QoS 1 duplicate
            if req.deadline_ts is not None and time.time() > req.deadline_ts:
                self._count("expired")
                return  # the requester has given up already
            feeds = self._feeds(tensors)
        except ProtocolError as exc:
            self._refuse(to, exc)
            return
        first = next(iter(feeds.values()), None)
        size = int(first.shape[0]) if first is not None and first.ndim else 1
        work = _Work(to, feeds, size, req.deadline_ts, time.perf_counter())
        refusal: ProtocolError | None = None
        with self._cond:
            if self._closed:
                refusal = ProtocolError(
                    ErrorCode.NOT_READY, f"replica {self.replica_id} is stopping"
                )
            elif len(self._queue) >= app.max_queue:
                refusal = ProtocolError(
                    ErrorCode.OVERLOADED,
                    f"replica {self.replica_id} of {app.model}: {len(self._queue)} queued",
                )
            else:
                app.stats.started()
                self._queue.append(work)
                self._cond.notify()
        if refusal is not None:
            self._refuse(to, refusal)

    # ---------------------------------------------------------------- handed-over pipelines

    def mqtt_subscribe(self, topic: str) -> int | None:
        """Subscribe at QoS 1 (for :class:`ReplicaPipelines`); the SUBACK's message id."""
        client = self._client
        if client is None:
            return None
        rc, mid = client.subscribe(topic, qos=1)
        return int(mid) if rc == 0 and mid is not None else None

    def mqtt_unsubscribe(self, topic: str) -> None:
        """Unsubscribe (for :class:`ReplicaPipelines`)."""
        client = self._client
        if client is not None:
            client.unsubscribe(topic)

    def mqtt_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 (events, lease acknowledgements)."""
        if self._publish_override is not None:
            self._publish_override(topic, payload, None)
            return
        client = self._client
        if client is None:
            logger.warning("replica %s: not connected; %s dropped", self.replica_id, topic)
            return
        self._last_reply = client.publish(topic, payload, qos=1, retain=retain)

    def submit_frame(self, tensors: Sequence[Tensor], done: Done) -> None:
        """Queue a handed-over pipeline's frame for the worker (never blocks)."""
        try:
            feeds = self._feeds(tensors)
        except ProtocolError as exc:
            done(None, exc.reason)
            return
        first = next(iter(feeds.values()), None)
        size = int(first.shape[0]) if first is not None and first.ndim else 1
        with self._cond:
            if self._closed or len(self._queue) >= self._app.max_queue:
                refused = "stopping" if self._closed else "queue full"
            else:
                self._app.stats.started()
                self._queue.append(_Work(None, feeds, size, None, time.perf_counter(), done))
                self._cond.notify()
                return
        done(None, f"replica {self.replica_id}: {refused}")

    def _feeds(self, tensors: Sequence[Tensor]) -> Feeds:
        inputs = self._app.runner.signature.inputs
        if len(inputs) == 1 and len(tensors) == 1:  # one input takes one tensor by any name
            feeds = {inputs[0].name: tensors[0].to_numpy()}
        else:
            feeds = {t.name: t.to_numpy() for t in tensors}
        try:
            check_inputs(self._app.model, feeds, inputs)
        except InferenceInputError as exc:
            expected = "; ".join(exc.expected)
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"{exc.problem}; expected inputs {expected}"
            ) from exc
        return feeds

    def _seen(self, request_id: str) -> bool:
        ids = self._recent
        if request_id in ids:
            return True
        ids[request_id] = None
        if len(ids) > _RECENT_IDS:
            ids.popitem(last=False)
        return False

    @staticmethod
    def _reply_to(
        header: dict[str, Any] | None, response_topic: str | None, correlation_data: bytes | None
    ) -> _ReplyTo | None:
        header = header or {}
        topic = header.get("reply_to") or response_topic
        if not isinstance(topic, str) or not topic:
            return None
        corr = header.get("correlation_id")
        if corr is None and correlation_data:
            corr = correlation_data.decode(errors="replace")
        return _ReplyTo(topic, str(corr) if corr is not None else None, correlation_data)

    # ---------------------------------------------------------------- the worker

    def _take(self) -> list[_Work]:
        first = self._queue.popleft()
        jobs = [first]
        runner = self._app.runner
        if not runner.batching:
            return jobs
        size = first.size
        while (
            self._queue
            and size + self._queue[0].size <= runner.max_batch
            and compatible(first.feeds, self._queue[0].feeds)
        ):
            job = self._queue.popleft()
            jobs.append(job)
            size += job.size
        return jobs

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                jobs = self._take()
                self._busy += len(jobs)
            try:
                self._run(jobs)
            except Exception:
                logger.exception("replica %s: MQTT requests failed", self.replica_id)
            finally:
                with self._cond:
                    self._busy -= len(jobs)
                    self._cond.notify_all()

    def _run(self, jobs: list[_Work]) -> None:
        app = self._app
        start = time.perf_counter()
        now = time.time()
        live: list[_Work] = []
        for work in jobs:
            if work.deadline_ts is not None and now > work.deadline_ts:
                self._count("expired")
                app.stats.finished(start - work.received, False)
            else:
                live.append(work)
        if not live:
            return
        try:
            results, _ = run_together(app.runner, [(w.feeds, w.size) for w in live])
        except Exception as exc:
            logger.warning(
                "replica %s of %s %s: inference failed: %s",
                self.replica_id,
                app.model,
                app.version,
                exc,
            )
            for work in live:
                if work.done is not None:
                    work.done(None, f"inference: {exc}")
                else:
                    self._refuse(work.reply, ProtocolError(ErrorCode.INTERNAL, f"inference: {exc}"))
                app.stats.finished(time.perf_counter() - work.received, False)
            return
        compute_ms = round((time.perf_counter() - start) * 1e3, 3)
        for work, outputs in zip(live, results, strict=True):
            ok = self._answer(work, outputs, (start - work.received) * 1e3, compute_ms)
            app.stats.finished(time.perf_counter() - work.received, ok)

    def _answer(self, work: _Work, outputs: Feeds, queue_ms: float, compute_ms: float) -> bool:
        if work.done is not None:
            work.done(dict(outputs), None)
            return True
        to = work.reply
        if to is None:
            self._count("requests")
            return True
        app = self._app
        header = {
            "schema_version": SCHEMA_VERSION,
            "kind": "infer_reply",
            "id": new_id(),
            "ts": time.time(),
            "correlation_id": to.correlation_id,
            "module": app.model,
            "version": app.version,
            "node": self.replica_id,
            "queue_ms": round(queue_ms, 3),
            "compute_ms": compute_ms,
        }
        try:
            frame = encode_frame(
                header, [Tensor.from_numpy(name, array) for name, array in outputs.items()]
            )
        except ProtocolError as exc:
            self._refuse(to, ProtocolError(ErrorCode.INTERNAL, f"outputs: {exc.reason}"))
            return False
        self._send(to.topic, frame, to.correlation_data)
        self._count("requests")
        return True

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    @property
    def counts(self) -> dict[str, int]:
        """Requests answered, refused (errors), dropped as expired, QoS 1 duplicates."""
        with self._counts_lock:
            return dict(self._counts)

    def _refuse(self, to: _ReplyTo | None, error: ProtocolError) -> None:
        self._count("errors")
        logger.warning("replica %s: request refused: %s", self.replica_id, error)
        if to is None:
            return
        info = ErrorInfo(
            code=error.code,
            message=error.reason,
            expected=self._expected if error.code == ErrorCode.BAD_INPUT else None,
        )
        header = {
            "schema_version": SCHEMA_VERSION,
            "kind": "infer_reply",
            "id": new_id(),
            "ts": time.time(),
            "correlation_id": to.correlation_id,
            "module": self._app.model,
            "node": self.replica_id,
            "error": info.model_dump(mode="json", exclude_none=True),
        }
        self._send(to.topic, encode_frame(header), to.correlation_data)

    def _publish(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        client = self._client
        if client is None:
            logger.warning("replica %s: not connected; reply to %s dropped", self.replica_id, topic)
            return
        props = None
        if self.protocol == "5" and correlation_data:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation_data
        try:
            self._last_reply = client.publish(topic, payload, qos=self._qos, properties=props)
        except ValueError as exc:  # e.g. a reply_to with wildcards
            logger.warning("replica %s: cannot reply to %r: %s", self.replica_id, topic, exc)

    def describe(self) -> dict[str, Any]:
        """The responder's part of ``/stats``."""
        with self._cond:
            depth = len(self._queue) + self._busy
        return {
            "topic": self.topic,
            "protocol": self.protocol,
            "subscribed": self._subscribed.is_set(),
            **self.counts,
            "queue": depth,
            "pipelines": self.pipelines.describe(),
        }
