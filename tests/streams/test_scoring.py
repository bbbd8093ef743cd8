"""ScoringService positions: a shard knows which input events it has learned (issue 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruleless.settings import load_settings
from schemas.events import RawEvent
from streams.scoring import ScoringService
from streams.store import Position
from tests.factories import fleet_stream


def service(path: Path, algorithm: str = "seed") -> ScoringService:
    return ScoringService(load_settings(lancedb={"uri": str(path)}, engine={"algorithm": algorithm}))


def partition_positions(events: list[RawEvent], topic: str = "raw") -> list[Position]:
    """Positions as a 2-partition topic would give them: per-shard partition, offsets in order."""
    next_offset = {0: 0, 1: 0}
    out = []
    for e in events:
        part = sum(e.shard_key.encode()) % 2
        out.append(Position(f"{topic}/{part}", next_offset[part]))
        next_offset[part] += 1
    return out


@pytest.mark.parametrize("algorithm", ["seed", "evidence"])
def test_a_new_owner_skips_what_the_flushed_shard_learned_and_scores_the_rest_exactly(
    tmp_path: Path, algorithm: str
) -> None:
    events = fleet_stream(pairs=6, per_pair=300, seed=2)
    positions = partition_positions(events)
    expected = {s.event_id: s.score for s in service(tmp_path / "one", algorithm).score(events)}

    first = service(tmp_path / "two", algorithm)
    flushed = 1000
    first.score_new(events[:flushed], positions[:flushed])
    first.flush()
    first.score_new(events[flushed:1400], positions[flushed:1400])  # scored, never flushed: lost
    # The new owner reads from an older committed offset: 600..1000 are re-delivered.
    second = service(tmp_path / "two", algorithm)
    scored, skipped = second.score_new(events[600:], positions[600:])
    assert skipped == flushed - 600
    assert [s.event_id for s in scored] == [e.event_id for e in events[flushed:]]
    assert {s.event_id: s.score for s in scored} == {k: expected[k] for k in (e.event_id for e in events[flushed:])}


def test_position_is_written_with_the_learning_in_one_commit(tmp_path: Path) -> None:
    svc = service(tmp_path)
    events = fleet_stream(pairs=1, per_pair=200)
    key = events[0].shard_key
    svc.score_new(events[:100], [Position("raw/3", i) for i in range(100)])
    svc.flush()
    version = svc.store.version(svc.algorithm, "raw/3")
    svc.score_new(events[100:], [Position("raw/3", i) for i in range(100, 200)])
    svc.flush()
    assert svc.store.version(svc.algorithm, "raw/3") == version + 1
    stored = svc.store.load_one(svc.algorithm, "raw/3", key)
    assert stored is not None and stored.position == Position("raw/3", 199)
    assert not any(name.startswith("_") for name in stored.table.column_names)


def test_another_partition_or_topic_is_never_skipped() -> None:
    at = Position("raw/1", 50)
    assert at.covers("raw/1", 50) and at.covers("raw/1", 0)
    assert not at.covers("raw/1", 51)
    assert not at.covers("raw/2", 10)
    assert not at.covers("raw-v2/1", 10)


def test_a_position_of_another_topic_incarnation_is_discarded_not_trusted(tmp_path: Path) -> None:
    """Issue 14: after an embedded broker restart (or a topic re-created) offsets start
    at 0 again; a shard that learned up to offset 199 of the old topic must score the new
    topic's offsets 0..199, not skip them as already learned."""
    from streams.store import position_source

    events = fleet_stream(pairs=1, per_pair=400, seed=9)
    old, new = position_source("raw", 0, "topicA"), position_source("raw", 0, "topicB")
    assert (old, new) == ("raw/0#topicA", "raw/0#topicB") and position_source("raw", 0) == "raw/0"
    first = service(tmp_path)
    first.score_new(events[:200], [Position(old, i) for i in range(200)])
    first.flush()

    again = service(tmp_path)  # the same incarnation: everything already learned is skipped
    assert again.score_new(events[:200], [Position(old, i) for i in range(200)]) == ([], 200)

    after = service(tmp_path)
    scored, skipped = after.score_new(events[200:], [Position(new, i) for i in range(200)])
    assert skipped == 0 and len(scored) == 200
    assert after.positions_discarded == 1
    after.flush()
    assert after.store.load_one(after.algorithm, "raw/0", events[0].shard_key).position == Position(new, 199)  # type: ignore[union-attr]


