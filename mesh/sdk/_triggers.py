"""Triggers: when the mesh runs a function by itself.

A trigger names a registered function and one of three reasons to run it: a
cron ``schedule``, a message on an MQTT ``topic`` pattern (debounced), or the
end of another function's run (``after``, with the upstream result passed
in). :class:`TriggerDecorators` is mixed into :class:`mesh.sdk._app.Mesh`:
``@app.trigger(...)`` above a registered function, or its twin
``app.add_trigger("fn", ...)``. Whether the function (and the upstream) exist
is checked when the app is deployed (:func:`check_triggers`), since decorators
run in any order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from mesh.core._errors import SpecError
from mesh.sdk._checks import build_spec, no_parentheses
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import _NAME, _check_cron, _check_topic, _Spec

__all__ = ["TriggerDecorators", "TriggerSpec", "check_triggers"]

F = TypeVar("F", bound=Callable[..., Any])

#: What a missed schedule firing becomes: dropped, or one run for all of them.
MissedPolicy = Literal["skip", "catch_up_once"]
#: What a firing does while the trigger's last run still runs (Kubernetes CronJob's).
ConcurrencyPolicy = Literal["forbid", "allow", "replace"]


_PAYLOADS = {"topic": "message", "path": "file's path", "after": "upstream result"}


class TriggerSpec(_Spec):
    """One trigger: a function and the one reason it runs.

    Example:
        >>> TriggerSpec(name="nightly", function="refit", schedule="0 3 * * *").kind
        'schedule'
    """

    name: str = Field(description="Trigger name, unique in the app; runs record it.")
    function: str = Field(description="The registered function it runs.")
    schedule: str | None = Field(
        None, description="Cron schedule (5 fields or a nickname such as @hourly), in UTC."
    )
    every_s: float | None = Field(
        None, gt=0, description="Fire every this many seconds of the engine's clock."
    )
    at_s: float | None = Field(
        None,
        ge=0,
        description=(
            "Fire at this time of the engine's clock (a scenario's simulated seconds); "
            "with every_s, the first firing. Without it, every_s counts from the start."
        ),
    )
    topic: str | None = Field(None, description="MQTT topic pattern whose messages fire it.")
    path: str | None = Field(
        None,
        description=(
            "A glob ('**' recurses) whose new or changed files fire it, each once it "
            "stayed unchanged for debounce_s."
        ),
    )
    after: str | None = Field(None, description="A function whose finished runs fire it.")
    on: Literal["success", "failure", "finished"] = Field(
        "success", description="With after: which upstream outcomes fire it."
    )
    debounce_s: float = Field(
        1.0,
        ge=0,
        description=(
            "With topic: fire once per burst, this long after its last message; "
            "with path: how long a file must stay unchanged."
        ),
    )
    missed: MissedPolicy = Field(
        "skip", description="With schedule: what firings missed past grace_s become."
    )
    grace_s: float = Field(
        60.0, gt=0, description="With schedule: how late a firing may start and still count."
    )
    concurrency: ConcurrencyPolicy = Field(
        "forbid",
        description="While a run of this trigger still runs: skip, start another, or cancel it.",
    )
    pass_as: str | None = Field(
        None,
        description=(
            "Keyword the message (topic) or upstream result (after) is passed as; "
            "None = 'event' or 'upstream'; '' = not passed."
        ),
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Fixed keyword arguments.")

    @field_validator("name", "function", "after")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(
                f"invalid name {value!r}: use letters, digits, '_' or '-', starting with a letter"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _check_cron(value)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_topic(value, pattern=True)

    @model_validator(mode="after")
    def _one_reason(self) -> TriggerSpec:
        timed = self.every_s is not None or self.at_s is not None
        given = [k for k in ("schedule", "topic", "path", "after") if getattr(self, k) is not None]
        given += ["every_s/at_s"] if timed else []
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of schedule= (cron), every_s=/at_s= (seconds), "
                "topic= (MQTT pattern), path= (a glob) or after= (a function), "
                f"got {', '.join(given) or 'none'}"
            )
        return self

    @property
    def kind(self) -> Literal["schedule", "topic", "path", "after"]:
        """``"schedule"``, ``"topic"``, ``"path"`` or ``"after"``."""
        if self.topic is not None:
            return "topic"
        if self.path is not None:
            return "path"
        return "after" if self.after is not None else "schedule"

    @property
    def argument(self) -> str | None:
        """The keyword a firing's payload is passed as; None for a schedule or ``pass_as=''``."""
        if self.kind == "schedule" or self.pass_as == "":
            return None
        return self.pass_as or {"topic": "event", "path": "path"}.get(self.kind, "upstream")

    def describe(self) -> str:
        """What fires it, in one phrase (``cron 0 3 * * *``, ``after refit succeeds``)."""
        if self.schedule is not None:
            return f"cron {self.schedule}"
        if self.every_s is not None:
            start = f" from {self.at_s:g} s" if self.at_s is not None else ""
            return f"every {self.every_s:g} s{start}"
        if self.at_s is not None:
            return f"at {self.at_s:g} s"
        if self.topic is not None:
            return f"message on {self.topic} (debounce {self.debounce_s:g} s)"
        if self.path is not None:
            return f"file at {self.path} (settled {self.debounce_s:g} s)"
        outcome = {"success": "succeeds", "failure": "fails", "finished": "finishes"}[self.on]
        return f"after {self.after} {outcome}"


