"""The app object: decorators that register functions and modules.

Registration is all a decorator does: it validates the options at once, records
a spec on the app and returns the function unchanged, so it stays callable
locally. Running happens through a :class:`mesh.Runner`. The decorators for
Ray jobs (tune, batch, stream) are in :mod:`mesh.sdk._job_decorators`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from mesh.core._errors import SpecError, UnknownFunctionError
from mesh.sdk._checks import build_spec, check_callable, first_doc_line, no_parentheses
from mesh.sdk._job_decorators import JobDecorators
from mesh.sdk._registered import RegisteredFunction, RegisteredModule
from mesh.sdk._specs import Canary, Drift, FunctionSpec, ModuleSpec, QoS, Resources
from mesh.sdk._triggers import TriggerDecorators, TriggerSpec

# RegisteredFunction and RegisteredModule stay listed while mesh/__init__.py
# imports them from here.
__all__ = ["Mesh"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


class Mesh(JobDecorators, TriggerDecorators):
    """An app: the functions and modules of one project, registered by decorators.

    Example:
        >>> app = Mesh("traffic")
        >>> @app.function(tier="fog", timeout_s=5)
        ... def add(a: int, b: int) -> int:
        ...     return a + b
        >>> add(1, 2)
        3
        >>> app.functions["add"].spec.tier
        'fog'
    """

    def __init__(self, name: str) -> None:
        """Create an empty app called ``name``."""
        if not name or not isinstance(name, str):
            raise SpecError("Mesh(name) needs a non-empty name, e.g. Mesh('traffic')")
        self.name = name
        self._functions: dict[str, RegisteredFunction] = {}
        self._modules: dict[str, RegisteredModule] = {}
        self._triggers: dict[str, TriggerSpec] = {}

    def __repr__(self) -> str:
        return (
            f"Mesh({self.name!r}, functions={len(self._functions)}, modules={len(self._modules)})"
        )

    @property
    def functions(self) -> Mapping[str, RegisteredFunction]:
        """Registered functions by name (read-only view)."""
        return dict(self._functions)

    @property
    def modules(self) -> Mapping[str, RegisteredModule]:
        """Registered modules by name (read-only view)."""
        return dict(self._modules)

    def get(self, name: str) -> RegisteredFunction:
        """Return the function registered as ``name``.

        Raises:
            UnknownFunctionError: with the closest registered name as a hint.
        """
        try:
            return self._functions[name]
        except KeyError:
            raise UnknownFunctionError(name, self._functions) from None

    # -- functions --

    @overload
    def function(self, _fn: F, /) -> F: ...
    @overload
    def function(
        self,
        _fn: None = None,
        /,
        *,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]: ...
    def function(
        self,
        _fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Any:
        """Register a function run as a Ray task on a node of ``tier``.

        Args:
            name: registered name (default: the function's name).
            tier: ``"cloud"`` or ``"fog"``.
            site: pin to nodes labelled ``mesh.site=<site>``.
            resources: reserved per invocation (default 0.25 CPU).
            retries: re-runs after an exception or a lost node.
            timeout_s: cancel after this many seconds.

        Example:
            >>> app = Mesh("demo")
            >>> @app.function(tier="cloud", retries=2)
            ... def train(epochs: int = 5) -> float:
            ...     return 0.1
        """
        if _fn is not None:
            raise no_parentheses("function")
        options = dict(
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

        def register(fn: F) -> F:
            self.add_function(fn, **options)  # type: ignore[arg-type]
            return fn

        return register

    def add_function(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> RegisteredFunction:
        """Register ``fn`` without decorator syntax; see :meth:`function`."""
        return self._register(
            FunctionSpec,
            fn,
            "function",
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

    # -- modules --

    @overload
    def module(self, _cls: C, /) -> C: ...
    @overload
    def module(
        self,
        _cls: None = None,
        /,
        *,
        model: str,
        qos: QoS,
        tiers: list[str] | tuple[str, ...] = ("edge", "fog", "cloud"),
        name: str | None = None,
        resources: Resources | None = None,
        min_replicas: int = 1,
        max_replicas: int = 1,
        target_in_flight: float = 2.0,
        drift: Drift | None = None,
        canary: Canary | None = None,
    ) -> Callable[[C], C]: ...
    def module(
        self,
        _cls: type | None = None,
        /,
        *,
        model: str | None = None,
        qos: QoS | None = None,
        tiers: list[str] | tuple[str, ...] = ("edge", "fog", "cloud"),
        name: str | None = None,
        resources: Resources | None = None,
        min_replicas: int = 1,
        max_replicas: int = 1,
        target_in_flight: float = 2.0,
        drift: Drift | None = None,
        canary: Canary | None = None,
    ) -> Any:
        """Register an inference module class serving ``model`` under ``qos``.

        Only registration happens here; the placement engine decides where it
        is served (edge agents, fog or cloud replicas).

        Example:
            >>> app = Mesh("demo")
            >>> @app.module(model="vehicle-counter", qos=QoS(p95_latency_ms=20))
            ... class VehicleCounter:
            ...     def preprocess(self, frame): return frame
        """
        if _cls is not None:
            raise no_parentheses("module")
        if model is None or qos is None:
            raise SpecError(
                "@app.module needs model= and qos=, e.g. "
                "@app.module(model='vehicle-counter', qos=QoS(p95_latency_ms=20))"
            )
        options = dict(
            model=model,
            qos=qos,
            tiers=tiers,
            name=name,
            resources=resources,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_in_flight=target_in_flight,
            drift=drift,
            canary=canary,
        )

        def register(cls: C) -> C:
            self.add_module(cls, **options)  # type: ignore[arg-type]
            return cls

        return register

    def add_module(
        self,
        cls: type,
        *,
        model: str,
        qos: QoS,
        tiers: list[str] | tuple[str, ...] = ("edge", "fog", "cloud"),
        name: str | None = None,
        resources: Resources | None = None,
        min_replicas: int = 1,
        max_replicas: int = 1,
        target_in_flight: float = 2.0,
        drift: Drift | None = None,
        canary: Canary | None = None,
    ) -> RegisteredModule:
        """Register a module class without decorator syntax; see :meth:`module`."""
        if not inspect.isclass(cls):
            raise SpecError(
                f"@app.module decorates a class with preprocess/postprocess methods, got "
                f"{type(cls).__name__} {getattr(cls, '__name__', cls)!r}; for a plain function "
                "use @app.function()"
            )
        module_name = name or cls.__name__
        if module_name in self._modules:
            raise SpecError(
                f"a module named {module_name!r} is already registered on {self.name!r}"
            )
        spec = build_spec(
            ModuleSpec,
            module_name,
            name=module_name,
            model=model,
            qos=qos,
            tiers=tuple(tiers),
            resources=resources or Resources(),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_in_flight=target_in_flight,
            drift=drift,
            canary=canary,
            description=first_doc_line(cls),
        )
        registered = RegisteredModule(spec=spec, cls=cls, app=self.name)
        self._modules[module_name] = registered
        return registered

    # -- shared --

    def _register(
        self,
        spec_type: type[FunctionSpec],
        fn: Callable[..., Any],
        decorator: str,
        **options: Any,
    ) -> RegisteredFunction:
        check_callable(fn, decorator)
        name = options.pop("name") or fn.__name__
        if name in self._functions:
            raise SpecError(
                f"a function named {name!r} is already registered on {self.name!r}; "
                "pass name= to register it under another name"
            )
        if options.get("resources") is None:
            options["resources"] = Resources()
        spec = build_spec(spec_type, name, name=name, description=first_doc_line(fn), **options)
        registered = RegisteredFunction(spec=spec, fn=fn, app=self.name)
        self._functions[name] = registered
        return registered
