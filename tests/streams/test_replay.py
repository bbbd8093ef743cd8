"""`ruleless replay` against the real broker and LanceDB (issue 5)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from ruleless.kafka import consumer, producer, topic_incarnation
from ruleless.settings import Settings, child_env
from schemas.errors import ReplayError
from schemas.events import RawEvent, decode_scored, encode
from streams.replay import parse_shards, parse_since, replay
from streams.scoring import ScoringService
from streams.store import Position, ShardStore, position_source
from tests.factories import event, fleet_stream
from tests.processes import RULELESS, drain, ruleless_process

pytestmark = pytest.mark.integration

MALFORMED = [b"not json", b'{"ts": 1.0, "org_id": "../x", "workload": "w"}']


def publish(settings: Settings, events: list[RawEvent], timestamp_ms: int | None = None, junk: bool = True) -> dict[str, int]:
    """Produce in order; returns each shard's partition (read back from delivery reports)."""
    prod = producer(settings.kafka)
    partitions: dict[str, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        partitions[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    extra = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
    for i, e in enumerate(events):
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e), on_delivery=delivered, **extra)
        if junk and i % 500 == 0:
            prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=MALFORMED[i % 2], **extra)
    assert prod.flush(60) == 0
    return partitions


def learned(store: ShardStore, algorithm: str, key: str) -> list[dict[str, object]]:
    stored = store.find(algorithm, key)
    assert stored is not None, key
    return stored.table.sort_by("key").to_pylist()


def offline(settings: Settings, events: list[RawEvent], path: Path) -> ScoringService:
    svc = ScoringService(settings.model_copy(update={"lancedb": settings.lancedb.model_copy(update={"uri": str(path)})}))
    for i in range(0, len(events), 777):  # batch boundaries must not matter
        svc.score(events[i : i + 777])
        svc.flush()
    return svc


@pytest.mark.parametrize("algorithm", ["seed", "evidence"])
def test_replay_rebuilds_every_shard_as_offline_scoring_learns_it(topics: Settings, tmp_path: Path, algorithm: str) -> None:
    topics = topics.model_copy(update={"engine": topics.engine.model_copy(update={"algorithm": algorithm})})
    events = fleet_stream(pairs=8, per_pair=400, seed=11)
    partitions = publish(topics, events)
    store = ShardStore(topics.lancedb.uri)
    stale = ScoringService(topics, store=store)  # an old baseline of one shard, to be replaced
    old_stuff = event(ts=1.0, org_id=events[0].org_id, workload=events[0].workload, cmdline="old stuff")
    stale.score_new([old_stuff], [Position(position_source(topics.topics.raw, partitions[old_stuff.shard_key]), 0)])
    stale.flush()

    summary = replay(topics)

    junk = (len(events) - 1) // 500 + 1
    assert (summary.read, summary.learned, summary.invalid) == (len(events) + junk, len(events), junk)
    assert sum(r.size for r in summary.ranges) == summary.read
    expected = offline(topics, events, tmp_path / "offline")
    keys = sorted({e.shard_key for e in events})
    assert sorted(summary.written) == keys
    for key in keys:
        assert learned(store, algorithm, key) == learned(expected.store, algorithm, key), key
        # Stored in the group of the partition the worker reads it from
        loaded = store.load_one(algorithm, f"{topics.topics.raw}/{partitions[key]}", key)
        assert loaded is not None and loaded.position is not None
        # (the worker's own form, with the raw topic's id: it skips exactly this)
        incarnation = topic_incarnation(topics.kafka, topics.topics.raw)
        assert loaded.position.source == position_source(topics.topics.raw, partitions[key], incarnation) == \
            f"{topics.topics.raw}/{partitions[key]}#{incarnation}"


