"""In-memory fakes behind the same Protocols as the real parts (unit tests only)."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from typing import Any

from mesh import CancelledError, FunctionTimeoutError, RemoteFunctionError, TuneResult
from mesh.compute import CallResult, NodeInfo
from mesh.sdk import FunctionKind, RegisteredFunction

CLOUD = NodeInfo(
    "c" * 56, True, {"mesh.tier": "cloud"}, {"CPU": 1.0, "memory": 2.0**30}, is_head=True
)
FOG = NodeInfo("f" * 56, True, {"mesh.tier": "fog", "mesh.site": "fog-1"}, {"CPU": 1.0})


class FakeCall:
    """Runs the function on a thread, as a node would."""

    def __init__(
        self, registered: RegisteredFunction, kwargs: Mapping[str, Any], node: NodeInfo, run_id: str
    ) -> None:
        self._registered = registered
        self._node = node
        self._run_id = run_id
        self._done = threading.Event()
        self._cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(dict(kwargs),), daemon=True)
        self._thread.start()

    def _run(self, kwargs: dict[str, Any]) -> None:
        spec = self._registered.spec
        try:
            if spec.kind is FunctionKind.TUNE:
                self._value = self._tune()
            else:
                self._value = self._registered.fn(**kwargs)
        except BaseException as exc:
            self._error = RemoteFunctionError(
                function=spec.name,
                run_id=self._run_id,
                remote_type=type(exc).__qualname__,
                remote_message=str(exc),
                remote_traceback=traceback.format_exc(),
            )
        self._done.set()

    def _tune(self) -> TuneResult:
        spec: Any = self._registered.spec
        trials = []
        for value in spec.search_space["x"].values:
            metrics = self._registered.fn({"x": value})
            trials.append({"config": {"x": value}, "metrics": metrics})
        best = (min if spec.mode == "min" else max)(trials, key=lambda t: t["metrics"][spec.metric])
        return TuneResult(spec.metric, spec.mode, best["config"], best["metrics"], trials)

    def result(self, timeout_s: float | None = None) -> CallResult:
        spec = self._registered.spec
        if not self._done.wait(timeout_s):
            self._cancelled = True
            raise FunctionTimeoutError(
                function=spec.name, run_id=self._run_id, timeout_s=timeout_s or 0.0
            )
        if self._cancelled:
            raise CancelledError(
                f"{spec.name} was cancelled", function=spec.name, run_id=self._run_id
            )
        if self._error is not None:
            raise self._error
        return CallResult(self._value, self._node.node_id)

    def cancel(self) -> None:
        self._cancelled = True
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()


class FakeBackend:
    """A ComputeBackend with fixed nodes that runs functions in-process."""

    def __init__(self, nodes: list[NodeInfo] | None = None) -> None:
        self._nodes = list(nodes if nodes is not None else [CLOUD, FOG])
        self.submitted: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    def nodes(self, *, refresh: bool = False) -> list[NodeInfo]:
        return list(self._nodes)

    def add_node(self, node: NodeInfo) -> None:
        self._nodes.append(node)

    def submit(self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str) -> FakeCall:
        self.submitted.append((fn.name, dict(kwargs)))
        node = next(n for n in self._nodes if n.alive and n.tier == fn.spec.tier)
        return FakeCall(fn, kwargs, node, run_id)

    def close(self) -> None:
        self.closed = True
