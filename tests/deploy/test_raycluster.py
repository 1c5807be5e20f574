"""deploy/kuberay/raycluster.yaml: valid for KubeRay, and labelled as the code selects nodes."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from typing import Any

import pytest

from mesh.compute._backend import SITE_LABEL, TIER_LABEL, NodeInfo, check_satisfiable
from mesh.ray._remote import label_selector, matches_selector
from mesh.sdk._specs import COMPUTE_TIERS, FunctionSpec, Resources
from tests.deploy._manifests import (
    RAYCLUSTER,
    ROOT,
    find,
    groups,
    kubernetes_docs,
    load,
    mutated,
    raycluster_errors,
)


@pytest.fixture
def cluster() -> dict[str, Any]:
    (doc,) = load(RAYCLUSTER)
    return doc


def _worker(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for n, g in groups(cluster) if n == name)


def _container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_the_raycluster_is_valid(cluster: dict[str, Any]) -> None:
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert raycluster_errors(cluster) == []


def _put(path: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``key`` (taken whole: label keys have dots) in the object at ``path``."""

    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value

    return apply


BROKEN = {
    "replicas not an integer": (_put("spec.workerGroupSpecs.1", "replicas", "one"), "not of type"),
    "unknown auth mode": (_put("spec.authOptions", "mode", "tokens"), "is not one of"),
    "misspelt field": (_put("spec.headGroupSpec", "rayStartParam", {}), "unknown field"),
    "labels in rayStartParams": (
        _put("spec.workerGroupSpecs.1.rayStartParams", "labels", "mesh.tier=fog"),
        "rayStartParams['labels'] is not supported",
    ),
    "label value with a space": (
        _put("spec.workerGroupSpecs.1.labels", SITE_LABEL, "fog 0"),
        "invalid label value",
    ),
    "pod template typo": (
        _put("spec.headGroupSpec.template.spec.containers.0", "resource", {}),
        "PodTemplate",
    ),
    "token auth on an old Ray": (_put("spec", "rayVersion", "2.40.0"), "2.52.0 or later"),
    "a field the kept schema pruned": (_put("spec", "networkPolicy", {"enabled": True}), "refresh"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_raycluster_is_refused(cluster: dict[str, Any], case: str) -> None:
    breaks, expected = BROKEN[case]
    broken = mutated(cluster)
    breaks(broken)
    errors = raycluster_errors(broken)
    assert any(expected in e for e in errors), errors


def test_no_group_puts_labels_in_ray_start_params(cluster: dict[str, Any]) -> None:
    for name, group in groups(cluster):
        assert "labels" not in (group.get("rayStartParams") or {}), name
        assert group.get("labels"), f"{name}: node labels go in the top-level labels field"


def label_problems(cluster: dict[str, Any]) -> list[str]:
    """Where the groups' Ray labels differ from what the mesh selects nodes on."""
    problems = []
    head = dict(groups(cluster))["head"]
    if head.get("labels") != {TIER_LABEL: "cloud"}:
        problems.append(f"head: labels {head.get('labels')}, expected {TIER_LABEL}=cloud")
    for name, group in groups(cluster):
        labels = group.get("labels") or {}
        if set(labels) - {TIER_LABEL, SITE_LABEL}:
            problems.append(f"{name}: labels the mesh does not read: {sorted(labels)}")
        if labels.get(TIER_LABEL) not in COMPUTE_TIERS:
            problems.append(f"{name}: {TIER_LABEL}={labels.get(TIER_LABEL)!r}")
        if labels.get(TIER_LABEL) == "fog":
            site = labels.get(SITE_LABEL)
            if not site:
                problems.append(f"{name}: a fog group needs {SITE_LABEL}")
            node_selector = group["template"]["spec"].get("nodeSelector", {})
            if node_selector.get(SITE_LABEL) != site:
                problems.append(f"{name}: its pods must run on the {site} machines")
    return problems


def _nodes(cluster: dict[str, Any]) -> list[NodeInfo]:
    """The Ray nodes the groups start: their labels, and the resources KubeRay derives."""
    nodes = []
    for name, group in groups(cluster):
        limits = _container(group)["resources"]["limits"]
        resources = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        nodes.append(NodeInfo(name, True, dict(group["labels"]), resources, is_head=name == "head"))
    return nodes


def test_the_labels_are_what_the_code_selects_on(cluster: dict[str, Any]) -> None:
    assert label_problems(cluster) == []
    nodes = _nodes(cluster)
    fog_sites = [n.site for n in nodes if n.tier == "fog"]
    assert len(fog_sites) >= 2 and len(set(fog_sites)) == len(fog_sites)
    for site in fog_sites:
        spec = FunctionSpec(name="f", tier="fog", site=site)
        chosen = [n.node_id for n in nodes if matches_selector(n.labels, label_selector(spec))]
        assert chosen == [site]  # the fog groups are named after their sites
    cloud = FunctionSpec(name="train", tier="cloud")
    assert {n.node_id for n in nodes if matches_selector(n.labels, label_selector(cloud))} == {
        "head",
        "cloud-gpu",
    }
    gpu = FunctionSpec(name="train", tier="cloud", resources=Resources(cpus=1, gpus=1))
    assert check_satisfiable(gpu, nodes).node_id == "cloud-gpu"


@pytest.mark.parametrize(
    "labels",
    [
        {"mesh-tier": "fog", SITE_LABEL: "fog-0"},  # a key the code does not read
        {TIER_LABEL: "edge", SITE_LABEL: "fog-0"},  # not a compute tier
        {TIER_LABEL: "fog"},  # a fog node with no site
        {TIER_LABEL: "fog", SITE_LABEL: "fog-9"},  # not where its pods run
    ],
)
def test_wrong_labels_are_found(cluster: dict[str, Any], labels: dict[str, str]) -> None:
    broken = mutated(cluster)
    _worker(broken, "fog-0")["labels"] = labels
    assert label_problems(broken) != []


def _ray_pin() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [
        d for d in project["project"]["optional-dependencies"]["cloud"] if d.startswith("ray[")
    ]
    match = re.search(r"==\s*(\d+\.\d+)\.\*", pin)
    assert match, f"expected ray pinned as ==X.Y.*, got {pin!r}"
    return match[1]


def test_ray_version_and_images_match_the_control_plane(cluster: dict[str, Any]) -> None:
    assert cluster["spec"]["rayVersion"].startswith(_ray_pin() + ".")
    plane = find(kubernetes_docs(), "Deployment", "fogmesh-control-plane")
    image = _container({"template": plane["spec"]["template"]})["image"]
    for name, group in groups(cluster):
        # A driver must run the cluster's Ray and Python: the same image (or its GPU build).
        assert _container(group)["image"] in (image, image + "-gpu"), name


def test_token_auth_uses_the_secret_the_control_plane_reads(cluster: dict[str, Any]) -> None:
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    plane = find(kubernetes_docs(), "Deployment", "fogmesh-control-plane")
    secrets = {
        v["secret"]["secretName"]
        for v in plane["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert auth["secretName"] in secrets


def test_every_group_has_small_explicit_requests_and_limits(cluster: dict[str, Any]) -> None:
    for name, group in groups(cluster):
        resources = _container(group)["resources"]
        for key in ("cpu", "memory"):
            assert resources["requests"][key] == resources["limits"][key], (name, key)
        assert float(resources["limits"]["cpu"]) <= 4, name
