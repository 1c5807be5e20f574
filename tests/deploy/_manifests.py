"""Reading deploy/: the manifests, their validation, and the Dockerfiles' instructions."""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
CRD_SCHEMA = Path(__file__).parent / "data" / "kuberay-v1.7.0-raycluster-schema.yaml"
#: The oldest Kubernetes the manifests are checked against (a supported release, 2024-08).
KUBERNETES_VERSION = "1.31"
NAMESPACE = "fogmesh"


def load(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of ``path`` (empty ones skipped)."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def kubernetes_docs() -> list[dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes/."""
    return [doc for path in KUBERNETES for doc in load(path)]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object ``kind``/``name`` among ``docs``."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def mutated(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``doc``, to break in a test."""
    return copy.deepcopy(doc)


def kubernetes_errors(doc: dict[str, Any]) -> list[str]:
    """What the Kubernetes schema (strict: no unknown fields) says is wrong with ``doc``."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"{doc['kind']} {doc['metadata'].get('name')}: {where}: {exc.message}"]
    return []


# ------------------------------------------------------------------------- RayCluster


def crd_schema() -> dict[str, Any]:
    """The RayCluster openAPIV3Schema kept as test data."""
    schema = load(CRD_SCHEMA)[0]
    assert isinstance(schema, dict)
    return schema


def _unknown_fields(doc: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Fields of ``doc`` its structural schema does not declare (the API server drops them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(doc, dict) and "properties" in schema:
        props = schema["properties"]
        for key, value in doc.items():
            if key not in props:
                yield f"{path}/{key}: unknown field"
            else:
                yield from _unknown_fields(value, props[key], f"{path}/{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(doc):
            yield from _unknown_fields(item, schema["items"], f"{path}/{i}")


def _pruned_fields(doc: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Fields set in ``doc`` whose schema the test data pruned (other than pod templates)."""
    if schema.get("x-fogmesh-pruned"):
        if not path.endswith("/template"):
            yield f"{path}: the kept CRD schema pruned this field; refresh {CRD_SCHEMA.name}"
        return
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            if key in schema["properties"]:
                yield from _pruned_fields(value, schema["properties"][key], f"{path}/{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(doc):
            yield from _pruned_fields(item, schema["items"], f"{path}/{i}")


def groups(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, group)`` for the head group (``head``) and each worker group."""
    spec = cluster["spec"]
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])
    ]


# What KubeRay v1.7.0's operator refuses besides the schema
# (ray-operator/controllers/ray/utils/validation.go: validateRayGroupLabels,
# validateRayGroupResources, the authOptions checks of ValidateRayClusterSpec).
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def operator_errors(cluster: dict[str, Any]) -> list[str]:
    """What KubeRay's operator would refuse in ``cluster`` that its schema lets through."""
    errors: list[str] = []
    for name, group in groups(cluster):
        params = group.get("rayStartParams") or {}
        if "labels" in params:
            errors.append(
                f"{name}: rayStartParams['labels'] is not supported; "
                "use the group's top-level labels field"
            )
        for key, value in (group.get("labels") or {}).items():
            if not _label_key_ok(key):
                errors.append(f"{name}: invalid label key {key!r}")
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                errors.append(f"{name}: invalid label value {value!r} for {key!r}")
        if any(params.get(p) for p in _RESOURCE_PARAMS) and group.get("resources"):
            errors.append(f"{name}: resources in both rayStartParams and resources")
    auth = cluster["spec"].get("authOptions") or {}
    if auth and auth.get("mode", "token") == "token":
        numbers = re.findall(r"\d+", cluster["spec"].get("rayVersion", ""))[:3]
        if tuple(int(n) for n in numbers) < (2, 52, 0):
            errors.append("authOptions.mode is 'token': rayVersion 2.52.0 or later is required")
    return errors


def raycluster_errors(cluster: dict[str, Any]) -> list[str]:
    """Everything wrong with ``cluster``: CRD schema, unknown and pruned fields, the
    operator's own checks, and each group's pod template as a Kubernetes PodTemplate."""
    schema = crd_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(cluster)
    ]
    errors += _unknown_fields(cluster, schema, "")
    errors += _pruned_fields(cluster, schema, "")
    errors += operator_errors(cluster)
    for name, group in groups(cluster):
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{cluster['metadata']['name']}-{name}"},
            "template": group.get("template", {}),
        }
        errors += kubernetes_errors(template)
    return errors


# ------------------------------------------------------------------------ Dockerfiles


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its argument text."""

    keyword: str
    argument: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, continuation lines joined)."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, argument = line.partition(" ")
        out.append(Instruction(keyword.upper(), argument.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each build stage; stage 0 holds what comes before the first FROM."""
    out: list[list[Instruction]] = [[]]
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ``ARG``s declared before the first ``FROM`` (usable in ``FROM``)."""
    args: dict[str, str] = {}
    for ins in stages(instructions)[0]:
        if ins.keyword == "ARG":
            name, _, default = ins.argument.partition("=")
            args[name] = default
    return args


def from_images(instructions: list[Instruction]) -> list[tuple[str, str | None]]:
    """``(image, stage alias)`` of each ``FROM``, with the ``ARG`` defaults substituted."""
    args = build_args(instructions)
    out: list[tuple[str, str | None]] = []
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.argument.split() if not w.startswith("--")]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
        alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        out.append((image, alias))
    return out


def exec_form(argument: str) -> list[str]:
    """The words of a ``CMD``/``ENTRYPOINT`` (exec form as JSON, shell form split)."""
    if argument.startswith("["):
        words = yaml.safe_load(argument)
        assert isinstance(words, list)
        return [str(w) for w in words]
    return shlex.split(argument)
