"""Analyst feedback end to end: `ruleless feedback` → feedback topic → worker → later scores."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ruleless.kafka import producer
from ruleless.settings import Settings, child_environ
from schemas.events import RawEvent, encode
from tests.factories import T0, event, workload_stream
from tests.processes import RULELESS, ruleless_process
from tests.test_pipeline import poll_sql

pytestmark = pytest.mark.integration


def publish(settings: Settings, events: list[RawEvent]) -> None:
    prod = producer(settings.kafka)
    for e in events:
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
    assert prod.flush(30) == 0


def test_benign_feedback_quiets_later_runs_of_the_behaviour(topics: Settings, tmp_path: Path) -> None:
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    table = f"{topics.clickhouse.database}.{topics.clickhouse.table}"
    odd = dict(process_name="certbot", exe="/usr/bin/certbot", parent_process="cron", user="root", uid=0,
               host="web-1", cmdline="certbot renew --quiet")
    first = event(ts=T0 + 5000, pid=501, **odd)
    again = event(ts=T0 + 5060, pid=502, **odd)  # same host, a minute later: still the first episode
    with ruleless_process(topics, "sink", log=tmp_path / "sink.log"), ruleless_process(
        topics, "worker", log=tmp_path / "worker.log"
    ):
        publish(topics, list(workload_stream("acme", "web", "web", 600)) + [first])
        [row] = poll_sql(url, f"SELECT score FROM {table} FINAL WHERE event_id = '{first.event_id}'", bool)
        done = subprocess.run(
            [RULELESS, "feedback", first.event_id or "", "benign", "--url", url, "--note", "renewal job"],
            env=child_environ(topics), capture_output=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        # Verdicts and raw events are separate topics: give the worker a moment to apply
        # the verdict before the next run arrives.
        time.sleep(3)
        publish(topics, [again])
        [later] = poll_sql(url, f"SELECT score FROM {table} FINAL WHERE event_id = '{again.event_id}'", bool)
    assert float(row["score"]) >= 0.6
    assert float(later["score"]) < float(row["score"]) / 3
    assert "feedback benign" in (tmp_path / "worker.log").read_text()
