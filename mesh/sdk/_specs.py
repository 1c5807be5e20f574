"""Specs: what a decorator records about a function or module.

Specs are frozen pydantic models: they are built from user input (decorator
options, later scenario YAML) and must say exactly what was wrong. Every field
has a unit in its name where it has a unit.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "COMPUTE_TIERS",
    "TIERS",
    "BatchSpec",
    "Canary",
    "Domain",
    "Drift",
    "FunctionKind",
    "FunctionSpec",
    "ModuleSpec",
    "QoS",
    "Resources",
    "StreamSpec",
    "TuneSpec",
    "drift_topic",
]

#: Every tier of the mesh, cheapest last.
TIERS: tuple[str, ...] = ("cloud", "fog", "edge")
#: Tiers that are Ray nodes and so can run functions; edge devices are MQTT agents.
COMPUTE_TIERS: tuple[str, ...] = ("cloud", "fog")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?)?$")


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class FunctionKind(StrEnum):
    """What a registered function is run as."""

    FUNCTION = "function"
    TUNE = "tune"
    BATCH = "batch"
    STREAM = "stream"


class Resources(_Spec):
    """What one invocation (or one trial, one replica) reserves on its node.

    Small defaults on purpose: a laptop or a 2-core CI box runs several at once.

    Example:
        >>> Resources(cpus=0.5, gpus=0)
        Resources(cpus=0.5, gpus=0.0, memory_mb=None, custom={})
    """

    cpus: float = Field(
        0.25, gt=0, le=512, description="CPU cores reserved (fractional allowed, > 0)."
    )
    gpus: float = Field(0.0, ge=0, le=64, description="GPUs reserved (fractional allowed).")
    memory_mb: int | None = Field(
        None, gt=0, description="Memory reserved in MiB; None = not reserved."
    )
    custom: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray custom resources, name -> amount."
    )


class QoS(_Spec):
    """Quality of service a module must meet.

    Example:
        >>> QoS(p95_latency_ms=20)
        QoS(p95_latency_ms=20.0, min_throughput_rps=None)
    """

    p95_latency_ms: float = Field(
        gt=0, description="Target 95th-percentile latency in milliseconds."
    )
    min_throughput_rps: float | None = Field(
        None, gt=0, description="Requests per second the module must sustain; None = no target."
    )


class Domain(_Spec):
    """One dimension of a Tune search space (``app.loguniform(1e-4, 1e-2)``, ...)."""

    kind: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Domain:
        if self.kind in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.kind}() needs a non-empty list of values")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(
                    f"{self.kind}(low, high) needs low < high, got {self.low}, {self.high}"
                )
            if self.kind == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform(low, high) needs low > 0, got {self.low}")
        return self


def _check_tier(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        import difflib

        hint = difflib.get_close_matches(value, allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        edge_note = (
            " Edge devices are MQTT agents, not Ray nodes: only @app.module runs there."
            if value == "edge"
            else ""
        )
        raise ValueError(
            f"unknown tier {value!r}: expected one of {', '.join(allowed)}{suggestion}{edge_note}"
        )
    return value


class FunctionSpec(_Spec):
    """A function the mesh runs on a Ray node of its tier."""

    name: str = Field(description="Registered name; unique in the app.")
    kind: FunctionKind = Field(FunctionKind.FUNCTION, description="How the function is run.")
    tier: str = Field("cloud", description="Tier whose nodes run it: cloud or fog.")
    site: str | None = Field(None, description="Pin to nodes labelled with this mesh.site, if set.")
    resources: Resources = Field(default_factory=Resources, description="Reserved per invocation.")
    retries: int = Field(0, ge=0, le=20, description="Re-runs after an exception or a lost node.")
    timeout_s: float | None = Field(
        None, gt=0, description="Cancel an invocation after this many seconds; None = no limit."
    )
    description: str = Field("", description="First line of the docstring.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"invalid name {value!r}: use letters, digits, '_' or '-', starting with a letter"
            )
        return value

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        return _check_tier(value, COMPUTE_TIERS)

    @field_validator("site")
    @classmethod
    def _site(cls, value: str | None) -> str | None:
        if value is not None and (not value or not _LABEL_VALUE.match(value)):
            raise ValueError(
                f"invalid site {value!r}: a Ray label value (letters, digits, '-', '_', '.')"
            )
        return value


class TuneSpec(FunctionSpec):
    """A Ray Tune search over a trainable ``fn(config) -> None | dict``."""

    kind: FunctionKind = FunctionKind.TUNE
    metric: str = Field(description="Metric the trials report and the best is chosen by.")
    mode: Literal["min", "max"] = Field(description="Whether a lower or higher metric is better.")
    num_samples: int = Field(4, ge=1, le=10_000, description="Trials to run.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at once.")
    search_space: dict[str, Domain | Any] = Field(
        default_factory=dict, description="Parameter -> Domain (or a constant)."
    )
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="Trial scheduler.")
    max_iterations: int = Field(100, ge=1, description="ASHA's max_t, in reports.")


class BatchSpec(FunctionSpec):
    """A Ray Data transformation ``fn(dataset) -> dataset`` run over files."""

    kind: FunctionKind = FunctionKind.BATCH
    schedule: str | None = Field(
        None, description="Cron schedule: 5 fields or a nickname such as @hourly; None = on demand."
    )
    input_format: Literal["csv", "parquet"] = Field("csv", description="Format of the input files.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _check_cron(value)


# Vixie cron's nicknames; cronsim parses the five fields only. @reboot is no schedule.
_CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31 (a day the months have)"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
)


def _check_cron(value: str) -> str:
    """Validate a five-field cron schedule (or a nickname such as ``@hourly``) with cronsim.

    Raises:
        ValueError: naming the bad field and the values it takes.
    """
    fields = _CRON_NICKNAMES.get(value.strip().lower(), value).split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron schedule {value!r}: expected 5 fields "
            "'minute hour day-of-month month day-of-week' (e.g. '*/15 * * * *') "
            f"or one of {', '.join(_CRON_NICKNAMES)}; got {len(fields)} fields"
        )
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        # cronsim says "Bad <field>"; name the field's text and what it takes.
        for (name, expected), text in zip(_CRON_FIELDS, fields, strict=True):
            if name in str(exc).lower():
                raise ValueError(
                    f"invalid cron schedule {value!r}: {name} field {text!r} is not valid; "
                    f"expected {expected}, '*', a list 'a,b', a range 'a-b' or a step '*/n'"
                ) from exc
        raise ValueError(f"invalid cron schedule {value!r}: {exc}") from exc
    return value


def _check_topic(value: str, *, pattern: bool) -> str:
    if not value or len(value) > 1024 or "\x00" in value:
        raise ValueError(f"invalid MQTT topic {value!r}")
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1 or not pattern):
            raise ValueError(f"invalid MQTT topic {value!r}: '#' only as the whole last level")
        if "+" in level and (level != "+" or not pattern):
            raise ValueError(f"invalid MQTT topic {value!r}: '+' only as a whole level")
    return value


class StreamSpec(FunctionSpec):
    """A function fed windows of messages from an MQTT topic pattern."""

    kind: FunctionKind = FunctionKind.STREAM
    topic: str = Field(description="MQTT topic pattern to consume, e.g. 'traffic/+/counts'.")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds.")
    output_topic: str | None = Field(
        None, description="Topic to publish each output dict to; None = outputs are only returned."
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _check_topic(value, pattern=True)

    @field_validator("output_topic")
    @classmethod
    def _output_topic(cls, value: str | None) -> str | None:
        return None if value is None else _check_topic(value, pattern=False)


#: What a drift check watches.
DriftStatistic = Literal["outputs", "inputs", "error"]


def drift_topic(module: str) -> str:
    """The MQTT topic of a module's drift events, as is (not under the broker's prefix)."""
    return f"lifecycle/drift/{module}"


class Drift(_Spec):
    """A module's drift check.

    The score per site is, for ``outputs`` and ``inputs``, how far the window's
    mean (of each inference's output, or input, values) moved from the
    reference's, in reference standard deviations; for ``error``, the window's
    mean absolute error against the labels that arrive on ``labels`` divided by
    the reference's (the validation error at registration). Drift is declared
    when a site's score reaches ``threshold`` over a window holding at least
    ``min_samples``. No event fires while a candidate of the model is under
    trial (its canary answers the drift), nor after ``max_rollbacks``
    candidates were rolled back since production was promoted.
    """

    statistic: DriftStatistic = Field(
        description="outputs | inputs (their distribution) | error (against labels)."
    )
    threshold: float = Field(gt=0, description="The score at which drift is declared.")
    window_s: float = Field(60.0, gt=0, description="The sliding window the score is over.")
    min_samples: int = Field(20, ge=1, description="Fewer samples in the window: no score.")
    labels: str | None = Field(
        None,
        description=(
            "With statistic=error: the MQTT topic ('{site}' for the site) where the "
            "ground truth of a sample arrives, later than the sample."
        ),
    )
    output: str | None = Field(None, description="The output tensor watched (default: the first).")
    max_rollbacks: int = Field(
        2,
        ge=1,
        description=(
            "Once this many candidates newer than production were rolled back, drift "
            "events stop (the scores go on) until a version is promoted: retraining "
            "is retried a bounded number of times, then left to a person."
        ),
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_topic(value.replace("{site}", "site"), pattern=False)
        return value

    @model_validator(mode="after")
    def _error_needs_labels(self) -> Drift:
        if self.statistic == "error" and self.labels is None:
            raise ValueError(
                "statistic='error' needs labels=: the topic where ground truth arrives, "
                "e.g. labels='traffic/{site}/truth'"
            )
        return self


class Canary(_Spec):
    """How a candidate version is tried before it replaces production.

    The candidate serves on ``fraction`` of the module's sites (at least one)
    beside production elsewhere; after ``window_s`` with at least
    ``min_samples`` on each side, it is promoted fleet-wide when its live error
    is at most production's times ``(1 - error_margin)`` and its p95 at most
    production's times ``p95_ratio``; otherwise it is rolled back.
    """

    fraction: float = Field(0.25, gt=0, le=1, description="Share of sites that try it.")
    window_s: float = Field(60.0, gt=0, description="How long both serve before the decision.")
    min_samples: int = Field(30, ge=1, description="Scored samples each side needs.")
    error_margin: float = Field(
        0.0, ge=0, lt=1, description="How much lower its error must be (0: not higher)."
    )
    p95_ratio: float = Field(
        1.5, ge=1, description="Its p95 may be at most this times production's."
    )
    p95_slack_ms: float = Field(
        5.0,
        ge=0,
        description="...or at most this many ms above it, whichever is more (a small "
        "model's p95 of a few ms on a busy device is noisy).",
    )
    max_wait_s: float = Field(
        600.0, gt=0, description="Without enough samples by then, it is rolled back."
    )

    @model_validator(mode="after")
    def _wait(self) -> Canary:
        if self.max_wait_s < self.window_s:
            raise ValueError(f"max_wait_s={self.max_wait_s} is below window_s={self.window_s}")
        return self


class ModuleSpec(_Spec):
    """An inference module: a model served where the placement engine puts it."""

    name: str = Field(description="Registered name of the module.")
    model: str = Field(description="Name of the model in the registry.")
    qos: QoS = Field(description="Latency/throughput target.")
    tiers: tuple[str, ...] = Field(("edge", "fog", "cloud"), description="Tiers it may run on.")
    resources: Resources = Field(default_factory=Resources, description="Per replica.")
    min_replicas: int = Field(1, ge=0, description="0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Upper bound of replicas per placement.")
    target_in_flight: Annotated[float, Field(gt=0)] = Field(
        2.0, description="Autoscaling target of in-flight requests per replica."
    )
    description: str = Field("", description="First line of the docstring.")
    drift: Drift | None = Field(None, description="Its drift check, if any.")
    canary: Canary | None = Field(None, description="How a candidate version is tried, if at all.")

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("tiers must name at least one of cloud, fog, edge")
        for tier in value:
            _check_tier(tier, TIERS)
        return value

    @model_validator(mode="after")
    def _replicas(self) -> ModuleSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} is above max_replicas={self.max_replicas}"
            )
        return self
