"""deploy/kubernetes/: valid Kubernetes objects, wired to each other and to the mesh's settings."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from mesh.runtime._control_plane import ControlPlaneSettings
from tests.deploy._manifests import (
    DEPLOY,
    KUBERNETES,
    NAMESPACE,
    RAYCLUSTER,
    ROOT,
    find,
    kubernetes_docs,
    kubernetes_errors,
    load,
    mutated,
)

DOCS = kubernetes_docs()


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_every_object_is_valid(doc: dict[str, Any]) -> None:
    assert kubernetes_errors(doc) == []


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("Deployment", "fogmesh-control-plane", "spec.template.spec.containers.0", "port"),
        ("Service", "fogmesh-gateway", "spec.ports.0.port", "http"),
        ("Deployment", "fogmesh-mosquitto", "spec.replicas", "1"),
        ("PersistentVolumeClaim", "fogmesh-data", "spec.accessModes", "ReadWriteOnce"),
    ],
)
def test_a_broken_object_is_refused(kind: str, name: str, path: str, value: str) -> None:
    doc = mutated(find(DOCS, kind, name))
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if isinstance(node, dict) and last not in node:
        node[last] = {}  # an unknown field
    else:
        node[int(last) if last.isdigit() else last] = value  # a value of the wrong type
    assert kubernetes_errors(doc) != []


def test_everything_is_in_the_namespace_and_no_secret_is_committed() -> None:
    assert find(DOCS, "Namespace", NAMESPACE)
    for doc in [*DOCS, *load(RAYCLUSTER)]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, _id(doc)
        assert doc["kind"] != "Secret", f"{_id(doc)}: create Secrets, never commit them"
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(errors="replace"), path


def _pod(name: str) -> dict[str, Any]:
    return find(DOCS, "Deployment", name)["spec"]["template"]


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def env_problems(pod: dict[str, Any]) -> list[str]:
    """Where the control plane's environment differs from what the mesh reads."""
    env = _env(pod)
    fields = set(ControlPlaneSettings.model_fields)
    problems = [
        f"{name}: no ControlPlaneSettings field {name[5:].lower()!r}"
        for name in env
        if name.startswith("MESH_") and name[5:].lower() not in fields
    ]
    plain = {
        k[5:].lower(): v for k, v in env.items() if k.startswith("MESH_") and isinstance(v, str)
    }
    try:
        settings = ControlPlaneSettings(**plain)
    except ValueError as exc:
        return [*problems, f"the settings do not parse: {exc}"]
    if settings.gateway_host != "0.0.0.0":
        problems.append("MESH_GATEWAY_HOST must be 0.0.0.0: the Service reaches the pod's address")
    if not settings.broker_explicit:
        problems.append("MESH_BROKER_URL unset: the control plane would embed a loopback broker")
    if settings.ray_address is None:
        problems.append("MESH_RAY_ADDRESS unset: the control plane would embed a Ray cluster")
    for name in ("MESH_MQTT_USERNAME", "MESH_MQTT_PASSWORD"):
        if not isinstance(env.get(name), dict) or "secretKeyRef" not in env[name]:
            problems.append(f"{name} must come from a Secret")
    return problems


