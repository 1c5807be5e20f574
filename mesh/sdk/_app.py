"""The app object: decorators that register functions and modules.

Registration is all a decorator does: it validates the options at once, records
a spec on the app and returns the function unchanged, so it stays callable
locally. Running happens through a :class:`mesh.Runner`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from mesh.core._errors import SpecError, UnknownFunctionError
from mesh.sdk._arguments import bind_arguments, signature_of
from mesh.sdk._specs import (
    BatchSpec,
    Domain,
    FunctionSpec,
    ModuleSpec,
    QoS,
    Resources,
    StreamSpec,
    TuneSpec,
)

__all__ = ["Mesh", "RegisteredFunction", "RegisteredModule"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


@dataclass(frozen=True, slots=True)
class RegisteredFunction:
    """A function with its spec, as the app holds it."""

    spec: FunctionSpec
    fn: Callable[..., Any]
    app: str

    @property
    def name(self) -> str:
        """The registered name."""
        return self.spec.name

    @property
    def signature(self) -> inspect.Signature:
        """The function's Python signature."""
        return signature_of(self.fn)

    def bind(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert keyword arguments against the signature.

        Values are validated (and, where lax conversion applies, converted: the
        CLI passes ``"3"`` for an ``int``) against each parameter's annotation.

        Raises:
            InvalidArgumentsError: naming every wrong argument and the signature.
        """
        return bind_arguments(self.name, self.fn, kwargs)


@dataclass(frozen=True, slots=True)
class RegisteredModule:
    """An inference module class with its spec."""

    spec: ModuleSpec
    cls: type
    app: str


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _no_parentheses(decorator: str) -> SpecError:
    return SpecError(
        f"@app.{decorator} takes keyword options only. Did you forget parentheses? "
        f"Suggestion: `@app.{decorator}()`."
    )


class Mesh:
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

    # -- search-space helpers (Ray Tune's vocabulary, without importing Ray) --

    @staticmethod
    def uniform(low: float, high: float) -> Domain:
        """A float drawn uniformly from ``[low, high)``."""
        return _domain("uniform", low=low, high=high)

    @staticmethod
    def loguniform(low: float, high: float) -> Domain:
        """A float drawn log-uniformly from ``[low, high)``."""
        return _domain("loguniform", low=low, high=high)

    @staticmethod
    def randint(low: int, high: int) -> Domain:
        """An int drawn uniformly from ``[low, high)``."""
        return _domain("randint", low=low, high=high)

    @staticmethod
    def choice(values: list[Any]) -> Domain:
        """One of ``values``, drawn uniformly."""
        return _domain("choice", values=tuple(values))

    @staticmethod
    def grid(values: list[Any]) -> Domain:
        """Every one of ``values`` (a grid search dimension)."""
        return _domain("grid", values=tuple(values))

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
            raise _no_parentheses("function")
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

    @overload
    def tune(self, _fn: F, /) -> F: ...
    @overload
    def tune(
        self,
        _fn: None = None,
        /,
        *,
        metric: str,
        mode: str,
        search_space: Mapping[str, Any] | None = None,
        num_samples: int = 4,
        max_concurrent_trials: int = 1,
        scheduler: str = "fifo",
        max_iterations: int = 100,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]: ...
    def tune(
        self,
        _fn: Callable[..., Any] | None = None,
        /,
        *,
        metric: str | None = None,
        mode: str | None = None,
        search_space: Mapping[str, Any] | None = None,
        num_samples: int = 4,
        max_concurrent_trials: int = 1,
        scheduler: str = "fifo",
        max_iterations: int = 100,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Any:
        """Register a Ray Tune search over the trainable ``fn(config)``.

        The trainable reports metrics with :func:`mesh.report` (any number of
        times) or returns a final metrics dict. Invoking it runs ``num_samples``
        trials on ``tier`` (``resources`` per trial) and returns the best config
        and metrics by ``metric``/``mode``.

        Example:
            >>> app = Mesh("demo")
            >>> @app.tune(metric="loss", mode="min", search_space={"x": app.uniform(-1, 1)})
            ... def objective(config: dict) -> dict:
            ...     return {"loss": config["x"] ** 2}
        """
        if _fn is not None:
            raise _no_parentheses("tune")
        if metric is None or mode is None:
            raise SpecError(
                "@app.tune needs metric= and mode=, e.g. @app.tune(metric='val_mae', mode='min')"
            )
        options = dict(
            metric=metric,
            mode=mode,
            search_space=search_space,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials,
            scheduler=scheduler,
            max_iterations=max_iterations,
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

        def register(fn: F) -> F:
            self.add_tune(fn, **options)  # type: ignore[arg-type]
            return fn

        return register

    def add_tune(
        self,
        fn: Callable[..., Any],
        *,
        metric: str,
        mode: str,
        search_space: Mapping[str, Any] | None = None,
        num_samples: int = 4,
        max_concurrent_trials: int = 1,
        scheduler: str = "fifo",
        max_iterations: int = 100,
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> RegisteredFunction:
        """Register a tune trainable without decorator syntax; see :meth:`tune`."""
        _check_callable(fn, "tune")
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if len(params) != 1:
            raise SpecError(
                f"@app.tune function {getattr(fn, '__name__', fn)!r} must take exactly one "
                f"required argument, the trial's config dict (def {getattr(fn, '__name__', 'f')}"
                f"(config: dict) -> None); it takes {len(params)}"
            )
        return self._register(
            TuneSpec,
            fn,
            "tune",
            metric=metric,
            mode=mode,
            search_space=dict(search_space or {}),
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials,
            scheduler=scheduler,
            max_iterations=max_iterations,
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

    @overload
    def batch(self, _fn: F, /) -> F: ...
    @overload
    def batch(
        self,
        _fn: None = None,
        /,
        *,
        schedule: str | None = None,
        input_format: str = "csv",
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]: ...
    def batch(
        self,
        _fn: Callable[..., Any] | None = None,
        /,
        *,
        schedule: str | None = None,
        input_format: str = "csv",
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Any:
        """Register a Ray Data transformation ``fn(dataset) -> dataset``.

        Invoked with ``input=`` (a file, directory or glob of CSV/Parquet files),
        it reads them with Ray Data on ``tier``, applies ``fn`` and writes the
        result as Parquet under the mesh's data directory.

        Example:
            >>> app = Mesh("demo")
            >>> @app.batch(tier="cloud", schedule="*/15 * * * *")
            ... def profiles(events):
            ...     return events.groupby("site").count()
        """
        if _fn is not None:
            raise _no_parentheses("batch")
        options = dict(
            schedule=schedule,
            input_format=input_format,
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

        def register(fn: F) -> F:
            self.add_batch(fn, **options)  # type: ignore[arg-type]
            return fn

        return register

    def add_batch(
        self,
        fn: Callable[..., Any],
        *,
        schedule: str | None = None,
        input_format: str = "csv",
        name: str | None = None,
        tier: str = "cloud",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> RegisteredFunction:
        """Register a batch function without decorator syntax; see :meth:`batch`."""
        _require_one_argument(fn, "batch", "(events: Dataset) -> Dataset")
        return self._register(
            BatchSpec,
            fn,
            "batch",
            schedule=schedule,
            input_format=input_format,
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

    @overload
    def stream(self, _fn: F, /) -> F: ...
    @overload
    def stream(
        self,
        _fn: None = None,
        /,
        *,
        topic: str,
        window_s: float = 10.0,
        output_topic: str | None = None,
        name: str | None = None,
        tier: str = "fog",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Callable[[F], F]: ...
    def stream(
        self,
        _fn: Callable[..., Any] | None = None,
        /,
        *,
        topic: str | None = None,
        window_s: float = 10.0,
        output_topic: str | None = None,
        name: str | None = None,
        tier: str = "fog",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> Any:
        """Register a function fed windows of messages from an MQTT topic pattern.

        Each window (``window_s`` seconds) of decoded JSON messages becomes one
        call ``fn(window: list[dict]) -> list[dict]``; each output dict is
        published to ``output_topic`` when one is given.

        Example:
            >>> app = Mesh("demo")
            >>> @app.stream(tier="fog", topic="traffic/+/counts", window_s=10)
            ... def plan(window: list[dict]) -> list[dict]:
            ...     return [{"n": len(window)}]
        """
        if _fn is not None:
            raise _no_parentheses("stream")
        if topic is None:
            raise SpecError("@app.stream needs topic=, e.g. @app.stream(topic='traffic/+/counts')")
        options = dict(
            topic=topic,
            window_s=window_s,
            output_topic=output_topic,
            name=name,
            tier=tier,
            site=site,
            resources=resources,
            retries=retries,
            timeout_s=timeout_s,
        )

        def register(fn: F) -> F:
            self.add_stream(fn, **options)  # type: ignore[arg-type]
            return fn

        return register

    def add_stream(
        self,
        fn: Callable[..., Any],
        *,
        topic: str,
        window_s: float = 10.0,
        output_topic: str | None = None,
        name: str | None = None,
        tier: str = "fog",
        site: str | None = None,
        resources: Resources | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> RegisteredFunction:
        """Register a stream function without decorator syntax; see :meth:`stream`."""
        _require_one_argument(fn, "stream", "(window: list[dict]) -> list[dict]")
        return self._register(
            StreamSpec,
            fn,
            "stream",
            topic=topic,
            window_s=window_s,
            output_topic=output_topic,
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
            raise _no_parentheses("module")
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
        spec = _build(
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
            description=_first_doc_line(cls),
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
        _check_callable(fn, decorator)
        name = options.pop("name") or fn.__name__
        if name in self._functions:
            raise SpecError(
                f"a function named {name!r} is already registered on {self.name!r}; "
                "pass name= to register it under another name"
            )
        if options.get("resources") is None:
            options["resources"] = Resources()
        spec = _build(spec_type, name, name=name, description=_first_doc_line(fn), **options)
        registered = RegisteredFunction(spec=spec, fn=fn, app=self.name)
        self._functions[name] = registered
        return registered


def _domain(kind: str, **values: Any) -> Domain:
    try:
        return Domain(kind=kind, **values)
    except ValidationError as exc:
        raise SpecError(_format_validation(f"search space {kind}()", exc)) from None


def _build(spec_type: type[Any], subject: str, /, **values: Any) -> Any:
    try:
        return spec_type(**values)
    except ValidationError as exc:
        raise SpecError(_format_validation(subject, exc)) from None


def _format_validation(subject: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "value"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return f"invalid options for {subject}: " + "; ".join(lines)


def _check_callable(fn: Any, decorator: str) -> None:
    if inspect.isclass(fn):
        raise SpecError(
            f"@app.{decorator} decorates a function, got the class {fn.__name__!r}; "
            "for an inference module class use @app.module(model=..., qos=...)"
        )
    if not callable(fn) or not hasattr(fn, "__name__"):
        raise SpecError(f"@app.{decorator} decorates a function, got {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise SpecError(
            f"@app.{decorator} cannot register a lambda: it has no name to invoke it by. "
            f"Define it with def, or pass name=: app.add_{decorator}(fn, name='...')"
        )
    if inspect.ismethod(fn):
        raise SpecError(
            f"@app.{decorator} cannot register the bound method {fn.__qualname__!r}; "
            "register a module-level function"
        )
    params = list(inspect.signature(fn).parameters)
    qualname = getattr(fn, "__qualname__", "")
    if params and params[0] in ("self", "cls") and "." in qualname.replace("<locals>.", ""):
        raise SpecError(
            f"@app.{decorator} cannot register the method {qualname!r}: the mesh calls "
            "functions without an instance. Move it to module level, or use @app.module "
            "for a class"
        )


def _require_one_argument(fn: Callable[..., Any], decorator: str, shape: str) -> None:
    _check_callable(fn, decorator)
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [p for p in params if p.default is p.empty]
    if len(required) != 1:
        raise SpecError(
            f"@app.{decorator} function {fn.__name__!r} must take exactly one required "
            f"argument: def {fn.__name__}{shape}; it takes {len(required)}"
        )