def test_an_unreadable_shard_is_refused_loudly_never_taken_as_empty(tmp_path: Path) -> None:
    """Issue 14: an unreadable LanceDB table used to load as "no shard": an empty
    baseline, then an alert storm. Its events are now refused (the worker dead-letters
    them), the other shards are scored, and offline scoring stops with the reason."""
    from schemas.errors import ShardUnreadable
    from streams.store import group_table

    events = fleet_stream(pairs=2, per_pair=100, seed=4)
    keys = sorted({e.shard_key for e in events})
    broken = keys[0]
    first = service(tmp_path)
    # The broken shard's partition holds only it.
    first.score_new(events, [Position("raw/0" if e.shard_key == broken else "raw/1", i) for i, e in enumerate(events)])
    first.flush()
    for data in (tmp_path / f"{group_table(first.algorithm, 'raw/0')}.lance" / "data").iterdir():
        data.write_bytes(b"not a lance file")

    later = fleet_stream(pairs=2, per_pair=10, seed=5)
    after = service(tmp_path)
    scored, skipped = after.score_new(later, [Position("raw/0" if e.shard_key == broken else "raw/1", 1000 + i) for i, e in enumerate(later)])
    refused = after.take_refused()
    assert skipped == 0
    assert {e.shard_key for e, _ in refused} == {broken} and all("cannot be read" in why for _, why in refused)
    assert {s.shard_key for s in scored} == set(keys) - {broken}
    assert len(scored) + len(refused) == len(later)
    with pytest.raises(ShardUnreadable, match="cannot be read"):
        after.score([e for e in later if e.shard_key == broken])


def test_a_stale_owner_writes_nothing_once_a_newer_owner_claimed_its_partition(tmp_path: Path) -> None:
    events = fleet_stream(pairs=6, per_pair=100, seed=3)
    positions = partition_positions(events)
    stale, fresh = service(tmp_path), service(tmp_path)
    stale.claim(["raw/0", "raw/1"], "stale")
    stale.score_new(events[:300], positions[:300])
    assert stale.flush() > 0 and stale.take_fenced() == []

    fresh.claim(["raw/0"], "fresh")  # a rebalance gave partition 0 to a new owner
    before = {src: fresh.store.version(fresh.algorithm, src) for src in ("raw/0", "raw/1")}
    stale.score_new(events[300:], positions[300:])
    written = stale.flush()

    fenced = stale.take_fenced()
    on_0 = {key for key, src in stale.partition_of.items() if src == "raw/0"}
    assert fenced and set(fenced) == on_0, "every shard of the claimed partition is refused, only those"
    assert stale.lost == {"raw/0"}
    assert written == len(stale.partition_of) - len(on_0)
    after = {src: fresh.store.version(fresh.algorithm, src) for src in before}
    assert after["raw/0"] == before["raw/0"], "a refused write reached LanceDB"
    assert after["raw/1"] == before["raw/1"] + 1, "the partition still held was written, in one commit"


def test_claims_count_up_and_the_latest_claim_wins(tmp_path: Path) -> None:
    from streams.store import ShardStore

    store = ShardStore(str(tmp_path))
    assert store.claim(["raw/0", "raw/1"], "a") == {"raw/0": 1, "raw/1": 1}
    assert store.claim(["raw/1"], "b") == {"raw/1": 2}
    assert store.holds({"raw/0": 1, "raw/1": 1}, "a") == {"raw/0"}
    assert store.holds({"raw/1": 2}, "b") == {"raw/1"}
    assert store.holds({"raw/1": 2}, "a") == set(), "the generation alone is not the claim: the owner must match"


def test_a_shard_loaded_for_events_it_already_learned_is_not_idle(tmp_path: Path) -> None:
    """A new owner re-reading a partition skips what its shards learned; the shards it
    loaded for that were taken for idle and evicted right away — and loaded again for
    the next batch, and the next (the soak run's replacement worker did this for 1,000
    shards per batch)."""
    import time

    events = fleet_stream(pairs=3, per_pair=100, seed=8)
    positions = [Position("raw/0", i) for i in range(len(events))]
    first = service(tmp_path)
    first.score_new(events, positions)
    first.flush()
    second = service(tmp_path)
    before = time.monotonic()
    assert second.score_new(events[:150], positions[:150]) == ([], 150)
    assert second.idle_since(before) == []
