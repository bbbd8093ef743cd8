"""agent/workload.py: workload identity from config, systemd unit or container."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.workload import WorkloadResolver, safe_name, systemd_unit
from ruleless.settings import AgentSettings
from schemas.events import NAME_PATTERN

CID = "4f1a9b2c" * 8
NGINX = "0::/system.slice/nginx.service\n"
GETTY = "0::/system.slice/system-getty.slice/getty@tty1.service\n"
USER_APP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service\n"
SESSION = "0::/user.slice/user-0.slice/session-1.scope\n"
DOCKER = f"0::/system.slice/docker-{CID}.scope\n"
V1 = "12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n"


def agent(**fields: object) -> AgentSettings:
    return AgentSettings.model_validate({"org_id": "acme", "workload": "host-default", **fields})


@pytest.mark.parametrize(
    "cgroup, unit",
    [(NGINX, "nginx"), (GETTY, "getty@tty1"), (USER_APP, "backup"), (SESSION, None), (DOCKER, None), (V1, "cron"), ("", None)],
)
def test_systemd_unit(cgroup: str, unit: str | None) -> None:
    assert systemd_unit(cgroup) == unit


def test_safe_name() -> None:
    assert safe_name("getty@tty1") == "getty-tty1"
    assert safe_name("/my container") == "my-container"
    assert safe_name("@@@") is None
    long = safe_name("x" * 100)
    assert long is not None and len(long) == 64 and NAME_PATTERN.fullmatch(long)


def test_config_gives_every_process_the_configured_workload() -> None:
    resolver = WorkloadResolver(agent())
    assert resolver.resolve(NGINX) == resolver.resolve(DOCKER) == ("acme", "host-default")


def test_systemd_gives_services_their_unit_and_the_rest_the_default() -> None:
    resolver = WorkloadResolver(agent(workload_from="systemd"))
    assert resolver.resolve(NGINX) == ("acme", "nginx")
    assert resolver.resolve(GETTY) == ("acme", "getty-tty1")
    assert resolver.resolve(SESSION) == ("acme", "host-default")


def test_container_uses_the_runtime_name_or_the_short_id(tmp_path: Path) -> None:
    resolver = WorkloadResolver(agent(workload_from="container"), docker_root=tmp_path)
    assert resolver.resolve(DOCKER) == ("acme", f"ctr-{CID[:12]}")
    assert resolver.resolve(NGINX) == ("acme", "host-default")
    other = "a" * 64
    state = tmp_path / "containers" / other
    state.mkdir(parents=True)
    (state / "config.v2.json").write_text(json.dumps({"Name": "/payments-api"}))
    assert resolver.resolve(f"0::/docker/{other}\n") == ("acme", "payments-api")


def test_this_process_resolves_under_every_mode() -> None:
    text = Path("/proc/self/cgroup").read_text()
    for mode in ("config", "systemd", "container"):
        org, workload = WorkloadResolver(agent(workload_from=mode)).resolve(text)
        assert org == "acme" and NAME_PATTERN.fullmatch(workload)