def test_the_control_plane_environment_is_what_the_mesh_reads() -> None:
    assert env_problems(_pod("fogmesh-control-plane")) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MESH_GATEWAY_HOSTS", "0.0.0.0"),  # a name no setting has
        ("MESH_GATEWAY_HOST", "127.0.0.1"),  # unreachable from the Service
        ("MESH_GATEWAY_PORT", "http"),  # not a port
        ("MESH_MQTT_PASSWORD", "hunter2"),  # a password in the manifest
    ],
)
def test_a_wrong_environment_is_found(name: str, value: str) -> None:
    pod = mutated(_pod("fogmesh-control-plane"))
    env = pod["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]
    assert env_problems(pod) != []


def _mounts(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (container,) = pod["spec"]["containers"]
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def test_the_control_plane_reaches_ray_the_broker_and_its_data() -> None:
    pod = _pod("fogmesh-control-plane")
    env = _env(pod)
    (cluster,) = load(RAYCLUSTER)
    host, _, port = env["MESH_RAY_ADDRESS"].rpartition(":")
    # KubeRay names the head's Service <cluster>-head-svc; the GCS listens on 6379.
    assert host.split(".")[:2] == [f"{cluster['metadata']['name']}-head-svc", NAMESPACE]
    head_ports = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "gcs-server", "containerPort": int(port)} in head_ports
    broker = urlsplit(env["MESH_BROKER_URL"])
    service = find(DOCS, "Service", broker.hostname.split(".")[0])
    assert service["spec"]["type"] == "ClusterIP"
    assert broker.port in [p["port"] for p in service["spec"]["ports"]]
    mounts = _mounts(pod)
    claim = mounts[env["MESH_DATA_DIR"]]["persistentVolumeClaim"]["claimName"]
    assert find(DOCS, "PersistentVolumeClaim", claim)
    token = PurePosixPath(env["MESH_RAY_TOKEN_FILE"])
    assert env["RAY_AUTH_TOKEN_PATH"] == str(token) and env["RAY_AUTH_MODE"] == "token"
    assert token.name == "auth_token" and "secret" in mounts[str(token.parent)]
    (container,) = pod["spec"]["containers"]
    assert "python -m mesh.runtime" in " ".join(container["args"])
    assert (ROOT / "mesh" / "runtime" / "__main__.py").is_file()


@pytest.mark.parametrize("service", [d for d in DOCS if d["kind"] == "Service"], ids=_id)
def test_every_service_selects_a_pod_and_names_its_ports(service: dict[str, Any]) -> None:
    pods = [
        d["spec"]["template"]
        for d in DOCS
        if d["kind"] == "Deployment"
        and service["spec"]["selector"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(pods) == 1, "a Service selects exactly one Deployment's pods"
    ports = {p["name"]: p["containerPort"] for p in pods[0]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, port


def _conf(text: str) -> list[tuple[str, str]]:
    lines = (line.strip() for line in text.splitlines())
    return [
        (key, value.strip())
        for key, _, value in (
            line.partition(" ") for line in lines if line and not line.startswith("#")
        )
    ]


#: deploy/mosquitto.conf's settings the container's configuration keeps as they are.
KEPT = (
    "set_tcp_nodelay",
    "per_listener_settings",
    "allow_anonymous",
    "persistence",
    "autosave_on_changes",
    "autosave_interval",
    "persistent_client_expiration",
    "message_size_limit",
    "max_inflight_messages",
    "max_queued_messages",
    "max_keepalive",
)


def _listeners(conf: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Each ``listener`` with the options that follow it (``port`` is its argument)."""
    listeners: list[dict[str, str]] = []
    for key, value in conf:
        if key == "listener":
            listeners.append({"port": value})
        elif listeners:
            listeners[-1][key] = value
    return listeners


def mosquitto_problems(conf_map: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """Where the Mosquitto ConfigMap strays from deploy/mosquitto.conf or from its pod."""
    reference = dict(_conf((DEPLOY / "mosquitto.conf").read_text()))
    conf = _conf(conf_map["data"]["mosquitto.conf"])
    settings = dict(conf)
    problems = [
        f"{key}: {settings.get(key)!r}, deploy/mosquitto.conf says {reference[key]!r}"
        for key in KEPT
        if settings.get(key) != reference[key]
    ]
    mounts = _mounts(pod)
    for key in ("password_file", "acl_file", "certfile", "keyfile"):
        path = PurePosixPath(settings.get(key, "/missing"))
        volume = mounts.get(str(path.parent), {})
        if "secret" not in volume:
            problems.append(f"{key} {path}: not in a mounted Secret")
    # The devices' listener has TLS and username client ids.
    listeners = _listeners(conf)
    container_ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    tls = [li for li in listeners if "certfile" in li]
    if not tls or any(li.get("use_username_as_clientid") != "true" for li in tls):
        problems.append("devices need a TLS listener with use_username_as_clientid true")
    for listener in listeners:
        if int(listener["port"].split()[0]) not in container_ports:
            problems.append(f"listener {listener['port']}: not a container port")
    return problems


def test_mosquitto_keeps_the_production_settings() -> None:
    conf_map = find(DOCS, "ConfigMap", "fogmesh-mosquitto")
    assert mosquitto_problems(conf_map, _pod("fogmesh-mosquitto")) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("set_tcp_nodelay true", ""),
        ("autosave_on_changes false", ""),
        ("allow_anonymous false", "allow_anonymous true"),
        ("use_username_as_clientid true", ""),
        ("acl_file /mosquitto/auth/acl", "acl_file /mosquitto/config/acl"),
        ("listener 1884", "listener 1885"),
    ],
)
def test_a_stray_mosquitto_configuration_is_found(old: str, new: str) -> None:
    conf_map = mutated(find(DOCS, "ConfigMap", "fogmesh-mosquitto"))
    text = conf_map["data"]["mosquitto.conf"]
    assert old in text
    conf_map["data"]["mosquitto.conf"] = text.replace(old, new)
    assert mosquitto_problems(conf_map, _pod("fogmesh-mosquitto")) != []


def test_the_chaos_suites_mosquitto_saves_as_the_production_file_does() -> None:
    from tests.support.chaos_mosquitto import AUTOSAVE

    reference = dict(_conf((DEPLOY / "mosquitto.conf").read_text()))
    assert dict(line.split(" ", 1) for line in AUTOSAVE) == {
        key: reference[key] for key in ("autosave_on_changes", "autosave_interval")
    }


def test_only_the_tls_listener_leaves_the_cluster() -> None:
    conf = _conf(find(DOCS, "ConfigMap", "fogmesh-mosquitto")["data"]["mosquitto.conf"])
    listeners = _listeners(conf)
    ports = [int(li["port"].split()[0]) for li in listeners]
    (tls_port,) = [int(li["port"].split()[0]) for li in listeners if "certfile" in li]
    for service in (d for d in DOCS if d["kind"] == "Service"):
        if service["spec"].get("type") == "LoadBalancer":
            exposed = {p["port"] for p in service["spec"]["ports"]}
            assert exposed.isdisjoint(set(ports) - {tls_port}), _id(service)
    policy = find(DOCS, "NetworkPolicy", "fogmesh-mosquitto")
    open_ports = [
        p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]
    ]
    assert open_ports == [tls_port]


def test_kubectl_applies_the_namespace_first() -> None:
    # `kubectl apply -f deploy/kubernetes/` takes the files in name order.
    assert [d["kind"] for d in load(KUBERNETES[0])] == ["Namespace"]
