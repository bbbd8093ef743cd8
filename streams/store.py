"""LanceDB persistence of shards: the durable store of a shard, never a per-event query.

One table per (algorithm, org_id, workload). The engine's changes are written in batches
(one merge per shard per flush), tables are compacted periodically, and expired rows are
deleted by key. A shard is read whole when its owner first needs it.

Every write also records the shard's *position*: the input partition and offset of the
last event its learning includes (issue 5). The position columns travel in the same
LanceDB commit as the learning (upserts and deletes are one ``merge_insert``), so a
reloaded shard says exactly which events it has already learned — what lets a new owner
after a crash skip them instead of learning them twice.

Writers are fenced (issue 14): a worker *claims* each input partition it is assigned
(:meth:`ShardStore.claim`, one generation above the last claim, in the ``_owners``
table), and checks its claim before each shard it writes (:meth:`ShardStore.holds`). A
worker that stalled past its session timeout, whose partitions a newer owner claimed and
loaded meanwhile, finds its claim superseded and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import timedelta

from dataclasses import dataclass

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import ShardUnreadable
from streams.algorithm import Changes

log = logging.getLogger(__name__)

# Bookkeeping columns the store adds to every algorithm's rows (never seen by algorithms):
# the flush sequence number of the write, and the position of the shard at that write.
SEQ_COLUMN = "_seq"
SOURCE_COLUMN = "_source"
OFFSET_COLUMN = "_offset"
_POSITION_FIELDS = [
    pa.field(SEQ_COLUMN, pa.int64()),
    pa.field(SOURCE_COLUMN, pa.string()),
    pa.field(OFFSET_COLUMN, pa.int64()),
]


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


def _with_position(table: pa.Table, seq: int, position: Position | None) -> pa.Table:
    """``table`` plus the bookkeeping columns, the same values on every row."""
    n = table.num_rows
    return (
        table.append_column(_POSITION_FIELDS[0], pa.array([seq] * n, pa.int64()))
        .append_column(_POSITION_FIELDS[1], pa.array([position.source if position else None] * n, pa.string()))
        .append_column(_POSITION_FIELDS[2], pa.array([position.offset if position else None] * n, pa.int64()))
    )


def _split_position(table: pa.Table) -> tuple[pa.Table, int, Position | None]:
    """The algorithm's columns, the highest flush sequence, and the position it wrote."""
    if SEQ_COLUMN not in table.column_names:
        return table, 0, None
    learned = table.drop_columns([f.name for f in _POSITION_FIELDS if f.name in table.column_names])
    seqs = table.column(SEQ_COLUMN)
    if table.num_rows == 0 or seqs.null_count == table.num_rows:
        return learned, 0, None
    seq = int(pc.max(seqs).as_py())
    last = table.filter(pc.equal(seqs, seq)).slice(0, 1).to_pylist()[0]
    source, offset = last.get(SOURCE_COLUMN), last.get(OFFSET_COLUMN)
    position = Position(source, int(offset)) if source is not None and offset is not None else None
    return learned, seq, position


# The table of partition claims: one row per input partition ("topic/partition"), with
# the generation of its latest claim and who made it.
OWNERS_TABLE = "_owners"
_OWNERS_SCHEMA = pa.schema([
    pa.field("source", pa.string()), pa.field("generation", pa.int64()),
    pa.field("owner", pa.string()), pa.field("claimed_at", pa.float64()),
])  # fmt: skip


def claim_key(source: str) -> str:
    """The partition a position's source names, without its topic incarnation: claims
    outlive a topic being re-created."""
    return source.split("#", 1)[0]


def table_name(algorithm: str, shard_key: str) -> str:
    """Readable and unambiguous: names may contain "__", the hash tells them apart."""
    org_id, workload = shard_key.split("/", 1)
    digest = hashlib.blake2b(shard_key.encode(), digest_size=4).hexdigest()
    return f"{algorithm}__{org_id}__{workload}__{digest}"


# Default size of each of LanceDB's caches (metadata, index) for a store (settings:
# lancedb.cache_mib).
DEFAULT_CACHE_MIB = 64


