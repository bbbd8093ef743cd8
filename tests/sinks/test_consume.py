"""The sink loop against the real broker and a real chdb store: every event exactly
once, bad input dead-lettered, offsets committed only after the insert."""

from __future__ import annotations

import random
import threading
import time
import urllib.request

import pyarrow as pa
import pytest

from ruleless.broker import free_port
from ruleless.settings import Settings
from schemas.errors import SinkWriteError
from schemas.events import ScoredEvent, encode
from sinks.clickhouse import ChdbBackend, count_sql
from sinks.consume import run
from sinks.query import query_http
from tests.processes import QUERY_TOKEN
from tests.sinks.support import (
    all_committed,
    committed,
    keyed,
    malformed,
    produce,
    read_dead_letters,
    running_sink,
    scored,
    wait_for,
)

pytestmark = pytest.mark.integration


def _count(url: str, settings: Settings, final: bool = True) -> int:
    return int(query_http(url, count_sql(settings.clickhouse, final=final), QUERY_TOKEN)[0]["n"])


def test_every_event_once_and_bad_input_dead_lettered(topics: Settings) -> None:
    settings = topics
    events = [scored(i, "load") for i in range(5000)]
    bad = malformed(200)
    messages = keyed(events) + [(b"junk", value) for value in bad]
    random.Random(7).shuffle(messages)
    ends = produce(settings, messages)

    started = time.monotonic()
    with running_sink(settings) as sink:
        assert sink.query_url is not None
        wait_for(lambda: _count(sink.query_url, settings) == 5000, 45, "5000 rows")
        wait_for(lambda: all_committed(settings, settings.sink.group_id, ends), 15, "offsets committed")
        elapsed = time.monotonic() - started
        ids = query_http(sink.query_url, f"SELECT uniqExact(event_id) AS ids, count() AS n FROM {sink.backend.table} FINAL", QUERY_TOKEN)
        assert ids == [{"ids": 5000, "n": 5000}]
        assert sink.metrics.value("ruleless_sink_dead_lettered_total") == 200
        assert sink.metrics.value("ruleless_sink_messages_total") == 5200
    print(f"\n5000 events + 200 malformed loaded and committed in {elapsed:.2f}s")

    letters = read_dead_letters(settings, 200)
    assert len(letters) == 200
    assert len({(dl.partition, dl.offset) for _, dl in letters}) == 200
    for key, dl in letters:
        assert key == b"junk"
        assert dl.stage == "sink" and dl.error == "DecodeError" and dl.reason
        assert dl.topic == settings.topics.scored and dl.partition is not None and dl.offset is not None
        assert dl.raw in bad
    reasons = {dl.reason.split(":")[0] for _, dl in letters}
    assert {"not JSON", "empty message", "invalid event", "scored event without event_id"} <= reasons
    # Out of the table's range: refused by the contract (32-bit ids, years before 2286).
    assert any("$.uid" in dl.reason for _, dl in letters)
    assert any("$.ts" in dl.reason or "timestamp out of range" in dl.reason for _, dl in letters)


def test_redelivery_stays_exactly_once(topics: Settings) -> None:
    settings = topics
    events = [scored(i, "again") for i in range(1000)]
    ends = produce(settings, keyed(events))
    with running_sink(settings) as sink:
        wait_for(lambda: all_committed(settings, settings.sink.group_id, ends), 30, "first pass committed")
        assert _count(sink.query_url, settings) == 1000

    # The same events again: re-published (a producer retry upstream) and the whole
    # topic re-read by a new consumer group (a reset/replay), into the same store.
    ends.update(produce(settings, keyed(events[::2])))
    replay = settings.model_copy(update={"sink": settings.sink.model_copy(update={"group_id": settings.sink.group_id + "-replay"})})
    with running_sink(replay) as sink:
        wait_for(lambda: all_committed(replay, replay.sink.group_id, ends), 30, "replay committed")
        assert sink.metrics.value("ruleless_sink_messages_total") == 1500
        assert _count(sink.query_url, settings) == 1000
        assert query_http(sink.query_url, f"SELECT uniqExact(event_id) AS n FROM {sink.backend.table}", QUERY_TOKEN) == [{"n": 1000}]


def _detach(store: ChdbBackend) -> None:
    store.execute(f"DETACH TABLE {store.table}")


