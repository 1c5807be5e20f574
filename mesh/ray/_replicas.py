"""Module replicas as Ray actors: Ray places and supervises them, requests go direct.

Each replica is one actor pinned to its tier (and site) with ``label_selector``
(a standby also kept off its primary's node: ``ray.io/node-id: !in(...)``),
reserving the module's fractional CPUs (and GPUs, memory, custom resources),
restarted by Ray up to ``max_restarts`` times if its process dies. Its
constructor loads the model into ONNX Runtime, warms it up and starts the
replica's own HTTP server (:mod:`mesh.serving.replica._server`) on a free port of the
node; the endpoint ``(node id, host, port, key)`` is what :meth:`RayReplicaHandle.poll`
returns once the constructor is done. Ray is used to start, find and stop
replicas, never per request.

Where it listens: the address Ray knows its node by (the raylet's node IP, what
``ray.util.get_node_ip_address()`` answers inside a worker), so on a cluster
bound to loopback (the embedded one) replicas listen on 127.0.0.1 too, and on a
multi-host cluster on the node's address, where the gateway reaches them.
What it answers: only callers with its replica key
(:mod:`mesh.serving._replica_keys`). The launcher issues a fresh key for every
replica it launches, as a constructor argument (out of ``ps``, never logged);
when Ray restarts a dead replica's process, the new process makes a fresh key
itself (the old one dies with the old process), and the serving manager learns
it with the new port (:meth:`RayReplicaHandle.refresh`).

Given broker settings (``mqtt=``), each replica also answers edge agents'
offloaded requests on ``{p}/modules/{module}/infer/{replica_id}``
(:mod:`mesh.serving.replica._mqtt`); the constructor returns only once that subscription
is acknowledged, so a replica in a route always listens on both ways in.

The model's bytes go to the object store once per version (``ray.put``), and
every replica of that version (and every restart) reads them from there; each
handle holds the reference, so a restart finds them as long as the replica is
wanted. A replica that must avoid a node holding a copy (a node that just lost a
replica, which Ray may count alive ~10 s more) gets a fresh object: Ray's fetch
would try that copy first and wait for the node to be declared dead. (Ray logs
a line per replica saying that constructor arguments in the object store must
stay in scope for restarts: they do.)

Example:
    >>> launcher = RayReplicaLauncher(nodes=backend.nodes,
    ...                               mqtt=ReplicaMqtt(broker_url))   # doctest: +SKIP
    >>> manager = ServingManager(routes, launcher, registry=registry)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
from ray import exceptions as ray_exceptions

from mesh.compute._backend import NodeInfo, check_satisfiable
from mesh.core._errors import BackendError, UnsatisfiableError
from mesh.ray._remote import label_selector, task_resources
from mesh.sdk._specs import FunctionSpec
from mesh.serving._contract import ReplicaMqtt
from mesh.serving._manager import ModelArtifact, ReplicaFailedError, ReplicaRequest
from mesh.serving._replica_keys import new_replica_key
from mesh.serving._routes import ReplicaEndpoint

if TYPE_CHECKING:
    from mesh.serving.replica._mqtt import MqttResponder

__all__ = ["RayReplicaHandle", "RayReplicaLauncher", "ReplicaActor"]

logger = logging.getLogger(__name__)

_MODEL_REFS_KEPT = 8
#: The label every Ray node carries with its id.
NODE_ID_LABEL = "ray.io/node-id"


class ReplicaActor:
    """The actor class: one replica's model and HTTP server, inside a Ray worker."""

    def __init__(
        self,
        module: str,
        version: str,
        model: list[Any],
        cpus: float,
        gpus: float,
        batching: str,
        replica_id: str,
        bind_host: str | None,
        mqtt: ReplicaMqtt | None = None,
        key: str | None = None,
    ) -> None:
        """Load, warm up and serve (HTTP, and MQTT when given); ready when this returns.

        ``model`` is ``[ObjectRef of the ONNX bytes]``: nested, so the actor fetches it
        (the driver keeps the reference, and a restarted actor fetches it again).
        ``key`` is the replica key the launcher issued; a restarted process (and
        a caller that gives none) makes a fresh one.
        """
        from edge_agent._budget import tune_malloc
        from mesh.serving._replica_keys import new_replica_key
        from mesh.serving.replica._server import ModelRunner, ReplicaApp, serve_asgi

        # The actor has its process to itself: large request buffers (over 1 MiB)
        # each get their own mapping, handed back when freed, instead of heap
        # fragments glibc keeps (a replica kept 53-77 MiB after a burst without it).
        tune_malloc()
        context = ray.get_runtime_context()
        self._node_id = context.get_node_id()
        host = bind_host or ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        if key is None or context.was_current_actor_reconstructed:
            key = new_replica_key()
        data: bytes = ray.get(model[0])
        runner = ModelRunner(data, cpus=cpus, gpus=gpus, batching=batching)  # type: ignore[arg-type]
        self._app = ReplicaApp(
            runner,
            model=module,
            version=version,
            node_id=self._node_id,
            replica_id=replica_id,
            key=key,
        )
        self._app.warmup()
        self._server = serve_asgi(self._app, host=host, port=0, name=f"replica-{replica_id}")
        self._mqtt: MqttResponder | None = None
        if mqtt is not None:
            from mesh.serving.replica._mqtt import MqttResponder

            try:
                self._mqtt = MqttResponder(self._app, mqtt).start()
            except BaseException:
                self._server.stop(timeout_s=1.0)
                self._app.close()
                raise
        self._info = {
            "replica_id": replica_id,
            "node_id": self._node_id,
            "host": host,
            "port": self._server.port,
            "key": key,
            "version": version,
            "provider": runner.provider,
            "threads": runner.threads,
            "mqtt_topic": self._mqtt.topic if self._mqtt is not None else None,
        }
        logger.info(
            "replica %s of %s %s serves %s on node %s",
            replica_id,
            module,
            version,
            self._server.url,
            self._node_id[:8],
        )

    def endpoint(self) -> dict[str, Any]:
        """Where it serves, its key, and how (provider, threads)."""
        return dict(self._info)

    def stop(self) -> None:
        """Stop serving (open requests, HTTP and MQTT, finish first)."""
        self._app.draining = True
        if self._mqtt is not None:
            self._mqtt.stop(timeout_s=5.0)
        self._server.stop(timeout_s=10.0)
        self._app.close()


