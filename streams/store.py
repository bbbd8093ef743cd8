"""LanceDB persistence of shards: the durable store of a shard, never a per-event query.

Shards are stored by *group*: one table per (algorithm, group) holds the rows of every
shard in it. A stream worker's group is the input partition a shard is read from
("topic/partition"), so each table has one writer — the partition's owner — and a flush
costs one LanceDB commit per partition with changes, however many shards changed
(issue 17: one commit per shard made a flush of 1,000 shards take longer than its
interval). Offline scoring uses the group :data:`OFFLINE`.

A flush writes each changed shard's rows into its group in one ``merge_insert`` per
group (upserts by shard and key, expired keys deleted in the same commit): ~50 ms for a
6,000-row flush into a 500,000-row table here, against ~7-16 ms per shard before.
:meth:`ShardStore.compact` merges a table's small files and deletion files periodically.

A stream worker's store keeps a *change log* instead (``change_log=True``): a flush
appends its rows to the group's delta table (``delta.`` + the group table), one commit
whose cost follows the rows written, not the table (a ``merge_insert`` joins against
the whole table: 0.2-0.9 s for 120,000 rows into 1.2 M here, an append ~0.02 s).
Readers take the newest row of each (shard, key) over both tables. Compaction folds the
delta into the group table (one ``merge_insert``) and then deletes what it folded; a
flush that deletes rows (expiry) folds first and merges as above, so no older version
of a deleted row can survive in the delta.

Every write also records each shard's *position*: the input partition and offset of the
last event its learning includes (issue 5). The position travels on the shard's rows in
the same commit as its learning, so a reloaded shard says exactly which events it has
already learned — what lets a new owner after a crash skip them instead of learning them
twice.

Writers are fenced (issue 14): a worker *claims* each input partition it is assigned
(:meth:`ShardStore.claim`, one generation above the last claim, in the ``_owners``
table), and checks its claim before it writes a partition's group
(:meth:`ShardStore.holds`). A worker that stalled past its session timeout, whose
partitions a newer owner claimed and loaded meanwhile, finds its claim superseded and
writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import ShardUnreadable
from streams.algorithm import Changes
from streams.priors import HASH_BITS

if TYPE_CHECKING:
    import lancedb

log = logging.getLogger(__name__)

# The group of shards scored outside a stream (`ruleless score`, evaluations).
OFFLINE = "offline"

# Bookkeeping columns the store adds to every algorithm's rows (never seen by algorithms).
SHARD_COLUMN = "_shard"
SEQ_COLUMN = "_seq"
SOURCE_COLUMN = "_source"
OFFSET_COLUMN = "_offset"
_BOOKKEEPING = [
    pa.field(SHARD_COLUMN, pa.string()),
    pa.field(SEQ_COLUMN, pa.int64()),
    pa.field(SOURCE_COLUMN, pa.string()),
    pa.field(OFFSET_COLUMN, pa.int64()),
]
_BOOKKEEPING_NAMES = [f.name for f in _BOOKKEEPING]

def position_source(topic: str, partition: int, incarnation: str = "") -> str:
    """A Position's ``source``: "topic/partition", with "#incarnation" (the topic id) when
    the broker has one, so an offset is only ever compared within one incarnation."""
    return f"{topic}/{partition}#{incarnation}" if incarnation else f"{topic}/{partition}"


@dataclass(frozen=True, slots=True)
class Position:
    """The last input event a shard's learning includes: ``source`` is
    :func:`position_source` of where it was read."""

    source: str
    offset: int

    def covers(self, source: str, offset: int) -> bool:
        """True when the event at (source, offset) is already in the shard's learning."""
        return source == self.source and offset <= self.offset


@dataclass(frozen=True, slots=True)
class Stored:
    """A shard as read back: its learned rows (the algorithm's schema) and its position."""

    table: pa.Table
    position: Position | None


