"""The scenario schema's building blocks: name patterns, field types, topic checks.

Shared by the node, module and scenario models; ``PATTERN_TEXT`` says what each
pattern means, for the loader's "expected ..." messages.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
)

from mesh.sdk._specs import _check_topic

__all__ = [
    "CPU_PROVIDER",
    "GPU_PROVIDERS",
    "PATTERN_TEXT",
    "REF_PATTERN",
    "ComputeTier",
    "Ident",
    "Name",
    "Provider",
    "Ref",
    "SchemaModel",
    "Tier",
    "Topic",
    "TopicPattern",
    "TopicTemplate",
    "all_tiers",
    "exactly_one",
]

CPU_PROVIDER = "CPUExecutionProvider"
#: ONNX Runtime providers that need a GPU: on a Ray node they need ``gpus > 0``.
GPU_PROVIDERS: frozenset[str] = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}
)

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
REF_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
PROVIDER_PATTERN = r"^[A-Za-z][A-Za-z0-9]*ExecutionProvider$"
REGISTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,62}(@[0-9]+)?$"
URL_PATTERN = r"^mqtts?://[^/\s:]+(:[0-9]{1,5})?$"

#: What each pattern means, for error messages ("expected ...").
PATTERN_TEXT: dict[str, str] = {
    NAME_PATTERN: "a name of letters, digits, '_' or '-' starting with a letter or '_'",
    ID_PATTERN: "an id of letters, digits, '_', '.' or '-'",
    REF_PATTERN: "a reference 'package.module:name'",
    PROVIDER_PATTERN: "an ONNX Runtime provider such as 'CPUExecutionProvider'",
    REGISTRY_PATTERN: "a registered model 'name' or 'name@version'",
    URL_PATTERN: "a broker URL 'mqtt://host:port'",
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Ref = Annotated[str, StringConstraints(pattern=REF_PATTERN)]
Provider = Annotated[str, StringConstraints(pattern=PROVIDER_PATTERN)]
Tier = Literal["cloud", "fog", "edge"]
ComputeTier = Literal["cloud", "fog"]


def _topic_pattern(value: str) -> str:
    try:
        return _check_topic(value, pattern=True)
    except ValueError:
        raise ValueError(
            "expected an MQTT topic pattern ('+' and '#' only as whole levels, '#' last), "
            f"got {value!r}"
        ) from None


def _topic(value: str) -> str:
    try:
        return _check_topic(value, pattern=False)
    except ValueError:
        raise ValueError(f"expected an MQTT topic without '+' or '#', got {value!r}") from None


def _topic_template(value: str) -> str:
    try:
        _check_topic(value.replace("{site}", "site"), pattern=False)
    except ValueError:
        raise ValueError(
            f"expected an MQTT topic without '+' or '#' ('{{site}}' allowed), got {value!r}"
        ) from None
    return value


TopicPattern = Annotated[str, AfterValidator(_topic_pattern)]
Topic = Annotated[str, AfterValidator(_topic)]
TopicTemplate = Annotated[str, AfterValidator(_topic_template)]


def exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    """Raise unless exactly one of ``fields`` is set on ``model``."""
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(fields)
        got = ", ".join(given) if given else "none"
        raise ValueError(f"expected exactly one of {names} for {what}, got {got}")


def all_tiers() -> list[Tier]:
    """Every tier, edge first (a module's default)."""
    return ["edge", "fog", "cloud"]


class SchemaModel(BaseModel):
    """A scenario model: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