def _attach(store: ChdbBackend) -> None:
    store.execute(f"ATTACH TABLE {store.table}")


def test_offsets_wait_for_the_insert(topics: Settings) -> None:
    """The table is detached (a real outage of the target): the sink keeps retrying
    the same batch and commits nothing; once it is back, everything lands once."""
    settings = topics
    group = settings.sink.group_id
    with ChdbBackend(settings.clickhouse) as store, running_sink(settings, store) as sink:
        _detach(store)
        ends = produce(settings, keyed([scored(i, "outage") for i in range(600)]))
        wait_for(lambda: sink.metrics.value("ruleless_sink_write_failures_total", kind="error") >= 3, 30, "failed inserts")
        assert sink.metrics.value("ruleless_sink_messages_total") >= 1
        assert all(offset < 0 for offset in committed(settings, group).values()), "committed before the insert"
        assert sink.metrics.value("ruleless_sink_rows_inserted_total") == 0

        _attach(store)
        wait_for(lambda: all_committed(settings, group, ends), 30, "offsets committed after recovery")
        assert store.count() == 600
        assert sink.metrics.value("ruleless_sink_rows_inserted_total") == 600


class LostAckBackend(ChdbBackend):
    """Inserts for real, then reports failure the first ``lost`` times: the outcome a
    timed-out insert leaves the sink with."""

    def __init__(self, *args: object, lost: int = 2, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lost = lost

    def _insert(self, rows: pa.Table, settings: dict[str, object]) -> None:
        super()._insert(rows, settings)
        if self.lost > 0:
            self.lost -= 1
            raise SinkWriteError("connection reset after the insert was sent")


def test_retry_after_unknown_outcome_writes_nothing_twice(topics: Settings) -> None:
    settings = topics.model_copy(update={"sink": topics.sink.model_copy(update={"batch_rows": 100_000, "batch_age_s": 1.0})})
    ends = produce(settings, keyed([scored(i, "ack") for i in range(2000)]))
    with LostAckBackend(settings.clickhouse, lost=2) as store, running_sink(settings, store) as sink:
        wait_for(lambda: all_committed(settings, settings.sink.group_id, ends), 30, "offsets committed")
        assert sink.metrics.value("ruleless_sink_write_failures_total", kind="error") >= 2
        # Same batch, same dedup token: the copies were dropped at insert, not only on read.
        assert store.query(count_sql(settings.clickhouse, final=False)) == [{"n": 2000}]


def test_stop_writes_and_commits_the_buffer(topics: Settings) -> None:
    port = free_port()
    settings = topics.model_copy(
        update={"sink": topics.sink.model_copy(update={"batch_rows": 100_000, "batch_age_s": 600, "metrics_port": port})}
    )
    with running_sink(settings) as sink:
        ends = produce(settings, keyed([scored(i, "stop") for i in range(300)]))
        wait_for(lambda: sink.metrics.value("ruleless_sink_messages_total") == 300, 30, "300 messages read")
        assert _count(sink.query_url, settings) == 0
        assert all(offset < 0 for offset in committed(settings, settings.sink.group_id).values())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert "ruleless_sink_messages_total 300.0" in text
        assert "ruleless_sink_insert_seconds_bucket" in text
    assert all_committed(settings, settings.sink.group_id, ends)
    with ChdbBackend(settings.clickhouse) as store:
        assert store.count() == 300


@pytest.mark.bench
def test_sink_benchmark(topics: Settings) -> None:
    """100k scored events already on the topic → chdb, end to end (`make bench`)."""
    settings = topics
    total = 100_000
    ends = produce(settings, keyed([scored(i, "bench") for i in range(total)]))
    with running_sink(settings) as sink:
        wait_for(lambda: sink.metrics.value("ruleless_sink_messages_total") > 0, 30, "first message")
        started = time.monotonic()
        wait_for(lambda: all_committed(settings, settings.sink.group_id, ends), 120, "all committed", interval=0.1)
        elapsed = time.monotonic() - started
        assert _count(sink.query_url, settings) == total
        inserts = sink.metrics.value("ruleless_sink_insert_seconds_sum")
        batches = sink.metrics.value("ruleless_sink_batches_total")
    print(
        f"\nsink: {total} events in {elapsed:.2f}s = {total / elapsed:,.0f} events/s "
        f"({batches:.0f} batches, {inserts:.2f}s of it in inserts)"
    )


def test_rebalance_between_two_sinks_loses_nothing(topics: Settings) -> None:
    """Two sink instances in one group (sharing one store, as two sinks share one
    server). The second joining revokes the first's partitions while it holds an
    unwritten buffer, which it drops; the second leaving hands everything back. Every
    event still lands exactly once."""
    settings = topics.model_copy(update={"sink": topics.sink.model_copy(update={"batch_age_s": 4.0})})
    group = settings.sink.group_id
    chunks = [[scored(i, "rb") for i in range(k * 1000, (k + 1) * 1000)] for k in range(3)]

    def spread(events: list[ScoredEvent]) -> list[tuple[bytes | None, bytes]]:
        return [(e.event_id.encode(), encode(e)) for e in events]  # every partition gets some

    with ChdbBackend(settings.clickhouse) as store:
        with running_sink(settings, store) as first:
            ends = produce(settings, spread(chunks[0]))
            wait_for(lambda: first.metrics.value("ruleless_sink_messages_total") == 1000, 30, "first sink buffering")
            # Same group and store; its own query port.
            twin = settings.model_copy(update={"sink": settings.sink.model_copy(update={"query_port": 0})})
            with running_sink(twin, store) as second:
                wait_for(lambda: first.metrics.value("ruleless_sink_rebalance_dropped_total") > 0, 30, "a revoke")
                ends.update(produce(settings, spread(chunks[1])))
                wait_for(lambda: store.count() == 2000, 30, "rows while two sinks share the group")
                assert second.metrics.value("ruleless_sink_rows_inserted_total") > 0
            ends.update(produce(settings, spread(chunks[2])))
            wait_for(lambda: all_committed(settings, group, ends), 40, "all committed by the survivor")
        assert store.count() == 3000
        assert store.query(f"SELECT uniqExact(event_id) AS n FROM {store.table}") == [{"n": 3000}]


def test_run_serves_queries_on_the_configured_port(topics: Settings) -> None:
    """The public entry point: ``run(settings, stop, ready)`` in a thread."""
    settings = topics
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop, ready), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        url = f"http://{settings.sink.query_host}:{settings.sink.query_port}"
        produce(settings, keyed([scored(i, "run") for i in range(50)]))
        wait_for(lambda: _count(url, settings) == 50, 30, "50 rows through the query endpoint")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_rows_the_store_refuses_on_their_own_are_dead_lettered_after_bounded_retries(topics: Settings) -> None:
    """Issue 14: a permanent insert error used to be retried forever, stalling the sink.
    After sink.max_attempts the batch is written row by row: the rows the store refuses
    (here an operator's CHECK constraint) are dead-lettered with the reason, the others
    land, and the offsets move on."""
    settings = topics.model_copy(update={"sink": topics.sink.model_copy(update={"max_attempts": 2})})
    events = [scored(i, "ok") for i in range(50)] + [scored(1000 + i, "poison", cmdline="refused-by-check") for i in range(3)]
    with ChdbBackend(settings.clickhouse) as store:
        store.ensure_schema()
        store.execute(f"ALTER TABLE {store.table} ADD CONSTRAINT no_poison CHECK cmdline != 'refused-by-check'")
        ends = produce(settings, keyed(events))
        with running_sink(settings, store) as sink:
            wait_for(lambda: all_committed(settings, settings.sink.group_id, ends), 60, "offsets committed")
            assert sink.metrics.value("ruleless_sink_dead_lettered_total") == 3
        assert store.count() == 50
    letters = read_dead_letters(settings, 3)
    assert all(dl.stage == "sink" and "no_poison" in dl.reason and b"refused-by-check" in dl.raw for _, dl in letters)


def test_the_sink_refuses_a_query_endpoint_beyond_loopback_without_a_configured_token(topics: Settings) -> None:
    from schemas.errors import ConfigError

    exposed = topics.model_copy(update={"sink": topics.sink.model_copy(update={"query_host": "0.0.0.0", "query_token": None})})
    with pytest.raises(ConfigError, match="without a token"):
        with running_sink(exposed):
            pass