# The table of partition claims: one row per input partition ("topic/partition"), with
# the generation of its latest claim and who made it.
OWNERS_TABLE = "_owners"
_OWNERS_SCHEMA = pa.schema([
    pa.field("source", pa.string()), pa.field("generation", pa.int64()),
    pa.field("owner", pa.string()), pa.field("claimed_at", pa.float64()),
])  # fmt: skip

GROUP_PREFIX = "shards."
PRIORS_PREFIX = "priors."
DELTA_PREFIX = "delta."


def claim_key(source: str) -> str:
    """The partition a position's source names, without its topic incarnation: claims
    outlive a topic being re-created."""
    return source.split("#", 1)[0]


def group_table(algorithm: str, group: str) -> str:
    """A group's table: readable, and unambiguous (the hash tells apart groups whose
    names differ only in characters a table name cannot hold)."""
    digest = hashlib.blake2b(group.encode(), digest_size=4).hexdigest()
    return f"{GROUP_PREFIX}{algorithm}.{re.sub(r'[^A-Za-z0-9_-]', '_', group)}.{digest}"


def legacy_table(algorithm: str, shard_key: str) -> str:
    """The one-table-per-shard name of releases before groups (read once, then moved)."""
    org_id, workload = shard_key.split("/", 1)
    digest = hashlib.blake2b(shard_key.encode(), digest_size=4).hexdigest()
    return f"{algorithm}__{org_id}__{workload}__{digest}"


# Default size of each of LanceDB's caches (metadata, index) for a store (settings:
# lancedb.cache_mib).
DEFAULT_CACHE_MIB = 64


