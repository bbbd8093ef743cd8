"""The pipeline's test bodies against Apache Kafka (issue 18): where a Docker engine
answers, the broker-facing tests run again in a child pytest with
RULELESS_TEST_KAFKA=testcontainers (tests/conftest.py then starts Apache Kafka through
testcontainers instead of the embedded broker); elsewhere this skips and says why. The
ClickHouse-server side is tests/sinks/test_clickhouse.py (same pattern)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import docker_unavailable

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
# Produce, score, sink and query end to end; the worker's exactly-once and failover;
# the agent's delivery through the broker.
ON_APACHE_KAFKA = ["tests/test_pipeline.py", "tests/test_delivery.py", "tests/streams/test_worker.py",
                   "tests/streams/test_worker_failover.py"]  # fmt: skip


def test_the_pipeline_tests_pass_on_apache_kafka_in_testcontainers() -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ON_APACHE_KAFKA],
        cwd=REPO, env={**os.environ, "RULELESS_TEST_KAFKA": "testcontainers"}, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
