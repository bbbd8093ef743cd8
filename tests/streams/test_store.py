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


def logged(path: Path, **engine: object) -> ScoringService:
    """A stream worker's store: flushes append to each group's change log."""
    settings = load_settings(lancedb={"uri": str(path)}, engine={"algorithm": "evidence", **engine})
    return ScoringService(settings, ShardStore(str(path), change_log=True))


def stored_rows(path: Path, svc: ScoringService, keys: list[str]) -> dict[str, tuple[object, list[dict]]]:
    found = ShardStore(str(path)).load(svc.algorithm, "raw/0", keys)
    return {k: (s.position, s.table.sort_by("key").to_pylist()) for k, s in found.items()}


def test_a_change_log_store_holds_what_a_merging_store_holds_before_and_after_folding(tmp_path: Path) -> None:
    """Issue 17: appending each flush and folding at compaction stores exactly what
    merging every flush stores — rows, positions, and expired rows gone — and a new
    owner scores on from it exactly as from the merged one."""
    from streams.store import DELTA_PREFIX, Position

    import msgspec

    from tests.factories import WORKLOADS, workload_stream

    # ~7 days of events, 1.5 days' retention: each shard runs one kind of workload for
    # the first days and another after, so expiry deletes rows at a day boundary.
    first, then = list(WORKLOADS)[:2]
    events = [e for w in ("a", "b") for e in workload_stream("org0", w, first, 300, 3)]
    events += [e for w in ("a", "b") for e in workload_stream("org0", w, then, 700, 3)]
    events = [msgspec.structs.replace(e, ts=e.ts + i * 300.0) for i, e in enumerate(events)]
    events.sort(key=lambda e: e.ts)
    positions = [Position("raw/0", i) for i in range(len(events))]
    keys = sorted({e.shard_key for e in events})
    settings = load_settings(engine={"algorithm": "evidence", "retention_days": 1.5})
    half = len(events) // 2
    stores = {}
    for name, change_log in (("merged", False), ("logged", True)):
        path = tmp_path / name
        svc = ScoringService(settings.model_copy(update={"lancedb": settings.lancedb.model_copy(update={"uri": str(path)})}),
                             ShardStore(str(path), change_log=change_log))
        for i in range(0, half, 100):
            for e in events[i : i + 100]:
                svc.partition_of[e.shard_key] = "raw/0"
            svc.score_new(events[i : i + 100], positions[i : i + 100])
            svc.flush()
        stores[name] = (path, svc)
    (merged_path, merged), (log_path, log) = stores["merged"], stores["logged"]
    delta = log.store._open(DELTA_PREFIX + group_table(log.algorithm, "raw/0"))
    assert delta is not None and delta.count_rows() > 0, "flushes were appended"
    assert log.store._open(group_table(log.algorithm, "raw/0")) is not None, "expiry folded and merged"
    assert stored_rows(log_path, log, keys) == stored_rows(merged_path, merged, keys)
    assert log.compact() == 1
    assert log.store._open(DELTA_PREFIX + group_table(log.algorithm, "raw/0")).count_rows() == 0, "compaction folded the log"
    assert stored_rows(log_path, log, keys) == stored_rows(merged_path, merged, keys)

    def scores_after(path: Path) -> list[float]:
        svc = ScoringService(settings.model_copy(update={"lancedb": settings.lancedb.model_copy(update={"uri": str(path)})}))
        for e in events:
            svc.partition_of[e.shard_key] = "raw/0"
        scored, skipped = svc.score_new(events[half:], positions[half:])
        return [s.score for s in scored]

    assert scores_after(log_path) == scores_after(merged_path)


def test_a_fold_interrupted_between_its_two_commits_loses_and_doubles_nothing(tmp_path: Path) -> None:
    from streams.store import DELTA_PREFIX, Position

    svc = logged(tmp_path)
    events = fleet_stream(pairs=2, per_pair=300, seed=4)
    positions = [Position("raw/0", i) for i in range(len(events))]
    for e in events:
        svc.partition_of[e.shard_key] = "raw/0"
    for i in range(0, len(events), 150):
        svc.score_new(events[i : i + 150], positions[i : i + 150])
        svc.flush()
    keys = sorted({e.shard_key for e in events})
    before = stored_rows(tmp_path, svc, keys)
    name = group_table(svc.algorithm, "raw/0")
    delta = svc.store._open(DELTA_PREFIX + name)
    svc.store._merge(name, __import__("streams.store", fromlist=["_newest"])._newest(delta.to_arrow()), "")  # the fold's first commit only
    assert stored_rows(tmp_path, svc, keys) == before
    svc.store._fold(name)
    assert stored_rows(tmp_path, svc, keys) == before
    assert svc.store._open(DELTA_PREFIX + name).count_rows() == 0
