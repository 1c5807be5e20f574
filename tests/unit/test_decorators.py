from __future__ import annotations

import re
from typing import Any

import pytest

from mesh import Mesh, QoS, Resources, SpecError
from mesh.sdk import BatchSpec, Domain, StreamSpec, TuneSpec


def test_decorated_function_stays_callable_and_is_registered() -> None:
    app = Mesh("t")

    @app.function(tier="fog", retries=2, timeout_s=5, resources=Resources(cpus=0.5))
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    assert add(1) == 3
    spec = app.functions["add"].spec
    assert (spec.tier, spec.retries, spec.timeout_s, spec.resources.cpus) == ("fog", 2, 5.0, 0.5)
    assert spec.description == "Add two numbers."


def test_missing_parentheses_suggests_the_fix() -> None:
    app = Mesh("t")
    with pytest.raises(
        SpecError, match=r"Did you forget parentheses\? Suggestion: `@app.function\(\)`"
    ):

        @app.function  # type: ignore[misc]
        def f() -> None: ...

    for name in ("tune", "batch", "stream", "module"):
        with pytest.raises(SpecError, match=rf"`@app.{name}\(\)`"):
            getattr(app, name)(lambda config: None)


def test_unknown_tier_names_the_choices_and_a_close_match() -> None:
    app = Mesh("t")
    with pytest.raises(
        SpecError,
        match=r"tier: unknown tier 'clod': expected one of cloud, fog; did you mean 'cloud'\?",
    ):

        @app.function(tier="clod")
        def f() -> None: ...


def test_edge_tier_for_a_function_explains_agents() -> None:
    app = Mesh("t")
    with pytest.raises(SpecError, match="Edge devices are MQTT agents"):
        app.add_function(print, tier="edge")


def test_lambda_method_and_class_are_refused() -> None:
    app = Mesh("t")
    with pytest.raises(SpecError, match="cannot register a lambda"):
        app.add_function(lambda: 1)

    class Thing:
        def run(self) -> None: ...

    with pytest.raises(SpecError, match="cannot register the bound method"):
        app.add_function(Thing().run)
    with pytest.raises(SpecError, match=r"cannot register the method .*Thing.run"):
        app.add_function(Thing.run)
    with pytest.raises(SpecError, match="use @app.module"):
        app.add_function(Thing)
    with pytest.raises(SpecError, match="decorates a class"):
        app.add_module(print, model="m", qos=QoS(p95_latency_ms=5))  # type: ignore[arg-type]


def test_duplicate_names_are_refused_unless_renamed() -> None:
    app = Mesh("t")

    def f() -> None: ...

    app.add_function(f)
    with pytest.raises(SpecError, match="already registered"):
        app.add_function(f)
    assert app.add_function(f, name="f2").name == "f2"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries: Input should be greater than or equal to 0"),
        ({"timeout_s": 0}, "timeout_s: Input should be greater than 0"),
        (
            {"resources": "lots"},
            "resources: Input should be a valid dictionary or instance of Resources",
        ),
        ({"name": "bad name!"}, "invalid name 'bad name!'"),
        ({"site": "a/b"}, "invalid site 'a/b'"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], message: str) -> None:
    app = Mesh("t")

    def f() -> None: ...

    with pytest.raises(SpecError, match=message):
        app.add_function(f, **options)


def test_negative_resources_are_refused() -> None:
    with pytest.raises(ValueError, match="cpus"):
        Resources(cpus=0)


