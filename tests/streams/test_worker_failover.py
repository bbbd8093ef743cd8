"""Two workers in one group, one SIGKILLed mid-stream (issue 5).

Real parts only: the embedded broker, two `ruleless worker` processes sharing the raw
topic's partitions, a `ruleless sink` into chdb. After the kill the survivor takes the
dead worker's partitions, reloads their shards from LanceDB and skips what they had
already learned; every event lands exactly once in ClickHouse with the score the offline
engine gives the same stream.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ruleless.settings import Settings
from schemas.events import RawEvent
from sinks.query import query_http
from streams.scoring import ScoringService
from tests.factories import fleet_stream
from tests.processes import QUERY_TOKEN, produce_paced, ruleless_process

pytestmark = pytest.mark.integration

ASSIGNED = re.compile(r"assigned (\d+) partitions of \S+ \(topic id \S+\): \[([\d, ]*)\]")


def wait_until(what: str, check: Callable[[], Any], timeout: float = 90.0, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the sink may not answer yet  # noqa: BLE001
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def assignment(log: Path) -> set[int] | None:
    """The raw partitions a worker logged as assigned most recently (None before any)."""
    found = ASSIGNED.findall(log.read_text(errors="replace")) if log.exists() else []
    if not found:
        return None
    return {int(p) for p in found[-1][1].split(",") if p.strip()}


def exact(settings: Settings, algorithm: str) -> Settings:
    """``algorithm`` without org priors: a worker's priors snapshot depends on the shards
    it holds when it takes it (README, Org priors), so scores equal to the offline
    engine's — the exactly-once learning these tests check — hold without them. Flush
    snapshots are taken 5 shards at a time, scoring going on between slices, as a
    worker holding thousands of shards does (lancedb.snapshot_slice_shards)."""
    return settings.model_copy(update={
        "engine": settings.engine.model_copy(update={"algorithm": algorithm, "org_priors": False}),
        "lancedb": settings.lancedb.model_copy(update={"snapshot_slice_shards": 5}),
    })


def worker_settings(settings: Settings, name: str, tmp_path: Path) -> Settings:
    """Same group, own Faust data directory (Faust locks it per process)."""
    worker = settings.worker.model_copy(update={"data_dir": str(tmp_path / f"faust-{name}")})
    return settings.model_copy(update={"worker": worker})


def offline_scores(settings: Settings, events: list[RawEvent], tmp_path: Path) -> dict[str, float]:
    lance = settings.lancedb.model_copy(update={"uri": str(tmp_path / "offline")})
    offline = ScoringService(settings.model_copy(update={"lancedb": lance}))
    return {s.event_id: s.score for s in offline.score(events)}  # type: ignore[misc]


def stored_events(topics: Settings) -> int:
    """Rows in ClickHouse (FINAL: one per event), through the sink's query endpoint."""
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    sql = f"SELECT count() AS n FROM {topics.clickhouse.database}.{topics.clickhouse.table} FINAL"
    return int(query_http(url, sql, QUERY_TOKEN)[0]["n"])