class ShardStore:
    def __init__(self, uri: str, cache_mib: int = DEFAULT_CACHE_MIB):
        self.uri = uri
        size = cache_mib << 20
        self._db = lancedb.connect(uri, session=lancedb.Session(index_cache_size_bytes=size, metadata_cache_size_bytes=size))
        self._touched: set[str] = set()
        # Highest flush sequence number per table, as last read or written here.
        self._seq: dict[str, int] = {}
        # Tables known to have the position columns (each LanceDB call costs a round trip
        # to its event-loop thread, under the GIL: asked once per table, not per write).
        self._positioned: set[str] = set()

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

    # -- shards ----------------------------------------------------------------------------

    def _names(self) -> set[str]:
        return set(self._db.list_tables().tables)

    def load(self, algorithm: str, shard_key: str) -> pa.Table | None:
        """The shard's learned rows in the algorithm's schema, or None if it has none."""
        loaded = self.load_with_position(algorithm, shard_key)
        return loaded[0] if loaded is not None else None

    def load_with_position(self, algorithm: str, shard_key: str) -> tuple[pa.Table, Position | None] | None:
        """The shard's learned rows and its position (None when written without one)."""
        name = table_name(algorithm, shard_key)
        try:
            raw = self._db.open_table(name).to_arrow()
            learned, seq, position = _split_position(raw)
        except Exception as exc:  # noqa: BLE001 - which one depends on what broke; told apart below
            if name not in self._names():
                return None  # a shard with no history yet
            raise ShardUnreadable(f"shard {shard_key}: LanceDB table {name} exists but cannot be read ({type(exc).__name__}: {exc})") from None
        self._seq[name] = seq
        return learned, position

    def save(self, algorithm: str, shard_key: str, changes: Changes, position: Position | None = None) -> None:
        """Apply one shard's changes in one commit: upsert by key, delete expired keys,
        and record ``position`` (the last event the changes include) with them."""
        name = table_name(algorithm, shard_key)
        upserts = changes.upserts
        try:
            table = self._db.open_table(name)
        except (FileNotFoundError, ValueError):
            if upserts is None:
                return
            self._db.create_table(name, _with_position(upserts, 1, position))
            self._seq[name] = 1
            self._positioned.add(name)
            self._touched.add(name)
            return
        seq = self._next_seq(name, table)
        if upserts is not None and upserts.num_rows:
            if name not in self._positioned:
                self._ensure_position_columns(table)
                self._positioned.add(name)
            merge = table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all()
            if changes.deletes:
                # Same commit as the upserts: a crash cannot leave one without the other.
                merge = merge.when_not_matched_by_source_delete(_key_in(changes.deletes))
            merge.execute(_with_position(upserts, seq, position))
        elif changes.deletes:
            table.delete(_key_in(changes.deletes))
        self._seq[name] = seq
        self._touched.add(name)

    def _next_seq(self, name: str, table: lancedb.table.Table) -> int:
        if name not in self._seq:
            self._seq[name] = _split_position(table.to_arrow())[1]
        return self._seq[name] + 1

    @staticmethod
    def _ensure_position_columns(table: lancedb.table.Table) -> None:
        """Tables written before positions existed get the (null) columns once."""
        missing = {f.name: f"CAST(NULL AS {'string' if f.type == pa.string() else 'bigint'})"
                   for f in _POSITION_FIELDS if f.name not in table.schema.names}
        if missing:
            table.add_columns(missing)

    def replace(self, algorithm: str, shard_key: str, table: pa.Table, position: Position | None = None) -> None:
        """Swap a shard's whole contents for ``table`` in one commit (used by replay);
        ``position`` is the last event the new contents include."""
        name = table_name(algorithm, shard_key)
        self._db.create_table(name, _with_position(table, 1, position), mode="overwrite")
        self._seq[name] = 1
        self._touched.add(name)

    def drop(self, algorithm: str, shard_key: str) -> None:
        name = table_name(algorithm, shard_key)
        if name in self._names():
            self._db.drop_table(name)

    def compact(self) -> int:
        """Merge the small fragments written since the last call; returns tables done."""
        done = 0
        for name in sorted(self._touched):
            try:
                self._db.open_table(name).optimize(cleanup_older_than=timedelta(minutes=10))
                done += 1
            except (FileNotFoundError, ValueError) as exc:
                log.warning("compaction of %s skipped: %s", name, exc)
        self._touched.clear()
        return done

    def version(self, algorithm: str, shard_key: str) -> int:
        return int(self._db.open_table(table_name(algorithm, shard_key)).version)


def _key_in(keys: list[str]) -> str:
    quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    return f"key IN ({quoted})"