def test_tune_needs_metric_mode_and_one_config_argument() -> None:
    app = Mesh("t")
    with pytest.raises(SpecError, match="needs metric= and mode="):
        app.tune()
    with pytest.raises(SpecError, match="exactly one required argument"):

        @app.tune(metric="loss", mode="min")
        def two(a: int, b: int) -> None: ...

    @app.tune(
        metric="loss",
        mode="max",
        num_samples=3,
        search_space={"lr": app.loguniform(1e-4, 1e-2), "w": app.choice([16, 32]), "k": 3},
    )
    def fine(config: dict[str, Any]) -> None: ...

    spec = app.functions["fine"].spec
    assert isinstance(spec, TuneSpec)
    assert spec.search_space["lr"] == Domain(kind="loguniform", low=1e-4, high=1e-2)
    assert spec.search_space["k"] == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda app: app.loguniform(0, 1), "loguniform.*low > 0"),
        (lambda app: app.uniform(2, 1), "low < high"),
        (lambda app: app.choice([]), "non-empty"),
    ],
)
def test_bad_search_space(make: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make(Mesh("t"))


def test_tune_mode_must_be_min_or_max() -> None:
    app = Mesh("t")
    with pytest.raises(SpecError, match="mode"):
        app.add_tune(lambda_free, metric="x", mode="best")


def lambda_free(config: dict[str, Any]) -> None: ...


def test_batch_schedule_and_signature() -> None:
    app = Mesh("t")

    @app.batch(schedule="*/15 * * * *", input_format="parquet")
    def profiles(events: Any, top: int = 3) -> Any:
        return events

    spec = app.functions["profiles"].spec
    assert isinstance(spec, BatchSpec) and spec.schedule == "*/15 * * * *"
    with pytest.raises(SpecError, match="invalid cron schedule 'every hour'"):
        app.add_batch(profiles, name="p2", schedule="every hour")
    with pytest.raises(SpecError, match="exactly one required argument"):
        app.add_batch(lambda_two, name="p3")


def lambda_two(a: Any, b: Any) -> Any: ...


@pytest.mark.parametrize(
    "schedule", ["*/15 * * * *", "@hourly", "@Daily", "0 9 * * MON-FRI", "30 6 1,15 JAN-JUN 0-6"]
)
def test_batch_schedule_accepts_cron(schedule: str) -> None:
    spec = Mesh("t").add_batch(lambda_free, name="b", schedule=schedule).spec
    assert isinstance(spec, BatchSpec) and spec.schedule == schedule


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("99 99 99 99 99", r"minute field '99' is not valid; expected 0-59"),
        ("0 24 * * *", r"hour field '24' is not valid; expected 0-23"),
        (
            "0 0 31 2 *",
            r"day-of-month field '31' is not valid; expected 1-31 \(a day the months have\)",
        ),
        ("0 0 * 13 *", r"month field '13' is not valid; expected 1-12 or JAN-DEC"),
        ("0 9 * * MON-XYZ", r"day-of-week field 'MON-XYZ' is not valid; expected 0-7 or SUN-SAT"),
        ("0 0 * * * *", r"expected 5 fields .* got 6 fields"),
        ("@reboot", r"expected 5 fields .* or one of @yearly"),
    ],
)
def test_batch_schedule_refuses_bad_cron(schedule: str, message: str) -> None:
    with pytest.raises(
        SpecError, match=re.escape(f"invalid cron schedule {schedule!r}: ") + message
    ):
        Mesh("t").add_batch(lambda_free, name="b", schedule=schedule)


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("traffic/+/counts", True),
        ("traffic/#", True),
        ("a/b#", False),
        ("a/#/b", False),
        ("a/b+/c", False),
        ("", False),
    ],
)
def test_stream_topic_patterns(topic: str, ok: bool) -> None:
    app = Mesh("t")

    def plan(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return window

    if ok:
        spec = app.add_stream(plan, topic=topic).spec
        assert isinstance(spec, StreamSpec) and spec.tier == "fog"
    else:
        with pytest.raises(SpecError, match="invalid MQTT topic"):
            app.add_stream(plan, topic=topic)


def test_stream_output_topic_must_not_have_wildcards() -> None:
    app = Mesh("t")

    def plan(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return window

    with pytest.raises(SpecError, match="output_topic"):
        app.add_stream(plan, topic="a/+", output_topic="b/+")


def test_module_registration() -> None:
    app = Mesh("t")

    @app.module(
        model="vehicle-counter", qos=QoS(p95_latency_ms=20), tiers=["edge", "fog"], max_replicas=3
    )
    class VehicleCounter:
        """Counts vehicles."""

    spec = app.modules["VehicleCounter"].spec
    assert spec.tiers == ("edge", "fog") and spec.qos.p95_latency_ms == 20
    with pytest.raises(SpecError, match="min_replicas=4 is above max_replicas=1"):
        app.add_module(
            VehicleCounter, name="x", model="m", qos=QoS(p95_latency_ms=1), min_replicas=4
        )
    with pytest.raises(SpecError, match="unknown tier 'space'"):
        app.add_module(
            VehicleCounter, name="y", model="m", qos=QoS(p95_latency_ms=1), tiers=["space"]
        )


def test_apps_are_isolated() -> None:
    a, b = Mesh("a"), Mesh("b")

    @a.function()
    def f() -> None: ...

    assert "f" in a.functions and "f" not in b.functions
