"""deploy/render.py: the Kubernetes manifests, validated against the Kubernetes JSON schemas
shipped by kubernetes-validate (strict: unknown fields fail), and every container's command
and environment accepted by the CLI and the settings model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from typer.main import get_command

from deploy.render import CONFIG_FILE, DEFAULT_VALUES, PORTS, load_values, render
from ruleless.cli import app
from ruleless.settings import Settings, load_settings

K8S_VERSION = kubernetes_validate.latest_version()


def rendered(*extra: Path) -> list[dict[str, Any]]:
    return render(load_values([DEFAULT_VALUES, *extra]))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def override(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_every_object_is_valid_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    mine = override(tmp_path, '[worker]\nreplicas = 12\nlancedb_storage_class = "efs"\n[secrets]\nRULELESS_KAFKA__SASL_PASSWORD = "s"\n')
    for objects in (rendered(), rendered(mine)):
        assert {o["kind"] for o in objects} == {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "DaemonSet", "Deployment"}
        for obj in objects:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError
    broken = rendered()
    by_kind(broken, "DaemonSet")[0]["spec"]["template"]["spec"]["hostPid"] = True  # (a typo must fail)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(by_kind(broken, "DaemonSet")[0], K8S_VERSION, strict=True)


def container_settings(objects: list[dict[str, Any]], ctr: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the container's process builds: the ConfigMap's file + its environment."""
    config = tmp_path / "ruleless.toml"
    config.write_text(by_kind(objects, "ConfigMap")[0]["data"]["ruleless.toml"])
    for key in [k for k in os.environ if k.startswith("RULELESS_")]:
        monkeypatch.delenv(key)
    assert ctr["envFrom"] == [{"secretRef": {"name": "ruleless-secrets"}}]
    for key, value in by_kind(objects, "Secret")[0]["stringData"].items():
        monkeypatch.setenv(key, value)
    for env in ctr.get("env", []):
        field = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        monkeypatch.setenv(env["name"], "node-7" if field == "spec.nodeName" else env["value"])
    return load_settings(config)


def test_every_container_command_and_environment_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered()
    cli = get_command(app)
    workloads = by_kind(objects, "DaemonSet") + by_kind(objects, "Deployment")
    roles = set()
    for workload in workloads:
        (ctr,) = workload["spec"]["template"]["spec"]["containers"]
        args = ctr["args"]
        command = cli.get_command(None, args[0])  # type: ignore[attr-defined]
        assert command is not None, args
        command.make_context(args[0], list(args[1:]))  # raises on an unknown option
        assert args[1:] == ["--config", CONFIG_FILE]
        assert any(m["mountPath"] == str(Path(CONFIG_FILE).parent) for m in ctr["volumeMounts"])
        settings = container_settings(objects, ctr, tmp_path, monkeypatch)
        section = getattr(settings, args[0])
        assert section.metrics_port == PORTS[args[0]] == ctr["ports"][0]["containerPort"]
        assert settings.metrics_host == "0.0.0.0"  # the kubelet probes the pod's address
        assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz" and ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert settings.clickhouse.password.get_secret_value() == "change-me"  # from the Secret
        roles.add(args[0])
        if args[0] == "agent":
            assert settings.agent.host == "node-7"
    assert roles == {"agent", "worker", "sink", "api"}


def test_the_agent_daemonset_has_what_ebpf_needs_and_no_privileged_mode() -> None:
    (ds,) = by_kind(rendered(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert pod["hostPID"] is True
    caps = ctr["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and {"BPF", "PERFMON", "NET_ADMIN"} <= set(caps["add"])
    assert ctr["securityContext"]["privileged"] is False
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/lib/modules", "/usr/src", "/sys/kernel/tracing", "/sys/fs/cgroup"} <= paths
    assert ctr["resources"]["limits"]["memory"] and ctr["resources"]["limits"]["cpu"]


def test_more_workers_than_partitions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replicas 13 > topics.partitions 12"):
        rendered(override(tmp_path, "[worker]\nreplicas = 13\n"))
    (worker,) = [d for d in by_kind(rendered(override(tmp_path, "[settings.topics]\npartitions = 3\n[worker]\nreplicas = 3\n")), "Deployment")
                 if d["metadata"]["name"] == "ruleless-worker"]
    assert worker["spec"]["replicas"] == 3
