"""Log lines: librdkafka's retries against a dead broker are logged once per interval."""

from __future__ import annotations

import logging
import time

import pytest

from ruleless.broker import free_port
from ruleless.kafka import producer
from ruleless.logs import OncePerInterval
from ruleless.settings import KafkaSettings


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("x", logging.ERROR, __file__, 1, msg, None, None)


def test_repeats_differing_only_in_numbers_are_counted_not_logged() -> None:
    once = OncePerInterval(interval_s=0.3)
    first = record("Connect to 127.0.0.1:4001 failed (after 0ms)")
    assert once.filter(first)
    assert not once.filter(record("Connect to 127.0.0.1:4001 failed (after 3ms)"))
    assert not once.filter(record("Connect to 127.0.0.1:4001 failed (after 9ms)"))
    assert once.filter(record("Another problem"))
    time.sleep(0.35)
    later = record("Connect to 127.0.0.1:4001 failed (after 1ms)")
    assert once.filter(later)
    assert "2 similar" in later.getMessage()


def test_a_client_retrying_a_dead_broker_logs_a_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    prod = producer(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"), **{"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        prod.poll(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "librdkafka"]
    assert lines, "librdkafka's lines should reach Python logging"
    assert len(lines) <= 5, lines