def test_replay_of_selected_shards_from_a_time_leaves_the_others(topics: Settings, tmp_path: Path) -> None:
    events = fleet_stream(pairs=5, per_pair=300, seed=12)
    cut = time.time() - 3600
    old, new = events[: len(events) // 2], events[len(events) // 2 :]
    partitions = publish(topics, old, timestamp_ms=int((cut - 600) * 1000), junk=False)
    publish(topics, new, timestamp_ms=int((cut + 600) * 1000), junk=False)
    keys = sorted({e.shard_key for e in events})
    chosen, untouched = set(keys[:2]), keys[2]
    store = ShardStore(topics.lancedb.uri)
    algorithm = topics.engine.algorithm
    before = offline(topics, [e for e in events if e.shard_key == untouched], tmp_path / "x")
    group = f"{topics.topics.raw}/{partitions[untouched]}"
    store.replace(algorithm, group, {untouched: before.store.find(algorithm, untouched)})  # type: ignore[dict-item]
    baseline = learned(store, algorithm, untouched)

    summary = replay(topics, since=cut, shards=chosen)

    assert sorted(summary.written) == sorted(chosen)
    assert summary.before_since == sum(e.shard_key in chosen for e in old)
    assert summary.other_shards == sum(e.shard_key not in chosen for e in events)
    assert summary.learned == sum(e.shard_key in chosen for e in new)
    expected = offline(topics, [e for e in new if e.shard_key in chosen], tmp_path / "offline")
    for key in chosen:
        assert learned(store, algorithm, key) == learned(expected.store, algorithm, key)
    assert learned(store, algorithm, untouched) == baseline


def test_workers_resume_on_the_rebuilt_baseline_where_their_group_stopped(topics: Settings, tmp_path: Path) -> None:
    """Replay stops at the worker group's committed offsets; a worker started after it
    scores the rest exactly as one uninterrupted offline run does."""
    events = fleet_stream(pairs=6, per_pair=400, seed=13)
    partitions = publish(topics, events, junk=False)
    # The group had scored about half of each partition before it was stopped.
    sizes = Counter(partitions[e.shard_key] for e in events)
    half = [TopicPartition(topics.topics.raw, p, n // 2) for p, n in sizes.items()]
    group = consumer(topics.kafka, topics.worker.group_id)
    group.commit(offsets=half, asynchronous=False)
    group.close()

    summary = replay(topics)
    assert {(r.partition, r.end) for r in summary.ranges if r.capped} == {(tp.partition, tp.offset) for tp in half}
    resumed = len(events) - summary.learned
    assert resumed == sum(n - n // 2 for n in sizes.values())

    with ruleless_process(topics, "worker", log=tmp_path / "worker.log"):
        got = drain(topics, [topics.topics.scored], lambda g: len(g[topics.topics.scored]) >= resumed, timeout=90)
    scored = {s.event_id: s.score for s in map(decode_scored, got[topics.topics.scored])}
    whole = ScoringService(topics.model_copy(update={"lancedb": topics.lancedb.model_copy(update={"uri": str(tmp_path / "whole")})}))
    expected = {s.event_id: s.score for s in whole.score(events)}
    assert len(scored) == resumed
    assert scored == {k: expected[k] for k in scored}


def test_replay_arguments_are_checked(topics: Settings) -> None:
    assert parse_since("1767225600") == 1767225600.0
    assert parse_since("2026-01-01T00:00:00") == 1767225600.0
    assert parse_shards(["acme/web", "acme/db"]) == {"acme/web", "acme/db"}
    for bad in ("acme", "../x/web", "acme/"):
        with pytest.raises(ReplayError):
            parse_shards([bad])
    with pytest.raises(ReplayError):
        replay(topics, since=1.0, from_offset=3)
    env = {**child_env(topics), "PATH": "/usr/bin:/bin"}
    cli = subprocess.run([RULELESS, "replay", "--shard", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "org_id/workload" in cli.stderr


def test_replay_cli_shows_progress_and_a_summary(topics: Settings) -> None:
    events = fleet_stream(pairs=3, per_pair=200, seed=14)
    publish(topics, events, junk=False)
    env = {**child_env(topics), "PATH": "/usr/bin:/bin", "COLUMNS": "160"}
    cli = subprocess.run([RULELESS, "replay", "--shard", events[0].shard_key], env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "ev/s" in cli.stderr and f"{len(events)}/{len(events)}" in cli.stderr
    assert "events learned into 1 shards" in cli.stderr