class TriggerDecorators:
    """``@app.trigger`` and ``app.add_trigger``; a mixin of :class:`mesh.sdk._app.Mesh`."""

    name: str
    _triggers: dict[str, TriggerSpec]
    _functions: dict[str, RegisteredFunction]

    @property
    def triggers(self) -> Mapping[str, TriggerSpec]:
        """Declared triggers by name (read-only view)."""
        return dict(self._triggers)

    def trigger(self, _fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Run the registered function below by itself; options as :meth:`add_trigger`.

        Example:
            >>> from mesh import Mesh
            >>> app = Mesh("demo")
            >>> @app.trigger(schedule="*/5 * * * *")
            ... @app.function()
            ... def analytics() -> int:
            ...     return 1
            >>> list(app.triggers)
            ['analytics-schedule']
        """
        if _fn is not None:
            raise no_parentheses("trigger")

        def register(fn: F) -> F:
            names = [n for n, r in self._functions.items() if r.fn is fn]
            if not names:
                raise SpecError(
                    f"@app.trigger goes above a registered function: put @app.function() "
                    f"(or @app.batch, ...) under it on {getattr(fn, '__name__', fn)!r}"
                )
            self.add_trigger(names[0], **options)
            return fn

        return register

    def add_trigger(
        self,
        function: str,
        *,
        name: str | None = None,
        schedule: str | None = None,
        every_s: float | None = None,
        at_s: float | None = None,
        topic: str | None = None,
        path: str | None = None,
        after: str | None = None,
        on: str = "success",
        debounce_s: float = 1.0,
        missed: str = "skip",
        grace_s: float = 60.0,
        concurrency: str = "forbid",
        pass_as: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> TriggerSpec:
        """Declare a trigger of ``function`` without decorator syntax.

        Args:
            function: the registered function it runs (checked at deploy).
            name: trigger name (default ``<function>-<schedule|topic|after>``).
            schedule: a cron schedule, in UTC.
            every_s: fire every this many seconds (from ``at_s``, else from the start).
            at_s: fire (first) at this time of the engine's clock.
            topic: an MQTT topic pattern; a burst of messages fires once, ``debounce_s``
                after its last, with the last message passed as ``event``.
            path: a glob; each new or changed file fires once it stayed unchanged for
                ``debounce_s``, its path passed as ``path``.
            after: a function whose runs fire it, the upstream result passed as ``upstream``.
            on: with ``after``: ``success``, ``failure`` or ``finished``.
            debounce_s: with ``topic``: the quiet time that ends a burst.
            missed: ``skip`` or ``catch_up_once`` (schedules).
            grace_s: how late a scheduled firing may start before it counts as missed.
            concurrency: ``forbid``, ``allow`` or ``replace`` while a run still runs.
            pass_as: the keyword the message or upstream result is passed as.
            args: fixed keyword arguments.

        Raises:
            SpecError: naming the bad option and what it takes.
        """
        kind = (
            "topic"
            if topic is not None
            else "path"
            if path is not None
            else "after"
            if after is not None
            else "schedule"
        )
        trigger_name = name or f"{function}-{kind}"
        spec: TriggerSpec = build_spec(
            TriggerSpec,
            f"trigger {trigger_name!r}",
            name=trigger_name,
            function=function,
            schedule=schedule,
            every_s=every_s,
            at_s=at_s,
            topic=topic,
            path=path,
            after=after,
            on=on,
            debounce_s=debounce_s,
            missed=missed,
            grace_s=grace_s,
            concurrency=concurrency,
            pass_as=pass_as,
            args=dict(args or {}),
        )
        if spec.name in self._triggers:
            raise SpecError(
                f"trigger {spec.name!r} is declared twice in app {self.name!r}; give one name="
            )
        self._triggers[spec.name] = spec
        return spec


def check_triggers(
    triggers: Iterable[TriggerSpec],
    functions: Mapping[str, RegisteredFunction],
    *,
    source: str,
) -> None:
    """Refuse triggers that name a missing function or cannot pass their payload.

    Raises:
        SpecError: ``<source>: trigger <name>: <field>: expected ..., got ...``.
    """
    import difflib

    known = sorted(functions)
    triggers = list(triggers)
    for spec in triggers:
        where = f"{source}: trigger {spec.name!r}"
        for field, name in (("function", spec.function), ("after", spec.after)):
            if name is None or name in functions:
                continue
            hint = difflib.get_close_matches(name, known, n=1)
            raise SpecError(
                f"{where}: {field}: expected a function of this file "
                f"({', '.join(known) or 'none registered'}), got {name!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        argument = spec.argument
        if argument is None:
            continue
        params = functions[spec.function].signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if argument not in params and not takes_any:
            raise SpecError(
                f"{where}: pass_as: expected a parameter of {spec.function}"
                f"({', '.join(params)}) to receive the "
                f"{_PAYLOADS[spec.kind]}, got {argument!r}; "
                f"add a parameter {argument!r} or set pass_as="
            )
    _check_no_cycle(triggers, source)


def _check_no_cycle(triggers: list[TriggerSpec], source: str) -> None:
    """Refuse chains that would run forever (``a`` after ``b`` after ``a``)."""
    downstream: dict[str, set[str]] = {}
    for spec in triggers:
        if spec.after is not None:
            downstream.setdefault(spec.after, set()).add(spec.function)
    for start in sorted(downstream):
        path, todo = [start], [(start, iter(sorted(downstream[start])))]
        while todo:  # depth-first, bounded by the functions named
            _, children = todo[-1]
            child = next(children, None)
            if child is None:
                todo.pop()
                path.pop()
                continue
            if child == start:
                cycle = " -> ".join([*path, child])
                raise SpecError(
                    f"{source}: triggers: after: expected chains without a cycle, got {cycle}"
                )
            if child in path or child not in downstream:
                continue
            path.append(child)
            todo.append((child, iter(sorted(downstream[child]))))
