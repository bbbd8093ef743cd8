"""Session fixtures that start the real parts: the embedded Kafka-compatible broker,
LanceDB in a temp directory and chdb in a temp directory. Each test gets its own topics.

Where a Docker engine answers and RULELESS_TEST_KAFKA=testcontainers is set, the same
tests run against real Apache Kafka started by testcontainers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ruleless.broker import EmbeddedBroker, free_port
from ruleless.kafka import ensure_topics
from ruleless.settings import Settings, load_settings
from tests.processes import QUERY_TOKEN


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a broker that lives for the whole test session."""
    if os.environ.get("RULELESS_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """Settings for one test: fresh topic names, group ids and data directories."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        data_dir=str(tmp_path),
        kafka={"bootstrap": kafka_bootstrap},
        topics={
            "raw": f"raw-{tag}",
            "scored": f"scored-{tag}",
            "alerts": f"alerts-{tag}",
            "dead_letter": f"dlq-{tag}",
            "feedback": f"feedback-{tag}",
            "partitions": 4,
        },
        lancedb={"uri": str(tmp_path / "lancedb"), "flush_interval_s": 0.5},
        clickhouse={"path": str(tmp_path / "clickhouse")},
        worker={
            "app_id": f"ruleless-worker-{tag}",
            "group_id": f"worker-{tag}",
            "data_dir": str(tmp_path / "faust"),
            "metrics_port": 0,
            "web_port": 0,
        },
        sink={"group_id": f"sink-{tag}", "metrics_port": 0, "query_port": free_port(), "query_token": QUERY_TOKEN},
        agent={"metrics_port": 0},
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """Same as ``settings`` with the four pipeline topics created on the broker."""
    ensure_topics(settings.kafka, settings.topics)
    return settings


def pytest_sessionstart(session: pytest.Session) -> None:
    from streams import evidence

    if evidence.STALE:
        pytest.exit("streams/evidence.py changed after its mypyc build: run `make native` (or `make test`)", returncode=2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """`make bench`: the table of the figures measured in this session (tests/bench.py)."""
    from tests.bench import table_lines

    lines = table_lines()
    if lines:
        terminalreporter.section("benchmark figures")
        for line in lines:
            terminalreporter.write_line(line)
