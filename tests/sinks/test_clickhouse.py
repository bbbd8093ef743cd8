"""The events table and both backends, against real stores: chdb in a temp directory;
a ClickHouse server through testcontainers where a Docker engine answers."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest

from ruleless.broker import free_port
from ruleless.settings import ClickHouseSettings, Settings
from schemas.errors import DecodeError, QueryError, ServiceError
from streams.behaviours import behaviour_id
from schemas.events import ScoredEvent
from sinks.clickhouse import (
    COLUMNS,
    INSERT_COLUMNS,
    MAX_TS,
    PAST_DAYS,
    Backend,
    ChdbBackend,
    ServerBackend,
    count_sql,
    event_row,
    open_backend,
    rows_table,
)
from tests.processes import docker_unavailable
from tests.sinks.support import scored

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse_server() -> Iterator[ClickHouseSettings]:
    """A real ClickHouse server in a container (skips where no Docker engine answers)."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    from testcontainers.community.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:24.8") as server:
        url = f"http://{server.get_container_host_ip()}:{server.get_exposed_port(8123)}"
        yield ClickHouseSettings(
            backend="server", url=url, username=server.username, password=server.password, database="ruleless_test"
        )


@pytest.fixture(params=["chdb", "server"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    """The same tests against both backends, each with a fresh, empty table."""
    if request.param == "chdb":
        ch = settings.clickhouse
    else:
        server: ClickHouseSettings = request.getfixturevalue("clickhouse_server")
        ch = server.model_copy(update={"table": f"events_{uuid.uuid4().hex[:12]}"})
    store = open_backend(ch)
    try:
        store.ensure_schema()
        yield store
    finally:
        store.close()


def test_schema_has_every_event_field(backend: Backend) -> None:
    backend.ensure_schema()  # idempotent
    described = {r["name"]: r["type"] for r in backend.query(f"DESCRIBE TABLE {backend.table}")}
    fields = {f.name for f in msgspec.structs.fields(ScoredEvent)}
    assert fields <= set(described), fields - set(described)
    assert described == {c.name: c.ch_type for c in COLUMNS}
    assert set(INSERT_COLUMNS) == fields | {"behaviour_id"}
    assert set(described) - fields == {"event_time", "inserted_at", "behaviour_id"}
    engine = backend.query(
        f"SELECT engine_full FROM system.tables WHERE database = '{backend.ch.database}' AND name = '{backend.ch.table}'"
    )[0]["engine_full"]
    clamped = "least(greatest(event_time, inserted_at - toIntervalDay(7)), inserted_at + toIntervalDay(1))"
    assert engine.startswith(f"ReplacingMergeTree(scored_at) PARTITION BY toDate({clamped})"), engine
    assert "ORDER BY (org_id, workload, ts, event_id)" in engine
    assert f"TTL toDateTime(greatest({clamped}, inserted_at)) + toIntervalDay({backend.ch.ttl_days})" in engine


def test_round_trip_keeps_every_value(backend: Backend) -> None:
    full = scored(
        1, "rt", exe="/usr/sbin/nginx", argv=["nginx", "-g", "daemon off;"], ancestors=["systemd"],
        local_ip="10.0.0.1", local_port=443, remote_ip="10.0.0.2", remote_port=51234,
        container_id="c0ffee", exec_id="host-1:123:1001", source="ebpf", flags=["argv_truncated"],
        learning=True, severity="alert", reasons=["never seen: curl | bash"], uid=0, user="root",
    )
    now = float(int(time.time()))
    sparse = ScoredEvent(ts=now + 0.25, org_id="o", workload="w", event_id="sparse", scored_at=now + 1.5)
    backend.insert(rows_table([event_row(full), event_row(sparse)]))

    rows = {r["event_id"]: r for r in backend.query(f"SELECT * FROM {backend.table} FINAL")}
    assert set(rows) == {"rt-000001", "sparse"}
    got = rows["rt-000001"]
    for name in INSERT_COLUMNS:
        if name not in ("scored_at", "behaviour_id"):
            assert got[name] == getattr(full, name), name
    assert got["behaviour_id"] == behaviour_id(full) != rows["sparse"]["behaviour_id"]
    assert rows["sparse"]["user"] is None and rows["sparse"]["local_port"] is None
    assert rows["sparse"]["argv"] == [] and rows["sparse"]["reasons"] == []
    as_text = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
    assert rows["sparse"]["event_time"] == as_text(now + 0.25)
    assert rows["sparse"]["scored_at"] == as_text(now + 1.5)


def test_duplicates_collapse_to_one_row_with_final(backend: Backend) -> None:
    events = [scored(i, "dup") for i in range(100)]
    # Three deliveries of the same events in differently cut batches (so no batch is a
    # byte-identical retry), the last one re-scored later: its version must win.
    backend.insert(rows_table([event_row(e) for e in events]))
    backend.insert(rows_table([event_row(e) for e in events[:50]]))
    later = [msgspec.structs.replace(e, scored_at=e.scored_at + 10, score=0.99) for e in events[25:]]
    backend.insert(rows_table([event_row(e) for e in later]))

    assert backend.query(count_sql(backend.ch, final=False))[0]["n"] == 225
    assert backend.count() == 100
    rescored = backend.query(f"SELECT countIf(score = 0.99) AS n FROM {backend.table} FINAL")[0]["n"]
    assert rescored == 75


def test_identical_retried_batch_is_dropped_by_dedup_token(backend: Backend) -> None:
    table = rows_table([event_row(scored(i, "retry")) for i in range(1000)])
    backend.insert(table)
    backend.insert(table)  # same rows → same token → dropped, not just collapsed later
    assert backend.query(count_sql(backend.ch, final=False))[0]["n"] == 1000


def test_replayed_old_events_outlive_their_first_merge(backend: Backend) -> None:
    """Events older than ttl_days (a backfill, a replay, a test data set) stay for
    ttl_days after they were written; TTL would otherwise drop them at once."""
    old = time.time() - (backend.ch.ttl_days + 30) * 86_400
    backend.insert(rows_table([event_row(scored(i, "old", ts=old + i)) for i in range(50)]))
    # A copy that was also *written* longer than ttl_days ago is past retention.
    backend.execute(
        f"INSERT INTO {backend.table} (event_id, ts, org_id, workload, scored_at, inserted_at) "
        f"VALUES ('expired', {old}, 'o', 'w', {old}, toDateTime64({old}, 6, 'UTC'))"
    )
    backend.execute(f"OPTIMIZE TABLE {backend.table} FINAL")  # merges, applying TTL
    assert backend.count() == 50
    assert backend.count("event_id = 'expired'") == 0


def test_reads_cannot_write(backend: Backend) -> None:
    with pytest.raises(QueryError):
        backend.query(f"INSERT INTO {backend.table} (event_id) VALUES ('x')")
    with pytest.raises(QueryError):
        backend.query(f"DROP TABLE {backend.table}")
    assert backend.count() == 0


def test_values_the_table_cannot_hold_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="uid"):
        event_row(scored(1, uid=2**63))
    with pytest.raises(DecodeError, match="timestamp"):
        event_row(scored(1, ts=MAX_TS + 1))
    event_row(scored(1, uid=-(2**63), ts=MAX_TS))


@pytest.mark.bench
def test_chdb_insert_benchmark(settings: Settings) -> None:
    """100k rows: conversion and insert times, printed (`make bench`)."""
    with ChdbBackend(settings.clickhouse) as store:
        store.ensure_schema()
        events = [scored(i, "bulk") for i in range(100_000)]
        t0 = time.perf_counter()
        table = rows_table([event_row(e) for e in events])
        t1 = time.perf_counter()
        store.insert(table)
        t2 = time.perf_counter()
        assert store.count() == 100_000
        print(f"\nchdb: rows+arrow {t1 - t0:.2f}s, insert {t2 - t1:.2f}s = {100_000 / (t2 - t1):,.0f} rows/s")


def test_one_store_per_process(settings: Settings, tmp_path: Path) -> None:
    with ChdbBackend(settings.clickhouse) as store:
        store.ensure_schema()
        # Another process cannot open the directory while this one holds it...
        code = (
            "from ruleless.settings import ClickHouseSettings\n"
            "from sinks.clickhouse import ChdbBackend\n"
            "from schemas.errors import ServiceError\n"
            f"try:\n    ChdbBackend(ClickHouseSettings(path={str(store.path)!r}))\n"
            "except ServiceError as exc:\n    print('refused:', exc)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).parents[2])
        assert "refused:" in out.stdout, out.stdout + out.stderr
        # ...and this process cannot open a second directory while one is open.
        with pytest.raises(ServiceError, match="Only one process"):
            ChdbBackend(ClickHouseSettings(path=str(tmp_path / "other")))


def test_server_backend_reports_an_unreachable_server(settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match="cannot reach ClickHouse"):
        ServerBackend(settings.clickhouse.model_copy(update={"backend": "server", "url": url}))


def test_a_table_of_an_earlier_schema_gets_the_new_columns(settings: Settings) -> None:
    """Issue 14: an upgraded sink met a table without the columns added since, and every
    insert failed. ensure_schema adds what is missing (and nothing else changes)."""
    from sinks.clickhouse import create_database_sql, table_ref

    ch = settings.clickhouse
    with ChdbBackend(ch) as store:
        store.execute(create_database_sql(ch))
        store.execute(
            f"CREATE TABLE {table_ref(ch)} (`event_id` String, `ts` Float64, "
            "`event_time` DateTime64(6, 'UTC') DEFAULT toDateTime64(ts, 6, 'UTC'), `org_id` LowCardinality(String), "
            "`workload` LowCardinality(String), `scored_at` DateTime64(6, 'UTC'), "
            "`inserted_at` DateTime64(6, 'UTC') DEFAULT now64(6, 'UTC')) "
            "ENGINE = ReplacingMergeTree(scored_at) PARTITION BY toDate(event_time) ORDER BY (org_id, workload, ts, event_id)"
        )
        store.ensure_schema()
        described = {r["name"]: r["type"] for r in store.query(f"DESCRIBE TABLE {store.table}")}
        assert described == {c.name: c.ch_type for c in COLUMNS}
        store.insert(rows_table([event_row(scored(i, "upgraded")) for i in range(5)]))
        assert store.count() == 5


def test_hosts_with_wrong_clocks_cannot_multiply_partitions(backend: Backend) -> None:
    """Issue 14: one insert of events dated over 1,000 different days (a host whose clock
    says 1970, another that says 2299) is stored, in a bounded number of partitions;
    partitioning by event day alone refused it (over 100 partitions in one insert
    block) and would have made a partition per day."""
    days = [i * 86_400.0 * 120 for i in range(1000)]  # 1970 .. ~2298
    rows = [event_row(scored(i, "clock", ts=min(t, MAX_TS - 1))) for i, t in enumerate(days)]
    now = time.time()
    rows += [event_row(scored(i, "now", ts=now - i * 3600)) for i in range(48)]  # today, yesterday
    backend.insert(rows_table(rows))
    assert backend.count() == 1048
    parts = backend.query(
        f"SELECT uniqExact(partition) AS n FROM system.parts WHERE database = '{backend.ch.database}' "
        f"AND table = '{backend.ch.table}' AND active"
    )
    # Whatever the clocks say: the days of the window around the write, no more.
    assert int(parts[0]["n"]) <= PAST_DAYS + 2, parts
    # Events of the last days keep their own day's partition (what TTL drops and dedup sees).
    assert backend.count("event_id LIKE 'now-%' AND formatDateTime(event_time, '%Y%m%d') = _partition_id") == 48