def _endpoint(info: dict[str, Any]) -> ReplicaEndpoint:
    return ReplicaEndpoint(
        str(info["replica_id"]),
        str(info["node_id"]),
        str(info["host"]),
        int(info["port"]),
        str(info["version"]),
        key=str(info["key"]),
    )


class RayReplicaHandle:
    """A replica actor, as the serving manager sees it (:class:`~mesh.serving.ReplicaHandle`)."""

    def __init__(
        self,
        actor: Any,
        request: ReplicaRequest,
        model_ref: Any,
        copies: set[str] | None = None,
    ) -> None:
        """Wrap a just-created actor; ``model_ref`` is kept so that restarts find the model.

        ``copies``: the nodes holding a copy of ``model_ref``; the replica's node is
        added once known (its worker fetched the model there).
        """
        self._actor = actor
        self._request = request
        self._model_ref = model_ref
        self._copies = copies if copies is not None else set()
        self._ready = actor.endpoint.remote()
        self._endpoint: ReplicaEndpoint | None = None
        self._stopped = False

    @property
    def replica_id(self) -> str:
        """The replica's id."""
        return self._request.replica_id

    def _failed(self, exc: BaseException) -> ReplicaFailedError:
        r = self._request
        cause = str(exc).strip().splitlines()
        detail = cause[-1] if cause else type(exc).__name__
        return ReplicaFailedError(
            f"replica {r.replica_id} of {r.module} {r.version} on {r.tier} failed: {detail}"
        )

    def poll(self) -> ReplicaEndpoint | None:
        """Its endpoint once the actor's constructor finished; None before (never blocks)."""
        if self._endpoint is not None:
            return self._endpoint
        ready, _ = ray.wait([self._ready], timeout=0, fetch_local=True)
        if not ready:
            return None
        try:
            info = ray.get(self._ready)
        except ray_exceptions.RayError as exc:
            raise self._failed(exc) from exc
        self._endpoint = _endpoint(info)
        self._copies.add(self._endpoint.node_id)
        return self._endpoint

    def refresh(self, timeout_s: float) -> ReplicaEndpoint | None:
        """Ask the actor where it serves now (after a restart: a new port)."""
        ref = self._actor.endpoint.remote()
        try:
            info = ray.get(ref, timeout=timeout_s)
        except ray_exceptions.GetTimeoutError:
            return None
        except ray_exceptions.ActorUnavailableError:
            return None  # restarting
        except ray_exceptions.RayError as exc:
            raise self._failed(exc) from exc
        self._endpoint = _endpoint(info)
        return self._endpoint

    def kill(self) -> None:
        """Kill the actor for good at once, no restart (it is lost: its node may be gone).

        Unlike :meth:`stop`, nothing is asked of the actor: a call to an actor whose
        node died waits for Ray to restart it elsewhere (a cold start, for nothing).
        """
        if self._stopped:
            return
        self._stopped = True
        self._model_ref = None
        try:
            ray.kill(self._actor, no_restart=True)
        except (ValueError, ray_exceptions.RayError) as exc:
            logger.debug("replica %s already gone: %s", self.replica_id, exc)

    def stop(self) -> None:
        """Stop the server (finishing open requests), then kill the actor for good."""
        if self._stopped:
            return
        self._stopped = True
        self._model_ref = None
        try:
            ray.get(self._actor.stop.remote(), timeout=15)
        except ray_exceptions.RayError as exc:
            logger.debug("replica %s did not stop cleanly: %s", self.replica_id, exc)
        try:
            ray.kill(self._actor, no_restart=True)
        except (ValueError, ray_exceptions.RayError) as exc:
            logger.debug("replica %s already gone: %s", self.replica_id, exc)


