"""The app's decorators for Ray jobs: Tune searches, Ray Data batches and MQTT streams.

:class:`JobDecorators` is mixed into :class:`mesh.sdk._app.Mesh`; each decorator
checks its job's shape (a trainable taking one config dict, a transformation
taking one dataset, a window function taking one list) and hands the options to
the app's ``_register``. The search-space helpers (``app.uniform`` and the
rest) build the :class:`~mesh.sdk._specs.Domain` values a Tune search takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from mesh.core._errors import SpecError
from mesh.sdk._checks import check_callable, make_domain, no_parentheses, require_one_argument
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import BatchSpec, Domain, FunctionSpec, Resources, StreamSpec, TuneSpec

__all__ = ["JobDecorators"]

F = TypeVar("F", bound=Callable[..., Any])


class JobDecorators:
    """``@app.tune``, ``@app.batch``, ``@app.stream`` and the search-space helpers.

    A mixin of :class:`mesh.sdk._app.Mesh`, which registers what these check.
    """

    # -- search-space helpers (Ray Tune's vocabulary, without importing Ray) --

    @staticmethod
    def uniform(low: float, high: float) -> Domain:
        """A float drawn uniformly from ``[low, high)``."""
        return make_domain("uniform", low=low, high=high)

    @staticmethod
    def loguniform(low: float, high: float) -> Domain:
        """A float drawn log-uniformly from ``[low, high)``."""
        return make_domain("loguniform", low=low, high=high)

    @staticmethod
    def randint(low: int, high: int) -> Domain:
        """An int drawn uniformly from ``[low, high)``."""
        return make_domain("randint", low=low, high=high)

    @staticmethod
    def choice(values: list[Any]) -> Domain:
        """One of ``values``, drawn uniformly."""
        return make_domain("choice", values=tuple(values))

    @staticmethod
    def grid(values: list[Any]) -> Domain:
        """Every one of ``values`` (a grid search dimension)."""
        return make_domain("grid", values=tuple(values))

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
            raise no_parentheses("tune")
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
        check_callable(fn, "tune")
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
            raise no_parentheses("batch")
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
        require_one_argument(fn, "batch", "(events: Dataset) -> Dataset")
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
            raise no_parentheses("stream")
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
        require_one_argument(fn, "stream", "(window: list[dict]) -> list[dict]")
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

    def _register(
        self,
        spec_type: type[FunctionSpec],
        fn: Callable[..., Any],
        decorator: str,
        **options: Any,
    ) -> RegisteredFunction:
        raise NotImplementedError  # Mesh registers; this mixin only checks
