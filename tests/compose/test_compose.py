"""compose/: nobody can run it here (no Docker engine), so everything that can be checked
without one is: the compose-spec schema, pinned images, every ruleless service's command
and environment accepted by the CLI and its settings model, healthchecks on the ports the
settings give, the topics the README states, and what the Dockerfile puts in the images.

tests/compose/compose-spec.json is the Compose Specification's schema, copied from
github.com/compose-spec/compose-spec (schema/compose-spec.json, commit 170098ba, 2026-06-23).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.main import get_command

from ruleless.cli import app
from ruleless.settings import Settings, load_settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.json")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Long-running ruleless commands and the settings section holding their metrics port.
PORTS = {"worker": "worker", "sink": "sink", "agent": "agent", "api": "api"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def ruleless_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if svc["image"].startswith("ruleless")}


def service_settings(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service's process would build from its environment."""
    for key in [k for k in __import__("os").environ if k.startswith("RULELESS_")]:
        monkeypatch.delenv(key)
    for key, value in svc["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value)))
    return load_settings()


def test_the_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_image_is_pinned_by_a_tag() -> None:
    for name, svc in compose()["services"].items():
        image, _, tag = svc["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {svc['image']} is not pinned"
        if image.startswith("ruleless"):
            assert tag == VERSION, f"{name}: ruleless images are tagged with the project version {VERSION}"
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            base = line.split()[1]
            assert base in {"runtime"} or (":" in base and not base.endswith(":latest")), line


def test_every_ruleless_service_command_and_environment_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = get_command(app)
    services = ruleless_services()
    assert {svc["command"][0] for svc in services.values()} == set(PORTS)
    for name, svc in services.items():
        args = svc["command"]
        command = cli.get_command(None, args[0])  # type: ignore[attr-defined]
        assert command is not None, f"{name}: `ruleless {args[0]}` does not exist"
        command.make_context(args[0], list(args[1:]))  # raises on an unknown option or value
        settings = service_settings(svc, monkeypatch)
        assert settings.kafka.bootstrap == "kafka:9092" and settings.topics.partitions == 12
        if args[0] in ("sink", "api"):
            assert settings.clickhouse.backend == "server" and settings.clickhouse.url == "http://clickhouse:8123"
        if args[0] == "api":  # (reads the server, not a sink's embedded store)
            assert settings.api.query_source == "server" and settings.api.tokens_file


def test_healthchecks_ask_readiness_on_each_process_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in ruleless_services().items():
        settings = service_settings(svc, monkeypatch)
        port = getattr(settings, PORTS[svc["command"][0]]).metrics_port
        check = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check, f"{name}: {check}"
        assert settings.metrics_host == "0.0.0.0"  # (loopback-only would hide it from Prometheus)


def readme_topics() -> dict[str, tuple[int, int]]:
    """topic -> (partitions, retention days), from README's "Install on a fleet" table."""
    rows = re.findall(r"^\| `([a-z.]+)` \| (\d+) \| (\d+) days \|", (ROOT / "README.md").read_text(), re.M)
    return {topic: (int(parts), int(days)) for topic, parts, days in rows}


def test_topics_are_created_with_the_partitions_and_retention_the_readme_states(monkeypatch: pytest.MonkeyPatch) -> None:
    script = compose()["services"]["kafka-init"]["command"][0]
    base = re.search(r'^t="(.*)"$', script, re.M)
    assert base, script
    partitions = int(shlex.split(base.group(1))[shlex.split(base.group(1)).index("--partitions") + 1])
    created: dict[str, tuple[int, int]] = {}
    for line in script.splitlines():
        if line.strip().startswith("$$t"):
            words = shlex.split(line)
            retention_ms = int(words[words.index("--config") + 1].removeprefix("retention.ms="))
            created[words[words.index("--topic") + 1]] = (partitions, retention_ms // 86_400_000)
    stated = readme_topics()
    assert stated and created == stated
    settings = service_settings(next(iter(ruleless_services().values())), monkeypatch)
    t = settings.topics
    assert set(created) == {t.raw, t.scored, t.alerts, t.dead_letter, t.feedback}
    assert {p for p, _ in created.values()} == {t.partitions}
    assert compose()["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_images_carry_bcc_for_the_agent_and_the_compiled_engine() -> None:
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert "python3-bpfcc" in stages["agent"] and "bpfcc-tools" in stages["agent"]
    assert "mypyc" in stages["build"] and "streams/evidence.py" in stages["build"]
    assert re.search(r"cp streams/evidence\*\.so \S+/site-packages/streams/", stages["build"])
    assert "COPY bpf /install/lib/python3.11/site-packages/bpf" in stages["build"]  # agent/ebpf.py: BPF_DIR
    targets = {svc["build"]["target"] for svc in compose()["services"].values() if "build" in svc}
    assert targets == {"runtime", "agent"} and compose()["services"]["agent"]["build"]["target"] == "agent"