# seed scores do not depend on counts; evidence scores do (episodes, novelty rates), so
# learning an event twice would show there.
@pytest.mark.parametrize("algorithm", ["seed", "evidence"])
def test_sigkilled_worker_loses_nothing_and_scores_stay_exact(topics: Settings, tmp_path: Path, algorithm: str) -> None:
    topics = exact(topics, algorithm)
    events = fleet_stream(pairs=24, per_pair=750, seed=5)
    n = len(events)
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    table = f"{topics.clickhouse.database}.{topics.clickhouse.table}"
    logs = {name: tmp_path / f"worker-{name}.log" for name in ("a", "b")}

    def stored() -> int:
        return stored_events(topics)

    with ruleless_process(topics, "sink", log=tmp_path / "sink.log"), ruleless_process(
        worker_settings(topics, "a", tmp_path), "worker", log=logs["a"]
    ) as a:
        wait_until("worker a to own partitions", lambda: assignment(logs["a"]))
        with ruleless_process(worker_settings(topics, "b", tmp_path), "worker", log=logs["b"]) as b:
            # Faust's assignor must spread the 4 partitions over both members.
            shared = wait_until(
                "both workers to own partitions",
                lambda: (assignment(logs["a"]), assignment(logs["b"]))
                if assignment(logs["b"]) and assignment(logs["a"]) else None,
            )
            assert shared[0] | shared[1] == {0, 1, 2, 3} and not shared[0] & shared[1], shared
            feeder = threading.Thread(target=produce_paced, args=(topics, events, 3000.0), kwargs={"every": 500})
            feeder.start()
            # Mid-stream: both workers have scored and flushed part of their shards.
            wait_until("a third of the stream in ClickHouse", lambda: stored() >= n // 3, timeout=120)
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            feeder.join()
            wait_until("the survivor to own every partition", lambda: assignment(logs["b"]) == {0, 1, 2, 3})
            wait_until("every event in ClickHouse", lambda: stored() >= n, timeout=180)
            time.sleep(2)  # a late duplicate would show up within a sink batch or two
            rows = query_http(url, f"SELECT event_id, score, severity, model FROM {table} FINAL", QUERY_TOKEN)
            dupes = query_http(url, f"SELECT count() AS n FROM (SELECT event_id FROM {table} FINAL GROUP BY event_id HAVING count() > 1)", QUERY_TOKEN)
            assert b.poll() is None, "the surviving worker died"

    assert len(rows) == n and {r["event_id"] for r in rows} == {e.event_id for e in events}
    assert int(dupes[0]["n"]) == 0
    survivor = logs["b"].read_text(errors="replace")
    # The takeover really reloaded flushed shards with their positions.
    assert re.search(r"loaded shard \S+ \(\d+ behaviours, learned up to \S+/\d+(?:#\S+)?@\d+\)", survivor), survivor[-3000:]
    expected = offline_scores(topics, events, tmp_path)
    got = {r["event_id"]: float(r["score"]) for r in rows}
    mismatched = {k for k in expected if got[k] != expected[k]}
    assert not mismatched, f"{len(mismatched)} of {n} scores differ from the offline engine"
    assert {r["model"] for r in rows} == {ScoringService(topics).engine.model}
    assert ScoringService(topics).algorithm == algorithm


def test_a_stalled_worker_that_resumes_writes_nothing_and_scores_stay_exact(topics: Settings, tmp_path: Path) -> None:
    """Issue 14, fencing: worker a is SIGSTOPped past its session timeout while b takes
    over its partitions, then SIGCONTed with unflushed learning in memory. Its writes
    must be refused (a newer owner claimed those partitions), it must rejoin and take
    partitions back from what b stored, and every score must equal the offline engine's."""
    topics = exact(topics, "evidence")
    events = fleet_stream(pairs=24, per_pair=1500, seed=7)
    n = len(events)
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    table = f"{topics.clickhouse.database}.{topics.clickhouse.table}"
    logs = {name: tmp_path / f"worker-{name}.log" for name in ("a", "b")}

    def stored() -> int:
        return stored_events(topics)

    def claims_logged(name: str) -> int:
        return logs[name].read_text(errors="replace").count("claimed ")

    with ruleless_process(topics, "sink", log=tmp_path / "sink.log"), ruleless_process(
        worker_settings(topics, "a", tmp_path), "worker", log=logs["a"]
    ) as a:
        wait_until("worker a to own partitions", lambda: assignment(logs["a"]))
        with ruleless_process(worker_settings(topics, "b", tmp_path), "worker", log=logs["b"]) as b:
            wait_until("both workers to own partitions", lambda: assignment(logs["b"]) and assignment(logs["a"]) != {0, 1, 2, 3})
            feeder = threading.Thread(target=produce_paced, args=(topics, events, 900.0), kwargs={"every": 100})
            feeder.start()
            wait_until("a quarter of the stream in ClickHouse", lambda: stored() >= n // 4, timeout=120)
            a.send_signal(signal.SIGSTOP)
            try:
                wait_until("b to own every partition", lambda: assignment(logs["b"]) == {0, 1, 2, 3})
                time.sleep(3)  # b loads a's shards, scores on and flushes (every 0.5 s)
            finally:
                a.send_signal(signal.SIGCONT)
            resumed_claims = claims_logged("a")
            wait_until("a to rejoin and claim partitions again", lambda: claims_logged("a") > resumed_claims and assignment(logs["a"]))
            feeder.join()
            wait_until("every event in ClickHouse", lambda: stored() >= n, timeout=180)
            time.sleep(2)
            rows = query_http(url, f"SELECT event_id, score FROM {table} FINAL", QUERY_TOKEN)
            assert a.poll() is None and b.poll() is None, "a worker died"

    assert len(rows) == n
    expected = offline_scores(topics, events, tmp_path)
    got = {r["event_id"]: float(r["score"]) for r in rows}
    mismatched = {k for k in expected if got[k] != expected[k]}
    assert not mismatched, f"{len(mismatched)} of {n} scores differ from the offline engine"
    stale = logs["a"].read_text(errors="replace")
    assert re.search(r"refused to write \d+ shards: partitions .* claimed by a newer owner", stale), stale[-3000:]