class ShardStore:
    def __init__(self, uri: str, cache_mib: int = DEFAULT_CACHE_MIB, change_log: bool = False):
        self.uri = uri
        self.change_log = change_log
        size = cache_mib << 20
        import lancedb  # (here: a second to import, and `ruleless score` without --state never needs it)

        self._db = lancedb.connect(uri, session=lancedb.Session(index_cache_size_bytes=size, metadata_cache_size_bytes=size))
        self._touched: set[str] = set()
        # Highest sequence number per group table, as last read or written here.
        self._seq: dict[str, int] = {}
        # Shard tables of older releases still to be moved into their group (listed once).
        self._legacy: set[str] | None = None

    def ping(self) -> None:
        """Raise unless the store answers (a directory listing; readiness probes)."""
        self._db.list_tables(limit=1)

    # -- ownership (fencing) -------------------------------------------------------------

    def claim(self, sources: list[str], owner: str) -> dict[str, int]:
        """Claim input partitions for ``owner``: each gets the generation one above its
        last claim. Returns the generation ``owner`` now holds per source; a source that
        another owner claimed at the same moment (with the same or a higher generation)
        maps to the generation tried, which :meth:`holds` then refuses."""
        if not sources:
            return {}
        table = self._owners()
        current = self.claims()
        tried = {src: current.get(src, (0, ""))[0] + 1 for src in sources}
        rows = pa.table({
            "source": list(tried), "generation": list(tried.values()),
            "owner": [owner] * len(tried), "claimed_at": [time.time()] * len(tried),
        }, schema=_OWNERS_SCHEMA)  # fmt: skip
        # Conditional on the row still being older: of two claims of one generation, one wins.
        (table.merge_insert("source").when_matched_update_all(where="target.generation < source.generation")
         .when_not_matched_insert_all().execute(rows))  # fmt: skip
        return tried

    def claims(self) -> dict[str, tuple[int, str]]:
        """Every partition's latest claim: source -> (generation, owner)."""
        rows = self._owners().to_arrow().to_pylist()
        return {r["source"]: (int(r["generation"]), r["owner"]) for r in rows}

    def holds(self, held: dict[str, int], owner: str) -> set[str]:
        """The sources of ``held`` whose latest claim is still this owner's generation."""
        latest = self.claims()
        return {src for src, gen in held.items() if latest.get(src) == (gen, owner)}

    def _owners(self) -> lancedb.table.Table:
        try:
            return self._db.open_table(OWNERS_TABLE)
        except (FileNotFoundError, ValueError):
            return self._db.create_table(OWNERS_TABLE, schema=_OWNERS_SCHEMA, exist_ok=True)

    # -- reading -------------------------------------------------------------------------

    def load(self, algorithm: str, group: str, keys: Iterable[str]) -> dict[str, Stored]:
        """The stored shards among ``keys`` (a shard with no history is absent), read in
        one query. Raises :class:`ShardUnreadable` when the group's table exists but
        cannot be read: its shards must not be scored against an empty baseline."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        name = group_table(algorithm, group)
        where = f"{SHARD_COLUMN} IN ({_quoted(keys)})"
        parts = [rows for table in (name, DELTA_PREFIX + name) if (rows := self._read(table, where, group)) is not None]
        stored = _by_shard(_newest(pa.concat_tables(parts))) if parts else {}
        missing = [key for key in keys if key not in stored]
        if missing:
            stored.update(self._move_legacy(algorithm, group, missing))
        return stored

    def _read(self, name: str, where: str, group: str) -> pa.Table | None:
        """Rows of table ``name`` matching ``where``; None when there is no such table.
        Raises :class:`ShardUnreadable` when it exists but cannot be read: its shards must
        not be scored against an empty baseline."""
        table = self._open(name)
        if table is None:
            return None
        try:
            return table.search().where(where, prefilter=True).limit(None).to_arrow()
        except Exception as exc:  # noqa: BLE001 - which one depends on what broke
            raise ShardUnreadable(f"group {group}: LanceDB table {name} exists but cannot be read ({type(exc).__name__}: {exc})") from None

    def load_one(self, algorithm: str, group: str, key: str) -> Stored | None:
        return self.load(algorithm, group, [key]).get(key)

    def groups(self, algorithm: str) -> list[str]:
        """The group tables of ``algorithm`` (names, for tools that read every shard)."""
        prefix = f"{GROUP_PREFIX}{algorithm}."
        names = {n.removeprefix(DELTA_PREFIX) for n in self._db.list_tables().tables}  # (a log before its first fold)
        return sorted(n for n in names if n.startswith(prefix))

    def save_priors(self, algorithm: str, day: float, by_org: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """The org priors snapshot ``ruleless score --state`` took on ``day`` (see
        streams.priors: per org, key hashes and counts), replacing the last one: a
        reload scores on with it."""
        orgs = [org for org, (hashes, _) in by_org.items() for _ in range(len(hashes))]
        hashes = np.concatenate([h for h, _ in by_org.values()]) if by_org else np.empty(0, np.uint64)
        counts = np.concatenate([c for _, c in by_org.values()]) if by_org else np.empty(0, np.uint16)
        rows = pa.table({"org": pa.array(orgs, pa.string()), "hash": pa.array(hashes, pa.uint64()),
                         "count": pa.array(counts, pa.uint16()), "day": pa.array([day] * len(orgs), pa.float64())})  # fmt: skip
        self._db.create_table(f"{PRIORS_PREFIX}{algorithm}", data=rows, mode="overwrite")

    def load_priors(self, algorithm: str) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]] | None:
        table = self._open(f"{PRIORS_PREFIX}{algorithm}")
        if table is None:
            return None
        rows = table.to_arrow()
        if rows.num_rows == 0 or "hash" not in rows.column_names:
            return None
        if pc.max(rows.column("hash")).as_py() >> HASH_BITS:
            return None  # 64-bit hashes of an older release: the next day's snapshot replaces it
        orgs = np.asarray(rows.column("org").to_pylist(), dtype=object)
        hashes = rows.column("hash").to_numpy()
        counts = rows.column("count").to_numpy()
        by_org = {str(org): (hashes[orgs == org], counts[orgs == org]) for org in np.unique(orgs)}
        return float(rows.column("day")[0].as_py()), by_org

    def find(self, algorithm: str, key: str) -> Stored | None:
        """A shard wherever it is stored (reads every group: for tools and tests)."""
        where = f"{SHARD_COLUMN} = {_quoted([key])}"
        for name in self.groups(algorithm):
            parts = [rows for table in (name, DELTA_PREFIX + name) if (rows := self._read(table, where, name)) is not None]
            found = _by_shard(_newest(pa.concat_tables(parts))).get(key)
            if found is not None:
                return found
        return None

    def scan(self, algorithm: str, columns: list[str], where: str) -> Iterator[pa.Table]:
        """Rows of every shard of ``algorithm`` matching ``where``, ``columns`` only, one
        table per group (a periodic scan, never a per-event query). A group's change log
        not yet folded is read too, the newest version of a row winning among those
        that match ``where`` (an older version can match where the newest does not:
        offline readers of a worker's store see at most ``compact_interval_s`` of that)."""
        wanted = list(dict.fromkeys([*columns, SHARD_COLUMN, "key", SEQ_COLUMN]))
        for name in self.groups(algorithm):
            parts = [rows for table in (name, DELTA_PREFIX + name) if (rows := self._read(table, where, name)) is not None]
            if parts:
                rows = pa.concat_tables([p.select(wanted) for p in parts])
                yield (_newest(rows) if len(parts) > 1 else rows).select(columns)

    def _open(self, name: str) -> lancedb.table.Table | None:
        try:
            return self._db.open_table(name)
        except (FileNotFoundError, ValueError):
            return None

    def _move_legacy(self, algorithm: str, group: str, keys: list[str]) -> dict[str, Stored]:
        """Shards still in tables of their own (older releases): read, written into the
        group in one commit, then dropped — once, the first time each is needed."""
        if self._legacy is None:
            self._legacy = {n for n in self._db.list_tables().tables if not n.startswith((GROUP_PREFIX, PRIORS_PREFIX, DELTA_PREFIX)) and n != OWNERS_TABLE}
        found: dict[str, Stored] = {}
        for key in keys:
            name = legacy_table(algorithm, key)
            if name in self._legacy:
                try:
                    found[key] = _legacy_stored(self._db.open_table(name).to_arrow())
                except Exception as exc:  # noqa: BLE001
                    raise ShardUnreadable(f"shard {key}: LanceDB table {name} exists but cannot be read ({type(exc).__name__}: {exc})") from None
        if found:
            self.replace(algorithm, group, found)
            for key in found:
                self._db.drop_table(legacy_table(algorithm, key))
                self._legacy.discard(legacy_table(algorithm, key))
            log.info("moved %d shards from their own tables into group %s", len(found), group)
        return found

    # -- writing -------------------------------------------------------------------------

    def write(self, algorithm: str, group: str, shards: Mapping[str, tuple[Changes, Position | None]]) -> None:
        """Apply changed shards of one group in one commit: upserts by (shard, key) with
        each shard's position on its rows, and its expired rows deleted (the rows it
        upserts are never among them)."""
        upserts = {k: Stored(c.upserts, pos) for k, (c, pos) in shards.items() if c.upserts is not None and c.upserts.num_rows}
        deletes = " OR ".join(
            [f"({SHARD_COLUMN} = {_quoted([k])} AND key IN ({_quoted(c.deletes)}))" for k, (c, _) in shards.items() if c.deletes]
            + [f"({SHARD_COLUMN} = {_quoted([k])} AND ({c.expired}))" for k, (c, _) in shards.items() if c.expired]
        )
        name = group_table(algorithm, group)
        if self.change_log and not deletes:
            if upserts:
                self._append(name, upserts)
            return
        self._fold(name)
        self._merge(name, _rows(upserts, self._next_seq(name)) if upserts else None, deletes)

    def replace(self, algorithm: str, group: str, shards: Mapping[str, Stored]) -> None:
        """Swap shards' whole contents in one commit (replay): their other rows go."""
        name = group_table(algorithm, group)
        self._fold(name)
        self._merge(name, _rows(shards, self._next_seq(name)) if shards else None, f"{SHARD_COLUMN} IN ({_quoted(list(shards))})" if shards else "")

    def _merge(self, name: str, rows: pa.Table | None, delete: str) -> None:
        """One commit: ``rows`` (stamped) upserted by (shard, key); target rows matching
        ``delete`` that are not among them deleted."""
        table = self._open(name)
        if table is None:
            if rows is not None:
                self._db.create_table(name, rows)
                self._touched.add(name)
            return
        if rows is not None:
            merge = table.merge_insert([SHARD_COLUMN, "key"]).when_matched_update_all().when_not_matched_insert_all()
            if delete:
                merge = merge.when_not_matched_by_source_delete(delete)
            merge.execute(rows)
        elif delete:
            table.delete(delete)
        self._touched.add(name)

    def _append(self, name: str, shards: Mapping[str, Stored]) -> None:
        """One commit: ``shards``' rows appended to the group's change log."""
        rows = _rows(shards, self._next_seq(name))
        delta = self._open(DELTA_PREFIX + name)
        if delta is None:
            self._db.create_table(DELTA_PREFIX + name, rows)
        else:
            delta.add(rows)
        self._touched.add(name)

    def _fold(self, name: str) -> int:
        """Move the group's change log into its table: the newest row of each (shard,
        key) merged in (one commit), then the folded rows deleted from the log. A crash
        between the two leaves rows in both, equal: readers take either. Returns rows
        folded."""
        delta = self._open(DELTA_PREFIX + name)
        if delta is None:
            return 0
        logged = delta.to_arrow()
        if logged.num_rows == 0:
            return 0
        top = int(pc.max(logged.column(SEQ_COLUMN)).as_py())
        self._merge(name, _newest(logged), "")
        delta.delete(f"{SEQ_COLUMN} <= {top}")
        return logged.num_rows

    def _next_seq(self, name: str) -> int:
        """The next sequence number of group table ``name`` (over it and its change log)."""
        if name not in self._seq:
            top = 0
            for table in (name, DELTA_PREFIX + name):
                opened = self._open(table)
                if opened is not None:
                    seqs = opened.search().select([SEQ_COLUMN]).limit(None).to_arrow().column(SEQ_COLUMN)
                    top = max(top, int(pc.max(seqs).as_py() or 0) if len(seqs) else 0)
            self._seq[name] = top
        self._seq[name] += 1
        return self._seq[name]

    def compact(self, keep: Callable[[str], bool] | None = None) -> int:
        """Fold each change log written since the last call into its group table, merge
        small files and deletions into larger files, drop versions older than 10
        minutes; returns tables done. ``keep(table name)`` false skips a table (a
        worker's partitions that a newer owner claimed: only their owner folds them)."""
        done = 0
        for name in sorted(self._touched):
            if keep is not None and not keep(name):
                continue
            try:
                self._fold(name)
                for table in (name, DELTA_PREFIX + name):
                    opened = self._open(table)
                    if opened is not None:
                        opened.optimize(cleanup_older_than=timedelta(minutes=10))
                done += 1
            except (FileNotFoundError, ValueError) as exc:
                log.warning("compaction of %s skipped: %s", name, exc)
        self._touched.clear()
        return done

    def version(self, algorithm: str, group: str) -> int:
        return int(self._db.open_table(group_table(algorithm, group)).version)


# -- rows ------------------------------------------------------------------------------------


class NoStore:
    """Where ``ruleless score`` without ``--state`` keeps shards: nowhere. Every shard
    starts empty and nothing is written (the offline path's calls only)."""

    uri = ""

    def load(self, algorithm: str, group: str, keys: Iterable[str]) -> dict[str, Stored]:
        return {}

    def write(self, algorithm: str, group: str, shards: Mapping[str, tuple[Changes, Position | None]]) -> None:
        pass

    def scan(self, algorithm: str, columns: list[str], where: str) -> Iterator[pa.Table]:
        return iter(())

    def save_priors(self, algorithm: str, day: float, by_org: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        pass

    def load_priors(self, algorithm: str) -> None:
        return None

    def compact(self) -> int:
        return 0


def _quoted(keys: list[str]) -> str:
    return ", ".join("'" + k.replace("'", "''") + "'" for k in keys)


def _rows(shards: Mapping[str, Stored], seq: int) -> pa.Table:
    """The shards' rows plus the bookkeeping columns (shard, sequence, position), built
    once for all shards (per-shard columns cost ~0.1 ms a shard: 1 s for 10,000)."""
    tables = [stored.table for stored in shards.values()]
    lengths = np.array([t.num_rows for t in tables], dtype=np.int64)
    positions = [stored.position for stored in shards.values()]
    values = [
        list(shards), [seq] * len(tables),
        [p.source if p else None for p in positions], [p.offset if p else None for p in positions],
    ]
    rows = pa.concat_tables(tables).combine_chunks()  # (often slices of one table: see Engine.take_changes)
    index = np.repeat(np.arange(len(tables)), lengths)
    for field, per_shard in zip(_BOOKKEEPING, values, strict=True):
        rows = rows.append_column(field, pa.array(per_shard, field.type).take(index))
    return rows


def _newest(rows: pa.Table) -> pa.Table:
    """The newest row of each (shard, key), sorted by shard and key (a merge keeps one;
    two writers in fencing's residual window could leave two)."""
    if rows.num_rows == 0:
        return rows
    rows = rows.take(pc.sort_indices(rows, [(SHARD_COLUMN, "ascending"), ("key", "ascending"), (SEQ_COLUMN, "descending")]))
    shard, key = rows.column(SHARD_COLUMN), rows.column("key")
    changed = pc.or_(pc.not_equal(shard.slice(1), shard.slice(0, len(shard) - 1)), pc.not_equal(key.slice(1), key.slice(0, len(key) - 1)))
    first = pa.concat_arrays([pa.array([True]), pc.fill_null(changed, True).combine_chunks()])
    return rows.filter(first)


def _by_shard(newest: pa.Table) -> dict[str, Stored]:
    """Per shard: its live rows in the algorithm's schema, and the position of its last write."""
    out: dict[str, Stored] = {}
    if newest.num_rows == 0:
        return out
    shards = newest.column(SHARD_COLUMN)
    start = 0
    for run in _runs(shards):
        part = newest.slice(start, run - start)
        start = run
        key = part.column(SHARD_COLUMN)[0].as_py()
        seqs = part.column(SEQ_COLUMN)
        last = int(pc.index(seqs, pc.max(seqs)).as_py())
        source, offset = part.column(SOURCE_COLUMN)[last].as_py(), part.column(OFFSET_COLUMN)[last].as_py()
        position = Position(source, int(offset)) if source is not None and offset is not None else None
        out[key] = Stored(part.drop_columns(_BOOKKEEPING_NAMES), position)
    return out


def _runs(values: pa.ChunkedArray) -> list[int]:
    """End indices of the runs of equal values in sorted ``values``."""
    arr = values.combine_chunks()
    changed = pc.not_equal(arr.slice(1), arr.slice(0, len(arr) - 1))
    ends = pc.indices_nonzero(changed).to_pylist()
    return [i + 1 for i in ends] + [len(arr)]


def _legacy_stored(raw: pa.Table) -> Stored:
    """A shard table of an older release: rows with the last write's position on them."""
    old = ["_seq", "_source", "_offset"]
    learned = raw.drop_columns([c for c in old if c in raw.column_names])
    if "_seq" not in raw.column_names or raw.num_rows == 0 or raw.column("_seq").null_count == raw.num_rows:
        return Stored(learned, None)
    seqs = raw.column("_seq")
    last = int(pc.index(seqs, pc.max(seqs)).as_py())
    source, offset = raw.column("_source")[last].as_py(), raw.column("_offset")[last].as_py()
    return Stored(learned, Position(source, int(offset)) if source is not None and offset is not None else None)
