"""Shards persisted in real LanceDB reload to exactly the state that wrote them."""

from __future__ import annotations

from pathlib import Path

from ruleless.settings import load_settings
from streams.scoring import ScoringService
from streams.store import table_name
from tests.factories import fleet_stream


def service(path: Path, **engine: object) -> ScoringService:
    """The seed algorithm unless told otherwise: its rows map one-to-one to behaviours."""
    return ScoringService(load_settings(lancedb={"uri": str(path)}, engine={"algorithm": "seed", **engine}))


def test_reloaded_shards_score_like_the_ones_that_wrote_them(tmp_path: Path) -> None:
    events = fleet_stream(pairs=6, per_pair=300)
    half = len(events) // 2
    continuous = service(tmp_path / "a")
    expected = [s.score for s in continuous.score(events)]

    first = service(tmp_path / "b")
    got = [s.score for s in first.score(events[:half])]
    first.flush()
    second = service(tmp_path / "b")  # a new owner, e.g. after a rebalance
    got += [s.score for s in second.score(events[half:])]
    assert got == expected


def test_flush_writes_batches_not_events(tmp_path: Path) -> None:
    svc = service(tmp_path)
    events = fleet_stream(pairs=1, per_pair=500)
    for i in range(0, 500, 100):
        svc.score(events[i : i + 100])
        svc.flush()
    key = events[0].shard_key
    assert svc.store.version(svc.algorithm, key) <= 1 + 2 * 5  # create + one merge per flush


def test_prune_deletes_expired_rows_and_compaction_keeps_contents(tmp_path: Path) -> None:
    svc = service(tmp_path, retention_days=0.001)  # ~86 s window
    events = fleet_stream(pairs=1, per_pair=600)  # 0.5 s apart: 300 s of events
    svc.score(events)
    svc.flush()
    key = events[0].shard_key
    before = svc.store.load(svc.algorithm, key).num_rows
    pruned = svc.engine.prune()
    svc.flush()
    svc.store.compact()
    after = svc.store.load(svc.algorithm, key)
    assert pruned > 0
    assert after.num_rows == before - pruned
    assert len(svc.engine.shards[key]) + 1 == after.num_rows  # + the meta row


def test_table_names_are_unambiguous() -> None:
    assert table_name("seed", "a__b/c") != table_name("seed", "a/b__c")
