"""Shards persisted in real LanceDB reload to exactly the state that wrote them."""

from __future__ import annotations

from pathlib import Path


from ruleless.settings import load_settings
from streams.scoring import ScoringService
from streams.store import OFFLINE, ShardStore, group_table
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


def test_a_flush_is_one_commit_per_group_however_many_shards_changed(tmp_path: Path) -> None:
    """Issue 17: the cost of a flush follows its groups (a stream's partitions), not its
    shards — one commit per flush for the 12 shards of this stream."""
    svc = service(tmp_path)
    events = fleet_stream(pairs=12, per_pair=100)
    for i in range(0, len(events), 200):
        svc.score(events[i : i + 200])
        assert svc.flush() > 1
    assert svc.store.version(svc.algorithm, OFFLINE) == len(events) // 200


def load(svc: ScoringService, key: str) -> int:
    stored = svc.store.load_one(svc.algorithm, OFFLINE, key)
    assert stored is not None
    return stored.table.num_rows


def test_prune_deletes_expired_rows_and_compaction_keeps_contents(tmp_path: Path) -> None:
    svc = service(tmp_path, retention_days=0.001)  # ~86 s window
    events = fleet_stream(pairs=1, per_pair=600)  # 0.5 s apart: 300 s of events
    svc.score(events)
    svc.flush()
    key = events[0].shard_key
    before = load(svc, key)
    pruned = svc.engine.prune()
    svc.flush()
    assert load(svc, key) == before - pruned
    svc.store.compact()
    assert pruned > 0
    assert load(svc, key) == before - pruned
    assert len(svc.engine.shards[key]) + 1 == load(svc, key)  # + the meta row
    assert svc.store._db.open_table(group_table(svc.algorithm, OFFLINE)).count_rows() == load(svc, key), "one row per behaviour"


def test_compaction_keeps_each_shards_position_and_newest_rows(tmp_path: Path) -> None:
    from streams.store import Position

    svc = service(tmp_path)
    events = fleet_stream(pairs=3, per_pair=400, seed=2)
    positions = [Position("raw/0", i) for i in range(len(events))]
    for i in range(0, len(events), 100):  # many small merges
        svc.score_new(events[i : i + 100], positions[i : i + 100])
        svc.flush()
    keys = sorted({e.shard_key for e in events})
    before = {k: svc.store.load_one(svc.algorithm, "raw/0", k) for k in keys}
    svc.store._touched.add(group_table(svc.algorithm, "raw/0"))
    svc.store.compact()
    after = ShardStore(str(tmp_path)).load(svc.algorithm, "raw/0", keys)
    for k in keys:
        assert after[k].position == before[k].position  # type: ignore[union-attr]
        assert after[k].table.sort_by("key").equals(before[k].table.sort_by("key"))  # type: ignore[union-attr]


def test_group_table_names_are_unambiguous() -> None:
    assert group_table("seed", "raw/1") != group_table("seed", "raw_1")
    assert group_table("seed", "raw/1") != group_table("evidence", "raw/1")


def test_shards_of_the_one_table_per_shard_layout_are_moved_into_their_group_once(tmp_path: Path) -> None:
    """A data directory written before groups existed keeps its baselines: each shard's
    table is read the first time the shard is needed, written into its group, dropped."""
    import lancedb
    import pyarrow as pa

    from streams.store import Position, legacy_table

    events = fleet_stream(pairs=2, per_pair=300, seed=6)
    half = len(events) // 2
    positions = [Position("raw/0", i) for i in range(len(events))]
    continuous = service(tmp_path / "a")
    expected = [s.score for s in continuous.score_new(events, positions)[0]]

    old = service(tmp_path / "b")
    got = [s.score for s in old.score_new(events[:half], positions[:half])[0]]
    db = lancedb.connect(str(tmp_path / "b"))
    for key, shard in old.engine.shards.items():  # as the older release stored them
        rows = shard.to_table()
        n = rows.num_rows
        rows = rows.append_column("_seq", pa.array([1] * n, pa.int64())).append_column(
            "_source", pa.array(["raw/0"] * n)).append_column("_offset", pa.array([old.positions[key].offset] * n, pa.int64()))
        db.create_table(legacy_table(old.algorithm, key), rows)

    new = service(tmp_path / "b")
    scored, skipped = new.score_new(events[half - 50 :], positions[half - 50 :])
    assert skipped == 50, "the moved positions are trusted"
    assert got + [s.score for s in scored] == expected
    assert not [n for n in db.list_tables().tables if not n.startswith(("shards.", "_"))], "the old tables are dropped"
