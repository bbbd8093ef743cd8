"""LanceDB persistence of shards: the durable store of a shard, never a per-event query.

One table per (algorithm, org_id, workload). The engine's changes are written in batches
(one merge per shard per flush), tables are compacted periodically, and expired rows are
deleted by key. A shard is read whole when its owner first needs it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

import lancedb
import pyarrow as pa

from streams.algorithm import Changes

log = logging.getLogger(__name__)


def table_name(algorithm: str, shard_key: str) -> str:
    """Readable and unambiguous: names may contain "__", the hash tells them apart."""
    org_id, workload = shard_key.split("/", 1)
    digest = hashlib.blake2b(shard_key.encode(), digest_size=4).hexdigest()
    return f"{algorithm}__{org_id}__{workload}__{digest}"


class ShardStore:
    def __init__(self, uri: str):
        self.uri = uri
        self._db = lancedb.connect(uri)
        self._touched: set[str] = set()

    def _names(self) -> set[str]:
        return set(self._db.list_tables().tables)

    def load(self, algorithm: str, shard_key: str) -> pa.Table | None:
        name = table_name(algorithm, shard_key)
        try:
            return self._db.open_table(name).to_arrow()
        except (FileNotFoundError, ValueError):
            return None

    def save(self, algorithm: str, shard_key: str, changes: Changes) -> None:
        """Apply one shard's changes: upsert by key, then delete expired keys."""
        name = table_name(algorithm, shard_key)
        upserts = changes.upserts
        try:
            table = self._db.open_table(name)
        except (FileNotFoundError, ValueError):
            if upserts is None:
                return
            self._db.create_table(name, upserts)
            self._touched.add(name)
            return
        if upserts is not None and upserts.num_rows:
            (
                table.merge_insert("key")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(upserts)
            )
        if changes.deletes:
            quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in changes.deletes)
            table.delete(f"key IN ({quoted})")
        self._touched.add(name)

    def replace(self, algorithm: str, shard_key: str, table: pa.Table) -> None:
        """Swap a shard's whole contents for ``table`` (used by replay)."""
        name = table_name(algorithm, shard_key)
        self._db.create_table(name, table, mode="overwrite")
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
