"""A replica's MQTT responder: edge agents offload straight to a fog or cloud replica.

Agents offload on their own ``{p}/agents/{agent}/offload/{module}/{target}``, the
control plane asks on ``{p}/modules/{module}/infer/{target}``. A replica given broker
settings (:class:`~mesh.serving._contract.ReplicaMqtt`) answers both as ``target``
(an agent's always on its own offload reply topic): no hop through the control
plane, and make-before-break moves the target to the new replica. The one cloud-side
paho user besides the edge bus; :mod:`edge_agent._mqtt` sets its client up (MQTT 5 or
3.1.1, TLS).

Threads: paho's network thread only decodes and checks a request (the agent's rules:
schema version, module and version, QoS 1 duplicates dropped by id, expired requests
dropped, deadlines read in each requester's clock: :class:`~edge_agent._clock.SenderClocks`,
inputs against the signature, ``bad_input`` naming the expected inputs) and queues it; one
worker thread runs the model (queued requests together when the replica batches) and
publishes each reply to ``reply_to`` with the correlation id (and, over MQTT 5, the
CorrelationData). The requests count in the replica's ``/stats``, so a draining replica
is stopped only once its MQTT work is done too. The worker also runs pipelines handed
over: :mod:`mesh.serving.replica._pipelines`. :meth:`MqttResponder.start` returns once
the subscription is acknowledged (the replica reports ready only then);
:meth:`MqttResponder.stop` unsubscribes, finishes its requests and disconnects.

Example:
    >>> config = ReplicaMqtt("mqtt://127.0.0.1:1883")
    >>> responder = MqttResponder(app, config).start()  # doctest: +SKIP
    >>> responder.topic                                  # doctest: +SKIP
    'mesh/v1/modules/counter/infer/counter-v1-3f2a1b'
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent._clock import SenderClocks
from edge_agent._mqtt import (
    ClientOptions,
    choose_protocol,
    close_client,
    connect_and_wait,
    new_client,
    reason_value,
    refusal_text,
    tls_failure_text,
)
from edge_agent.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DropLog,
    ErrorCode,
    ProtocolError,
    Tensor,
    TensorSpec,
    Topics,
    decode_frame,
)
from mesh.core._errors import MeshError
from mesh.serving._contract import ReplicaMqtt
from mesh.serving.replica._batching import Feeds, compatible, run_together
from mesh.serving.replica._pipelines import Done, ReplicaPipelines
from mesh.serving.replica._requests import (
    RecentIds,
    ReplyTo,
    Work,
    check_request,
    error_frame,
    model_feeds,
    peek_header,
    reply_frame,
    reply_to,
)
from mesh.serving.replica._server import ReplicaApp

__all__ = ["MqttResponder", "Publish"]

logger = logging.getLogger(__name__)

_PROBE_S = 3.0  # longest wait for the broker's answer to the MQTT 5 question

#: ``publish(topic, payload, correlation_data)``: how replies leave (paho, or a test's fake).
Publish = Callable[[str, bytes, "bytes | None"], None]


class MqttResponder:
    """Answers ``{p}/modules/{model}/infer/{replica_id}`` for one replica.

    Args:
        app: the replica (its model, version, stats and queue limit are used).
        config: the broker and topic prefix.
        replica_id: the target id agents name (default ``app.replica_id``).
        client_id: MQTT client id (default ``mesh-replica-{replica_id}-{random}``).
        qos: QoS of the subscription and of replies.
        max_payload_bytes: larger requests are refused.
        publish: send replies through this, not the broker (unit tests call :meth:`handle`).
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
        self.offload_topic = self.topics.offloads_to(app.model, self.replica_id)
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
        self._recent = RecentIds()
        self._clocks = SenderClocks(f"replica {self.replica_id}")  # deadlines: each agent's clock
        self._drops = DropLog(logger)  # unanswerable requests: a log line per interval
        self._cond = threading.Condition()
        self._queue: collections.deque[Work] = collections.deque()
        self._busy = 0
        self._closed = False
        self._worker = threading.Thread(
            target=self._work, name=f"mqtt-{self.replica_id}", daemon=True
        )
        self._worker.start()
        self._client: Any = None
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
        try:
            self._connect(deadline)
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
            self.protocol,
        )
        return self

    def _connect(self, deadline: float) -> None:
        """A fresh client, connected (MQTT 5 when the broker speaks it, else 3.1.1)."""
        self._teardown()
        cfg = self._config
        host, port, user, password = cfg.endpoint()
        where = f"replica {self.replica_id}: broker {host}:{port}"
        tls = cfg.tls()  # None for mqtt://; never plain MQTT for mqtts://
        try:
            wait_s = min(_PROBE_S, max(0.01, deadline - time.monotonic()))
            proto = choose_protocol(cfg.protocol, host, port, tls=tls, timeout_s=wait_s)
            options = ClientOptions(
                client_id=self.client_id,
                protocol=proto,
                username=user,
                password=password,
                reconnect_min_s=1,
                reconnect_max_s=5,
                max_inflight=1000,
                tls=tls,
            )
            client = new_client(options)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            client.on_unsubscribe = self._on_unsubscribe
            client.on_message = self._on_message
            self._client = client
            self.protocol = proto
            # MQTT 5: clean start, no session kept (a restarted replica subscribes anew).
            code = connect_and_wait(
                client,
                host,
                port,
                keepalive_s=cfg.keepalive_s,
                timeout_s=deadline - time.monotonic(),
                clean_start=True if proto == "5" else None,
            )
        except OSError as exc:
            raise MeshError(f"{where}: {tls_failure_text(exc, tls) or exc}") from exc
        if code is None:
            raise MeshError(f"{where} did not answer (MQTT {proto})")
        if code != 0:
            raise MeshError(f"{where} refused it (MQTT {proto}): {refusal_text(code)}")

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close_client(client)
        self._subscribed.clear()

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
            _, self._unsub_mid = client.unsubscribe([self.topic, self.offload_topic])
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
        code = reason_value(reason_code)
        if code != 0:
            logger.warning(
                "replica %s: broker refused the connection: %s",
                self.replica_id,
                refusal_text(code),
            )
            return
        if self._stopping:
            return
        topics = [(self.topic, self._qos), (self.offload_topic, self._qos)]
        _, self._sub_mid = client.subscribe(topics)
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
        failed = [str(rc) for rc in reason_codes if reason_value(rc) >= 0x80]
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
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        agent = self.topics.offload_requester(msg.topic, self._app.model, self.replica_id)
        if msg.topic != self.topic and agent is None:
            # A lease list or a handed-over frame (one of a source just given back,
            # still in flight before the UNSUBACK, is dropped there: not a request).
            self.pipelines.on_message(msg.topic, payload)
            return
        props = getattr(msg, "properties", None)  # getattr(None, ...) gives the default
        try:
            corr = getattr(props, "CorrelationData", None)
            self.handle(payload, getattr(props, "ResponseTopic", None), corr, requester=agent)
        except Exception as exc:  # paho's thread must outlive any message
            self._drops.drop("replica %s: request dropped: %r", self.replica_id, exc)

    # ---------------------------------------------------------------- requests

    def handle(
        self,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        requester: str | None = None,
    ) -> None:
        """Decode, check and queue one request (or answer its refusal); never blocks."""
        app, bound = self._app, requester and self.topics.offload_reply(requester)
        try:
            header, tensors = decode_frame(payload, max_bytes=self._max)
        except ProtocolError as exc:
            header = peek_header(payload) or {}
            to = reply_to(header, response_topic, correlation_data, self.topics, bound or None)[0]
            self._refuse(to, exc)
            return
        to, bad = reply_to(header, response_topic, correlation_data, self.topics, bound or None)
        try:
            if bad is not None:
                raise bad
            req = check_request(
                header, model=app.model, version=app.version, replica_id=self.replica_id
            )
            if self._recent.seen(req.id):
                self._count("duplicates")
                return  # a QoS 1 duplicate
            deadline = self._clocks.local_deadline(requester, req.ts, req.deadline_ts)
            if deadline is not None and time.time() > deadline:
                self._count("expired")
                return  # the requester has given up already
            feeds = self._feeds(tensors)
        except ProtocolError as exc:
            self._refuse(to, exc)
            return
        first = next(iter(feeds.values()), None)
        size = int(first.shape[0]) if first is not None and first.ndim else 1
        work = Work(to, feeds, size, deadline, time.perf_counter())
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
                self._queue.append(Work(None, feeds, size, None, time.perf_counter(), done))
                self._cond.notify()
                return
        done(None, f"replica {self.replica_id}: {refused}")

    def _feeds(self, tensors: Sequence[Tensor]) -> Feeds:
        return model_feeds(self._app.model, self._app.runner.signature.inputs, tensors)

    # ---------------------------------------------------------------- the worker

    def _take(self) -> list[Work]:
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

    def _run(self, jobs: list[Work]) -> None:
        app = self._app
        start = time.perf_counter()
        now = time.time()
        live: list[Work] = []
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

    def _answer(self, work: Work, outputs: Feeds, queue_ms: float, compute_ms: float) -> bool:
        if work.done is not None:
            work.done(dict(outputs), None)
            return True
        to = work.reply
        if to is None:
            self._count("requests")
            return True
        try:
            frame = reply_frame(
                to,
                outputs,
                model=self._app.model,
                version=self._app.version,
                node=self.replica_id,
                queue_ms=queue_ms,
                compute_ms=compute_ms,
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

    def _refuse(self, to: ReplyTo | None, error: ProtocolError) -> None:
        self._count("errors")
        if to is None:
            self._drops.drop("replica %s: dropped (no reply topic): %s", self.replica_id, error)
            return
        logger.warning("replica %s: request refused: %s", self.replica_id, error)
        frame = error_frame(
            to, error, model=self._app.model, node=self.replica_id, expected=self._expected
        )
        self._send(to.topic, frame, to.correlation_data)

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
        # The topic was checked (reply_to): paho would let NUL through, the broker not.
        self._last_reply = client.publish(topic, payload, qos=self._qos, properties=props)

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
            "clock_offsets_s": self._clocks.offsets(),  # each requester's clock minus ours
            "pipelines": self.pipelines.describe(),
        }