class RayReplicaLauncher:
    """Starts replica actors on the Ray cluster this process is connected to.

    Args:
        nodes: the cluster's nodes (e.g. ``RayBackend.nodes``), to refuse at once
            what no node can hold (Ray would leave the actor pending forever);
            default ``ray.nodes()``.
        bind_host: address replicas listen on; default the node's IP as Ray knows it
            (loopback on a loopback cluster).
        max_restarts: Ray restarts of a replica whose process died.
        mqtt: the broker replicas connect to, to answer agents' offloaded requests
            on ``{p}/modules/{module}/infer/{replica_id}``; None = HTTP only.
    """

    def __init__(
        self,
        *,
        nodes: Callable[[], list[NodeInfo]] | None = None,
        bind_host: str | None = None,
        max_restarts: int = 3,
        mqtt: ReplicaMqtt | None = None,
    ) -> None:
        """Use the Ray connection of this process (``ray.init`` done by the backend)."""
        self._nodes = nodes
        self._bind_host = bind_host
        self._mqtt = mqtt
        self._max_restarts = max_restarts
        # sha256 -> (the model's object, the nodes that fetched a copy of it)
        self._models: OrderedDict[str, tuple[Any, set[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def _live_nodes(self) -> list[NodeInfo]:
        if self._nodes is not None:
            return self._nodes()
        from mesh.ray._backend import _node_info

        return [_node_info(entry) for entry in ray.nodes()]  # type: ignore[no-untyped-call]

    def _model_ref(
        self, artifact: ModelArtifact, avoid: tuple[str, ...] = ()
    ) -> tuple[Any, set[str]]:
        """The model's object and the nodes holding copies; a fresh one if any is avoided.

        A node to avoid may be gone while Ray still counts it alive: a fetch of an
        object with a copy there tries that copy first and waits for Ray to declare
        the node dead (a replacement replica took 11 s to start, measured).
        """
        with self._lock:
            entry = self._models.get(artifact.sha256)
            if entry is None or not entry[1].isdisjoint(avoid):
                entry = (ray.put(artifact.data), set())
                self._models[artifact.sha256] = entry
                while len(self._models) > _MODEL_REFS_KEPT:
                    self._models.popitem(last=False)
            else:
                self._models.move_to_end(artifact.sha256)
            return entry

    def launch(self, request: ReplicaRequest) -> RayReplicaHandle:
        """Create the replica's actor on a node of its tier (and site); returns at once.

        Raises:
            UnsatisfiableError: no live node has the tier, site or resources.
            BackendError: Ray is not connected or refused the actor.
        """
        if not ray.is_initialized():
            raise BackendError("Ray is not connected: connect the backend before serving")
        spec = FunctionSpec(
            name=request.module, tier=request.tier, site=request.site, resources=request.resources
        )
        live = [n for n in self._live_nodes() if n.node_id not in request.avoid_nodes]
        check_satisfiable(spec, live)
        selector = label_selector(spec)
        if request.avoid_nodes:
            # A standby on another node than its primary (Ray's "!in(...)" selector).
            selector[NODE_ID_LABEL] = f"!in({','.join(sorted(request.avoid_nodes))})"
        if request.node is not None:
            if not any(n.node_id == request.node for n in live):
                raise UnsatisfiableError(
                    request.module,
                    {"node": request.node},
                    [{"node": n.node_id, "tier": n.tier} for n in live],
                    f"node {request.node[:8]} is not a live node",
                )
            selector = {**selector, NODE_ID_LABEL: request.node}
        options = task_resources(spec)
        options.update(
            label_selector=selector,
            max_restarts=self._max_restarts,
            max_task_retries=0,
            max_concurrency=2,  # endpoint() answers while stop() runs
            name=f"mesh-replica:{request.replica_id}",
        )
        res = request.resources
        model_ref, copies = self._model_ref(request.artifact, request.avoid_nodes)
        try:
            actor = (
                ray.remote(ReplicaActor)
                .options(**options)
                .remote(
                    request.module,
                    request.version,
                    [model_ref],
                    res.cpus,
                    res.gpus,
                    request.batching,
                    request.replica_id,
                    self._bind_host,
                    self._mqtt,
                    new_replica_key(),
                )
            )
        except Exception as exc:
            raise BackendError(f"Ray refused replica {request.replica_id}: {exc}") from exc
        logger.info(
            "replica %s of %s %s requested on %s (%s)",
            request.replica_id,
            request.module,
            request.version,
            request.tier,
            options["label_selector"],
        )
        return RayReplicaHandle(actor, request, model_ref, copies)
