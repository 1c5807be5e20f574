"""README "Deploying on Kubernetes": its commands name real files and create the Secrets
the manifests read, with the keys they read, and nothing else."""

from __future__ import annotations

from itertools import pairwise
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.deploy._manifests import RAYCLUSTER, ROOT, kubernetes_docs, load
from tests.support.docs import Block, blocks_for

#: The key KubeRay reads the token from in authOptions.secretName's Secret.
KUBERAY_TOKEN_KEY = "auth_token"


def _secret_mounts(pod: dict[str, Any]) -> dict[str, str]:
    """Mount directory -> Secret name, for the pod's Secret volumes."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
    }
    return {
        m["mountPath"]: secrets[m["name"]]
        for c in pod["spec"]["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] in secrets
    }


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return node.split() if isinstance(node, str) else []


def used_secrets() -> set[tuple[str, str]]:
    """``(Secret, key)`` the manifests read: env references, KubeRay's token, and the files
    of a mounted Secret that the pod's environment or the ConfigMaps name."""
    docs = [*kubernetes_docs(), *load(RAYCLUSTER)]
    used: set[tuple[str, str]] = set()
    words = [w for d in docs if d["kind"] == "ConfigMap" for w in _strings(d["data"])]
    for doc in docs:
        if doc["kind"] == "RayCluster":
            used.add((doc["spec"]["authOptions"]["secretName"], KUBERAY_TOKEN_KEY))
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]
        for container in pod["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
        mounts = _secret_mounts(pod)
        for word in [*words, *_strings(pod)]:
            path = PurePosixPath(word)
            if str(path.parent) in mounts:
                used.add((mounts[str(path.parent)], path.name))
    return used


def created_secrets(blocks: list[Block]) -> set[tuple[str, str]]:
    """``(Secret, key)`` that the blocks' ``kubectl create secret`` commands make."""
    created: set[tuple[str, str]] = set()
    for block in blocks:
        for words in block.commands():
            if words[:1] != ["kubectl"] or "secret" not in words:
                continue
            kind, name = words[words.index("secret") + 1 : words.index("secret") + 3]
            if kind == "tls":
                created |= {(name, "tls.crt"), (name, "tls.key")}
            for word in words:
                for flag in ("--from-literal=", "--from-file="):
                    if word.startswith(flag):
                        value = word.removeprefix(flag)
                        key = value.split("=", 1)[0] if "=" in value else PurePosixPath(value).name
                        created.add((name, key))
    return created


def path_problems(blocks: list[Block]) -> list[str]:
    """Files the commands take with ``-f`` (kubectl apply, docker build) that are missing."""
    return [
        f"{block.where}: no {path}"
        for block in blocks
        for words in block.commands()
        for flag, path in pairwise(words)
        if flag == "-f" and path != "-" and not (ROOT / path).exists()
    ]


def test_the_commands_create_what_the_manifests_use(request: pytest.FixtureRequest) -> None:
    blocks = blocks_for(request.node.nodeid)
    assert path_problems(blocks) == []
    assert created_secrets(blocks) == used_secrets()
    applied = [w[-1] for b in blocks for w in b.commands() if w[:3] == ["kubectl", "apply", "-f"]]
    assert applied[0] == "deploy/kubernetes/00-namespace.yaml"
    assert {"deploy/kubernetes/", "deploy/kuberay/raycluster.yaml"} <= set(applied)


def test_a_missing_or_wrong_secret_is_found() -> None:
    used = used_secrets()
    assert ("fogmesh-mqtt-auth", "passwd") in used and ("fogmesh-mqtt-tls", "tls.key") in used
    code = (
        "kubectl -n fogmesh create secret generic fogmesh-ray-token --from-literal=token=x\n"
        "kubectl -n fogmesh create secret generic fogmesh-mqtt-auth --from-file=passwd\n"
        "kubectl apply -f deploy/kubernetes/01-nope.yaml\n"
    )
    block = Block("README.md", 1, "bash", code, (), None)
    created = created_secrets([block])
    assert ("fogmesh-ray-token", "token") in created - used  # KubeRay reads auth_token
    assert ("fogmesh-mqtt-auth", "acl") in used - created
    assert path_problems([block]) == ["README.md:1: no deploy/kubernetes/01-nope.yaml"]
