"""Kubernetes manifests for ruleless from one values file (issue 18): no Helm needed.

    python -m deploy.render --values deploy/values.toml [--values mine.toml] > ruleless.json
    kubectl apply -f ruleless.json

Renders a Namespace, a ConfigMap (``ruleless.toml``: ``values.settings`` in the one
settings format), a Secret (``values.secrets``: RULELESS_* variables), the agent's
DaemonSet, the worker's Deployment and LanceDB volume, the sink's Deployment (its
behaviour indexer writes to LanceDB too) and the API's (with a volume for its token
store), as one ``v1/List`` in JSON (kubectl reads it as it reads YAML). Values are TOML so rendering
needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_VALUES = Path(__file__).with_name("values.toml")
CONFIG_DIR = "/etc/ruleless"
CONFIG_FILE = f"{CONFIG_DIR}/ruleless.toml"
# Metrics (and /healthz, /readyz) ports: the settings' defaults (ruleless/settings.py).
PORTS = {"worker": 9464, "sink": 9465, "agent": 9466, "api": 9468}
# What the agent's backends need in a container (README "Install on a fleet"): eBPF
# (BPF, PERFMON; SYS_ADMIN for kernels before 5.8 and BCC's tracefs access), the proc
# connector (NET_ADMIN), real-time netlink readers (SYS_NICE), reading other processes'
# /proc entries (SYS_PTRACE, DAC_READ_SEARCH). Everything else is dropped.
AGENT_CAPABILITIES = ["BPF", "PERFMON", "SYS_ADMIN", "NET_ADMIN", "SYS_NICE", "SYS_PTRACE", "DAC_READ_SEARCH"]


def load_values(paths: list[Path]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in paths:
        values = merge(values, tomllib.loads(path.read_text()))
    return values


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object, in apply order. Raises ValueError for values that cannot work."""
    partitions = values["settings"].get("topics", {}).get("partitions", 8)
    if values["worker"]["replicas"] > partitions:
        raise ValueError(f"worker.replicas {values['worker']['replicas']} > topics.partitions {partitions}: "
                         "the extra workers would own no partition")  # fmt: skip
    ns = values["namespace"]
    lancedb_mount = volume_mount("lancedb", "/data/lancedb")
    lancedb_volume = {"name": "lancedb", "persistentVolumeClaim": {"claimName": "ruleless-lancedb"}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("ruleless-config", ns),
         "data": {"ruleless.toml": to_toml(values["settings"])}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("ruleless-secrets", ns), "type": "Opaque",
         "stringData": {k: str(v) for k, v in values.get("secrets", {}).items()}},
        lancedb_claim(values),
        agent_daemonset(values),
        api_tokens_claim(values),
        deployment(values, "worker", [lancedb_mount], [lancedb_volume]),
        deployment(values, "sink", [lancedb_mount], [lancedb_volume]),
        deployment(values, "api", [lancedb_mount, volume_mount("tokens", API_TOKENS_DIR)],
                   [lancedb_volume, {"name": "tokens", "persistentVolumeClaim": {"claimName": "ruleless-api-tokens"}}]),
    ]  # fmt: skip


def meta(name: str, ns: str, component: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "ruleless", **({"app.kubernetes.io/component": component} if component else {})}
    return {"name": name, "namespace": ns, "labels": labels}


def selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ruleless", "app.kubernetes.io/component": component}


def volume_mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def container(values: dict[str, Any], role: str, image: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    port = PORTS[role]
    return {
        "name": role,
        "image": image,
        "args": [role, "--config", CONFIG_FILE],
        "envFrom": [{"secretRef": {"name": "ruleless-secrets"}}],
        "ports": [{"name": "metrics", "containerPort": port}],
        # /healthz: the process itself (never Kafka or the store: an outage of those must
        # not restart every replica); /readyz: consuming or capturing right now.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "initialDelaySeconds": 30,
                          "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5, "failureThreshold": 3},
        "resources": values[role]["resources"],
        "volumeMounts": [volume_mount("config", CONFIG_DIR, True), volume_mount("state", "/var/lib/ruleless"),
                         volume_mount("tmp", "/tmp"), *mounts],
    }  # fmt: skip


def base_volumes() -> list[dict[str, Any]]:
    return [{"name": "config", "configMap": {"name": "ruleless-config"}}, {"name": "state", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}}]


def deployment(values: dict[str, Any], role: str, mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    app = container(values, role, values["image"], mounts)
    app["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65534, "allowPrivilegeEscalation": False,
                              "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(f"ruleless-{role}", values["namespace"], role),
        "spec": {
            "replicas": values[role]["replicas"],
            "selector": {"matchLabels": selector(role)},
            # One at a time: a stopping worker flushes, its successor skips what it stored.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "template": {
                "metadata": {"labels": selector(role)},
                "spec": {"containers": [app], "volumes": [*base_volumes(), *volumes],
                         "securityContext": {"fsGroup": 65534}, "terminationGracePeriodSeconds": 60},
            },
        },
    }  # fmt: skip


def agent_daemonset(values: dict[str, Any]) -> dict[str, Any]:
    host = [("modules", "/lib/modules", True), ("headers", "/usr/src", True), ("tracefs", "/sys/kernel/tracing", False),
            ("cgroup", "/sys/fs/cgroup", True), ("spool", values["agent"]["spool_host_path"], False)]  # fmt: skip
    app = container(values, "agent", values["agent_image"], [volume_mount(n, p, ro) for n, p, ro in host])
    # The node's name is the event's host (not the pod's).
    app["env"] = [{"name": "RULELESS_AGENT__HOST", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    app["securityContext"] = {"runAsUser": 0, "privileged": False, "allowPrivilegeEscalation": False,
                              "capabilities": {"drop": ["ALL"], "add": AGENT_CAPABILITIES}}  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("ruleless-agent", values["namespace"], "agent"),
        "spec": {
            "selector": {"matchLabels": selector("agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": selector("agent")},
                "spec": {
                    "hostPID": True,  # every backend reads the host's processes
                    "containers": [app],
                    "volumes": [*base_volumes(), *({"name": n, "hostPath": {"path": p}} for n, p, _ in host)],
                    "tolerations": [{"operator": "Exists"}],  # every node, control plane included
                    "priorityClassName": "system-node-critical",
                    "terminationGracePeriodSeconds": 45,
                },
            },
        },
    }  # fmt: skip


def lancedb_claim(values: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"],
                            "resources": {"requests": {"storage": values["worker"]["lancedb_volume_size"]}}}  # fmt: skip
    if values["worker"].get("lancedb_storage_class"):
        spec["storageClassName"] = values["worker"]["lancedb_storage_class"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("ruleless-lancedb", values["namespace"]),
            "spec": spec}  # fmt: skip


# The API's token store (api.tokens_file in values.toml) lives on a volume of its own:
# tokens are made with `kubectl exec deploy/ruleless-api -- ruleless token create ...`.
API_TOKENS_DIR = "/var/lib/ruleless-api"


def api_tokens_claim(values: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("ruleless-api-tokens", values["namespace"]),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip


def to_toml(settings: dict[str, Any], prefix: str = "") -> str:
    """``settings`` (strings, numbers, booleans, nested tables) as TOML."""
    plain = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    lines += [f"{key} = {json.dumps(value)}" for key, value in plain.items()]
    for key, value in settings.items():
        if isinstance(value, dict):
            lines.append(to_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", action="append", type=Path, help="values file (repeatable; later wins)")
    args = parser.parse_args(argv)
    objects = render(load_values(args.values or [DEFAULT_VALUES]))
    json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
