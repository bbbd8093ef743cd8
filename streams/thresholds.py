"""Per-(org, workload) threshold overrides set through the API, read by every worker.

The overrides live in one small LanceDB table, ``_thresholds``, in the shards' store
(``lancedb.uri``): one row per shard key ``org_id/workload`` with its warn and alert
scores, who set them and when. The API is its only writer (an upsert or a delete per
change, one commit each); workers read the whole table at every flush interval and score
with it from their next batch on. So an override is durable (it outlives API and worker
restarts and reaches a shard's next owner after a rebalance) and reaches every worker
within one flush interval; deleting it returns the shard to the configured thresholds
(``engine.thresholds``) or the algorithm's own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pyarrow as pa

from ruleless.settings import Thresholds

if TYPE_CHECKING:
    import lancedb

TABLE = "_thresholds"
SCHEMA = pa.schema([
    pa.field("shard", pa.string()), pa.field("warn", pa.float64()), pa.field("alert", pa.float64()),
    pa.field("updated_at", pa.float64()), pa.field("updated_by", pa.string()),
])  # fmt: skip


class ThresholdOverrides:
    """The ``_thresholds`` table of a LanceDB store."""

    def __init__(self, uri: str):
        import lancedb

        self.uri = uri
        self._db = lancedb.connect(uri)

    def _table(self, create: bool) -> lancedb.table.Table | None:
        try:
            return self._db.open_table(TABLE)
        except (FileNotFoundError, ValueError):
            if not create:
                return None
            return self._db.create_table(TABLE, schema=SCHEMA, exist_ok=True)

    def rows(self) -> dict[str, dict[str, object]]:
        """Every override: shard key -> {warn, alert, updated_at, updated_by}."""
        table = self._table(create=False)
        if table is None:
            return {}
        return {r.pop("shard"): r for r in table.to_arrow().to_pylist()}

    def all(self) -> dict[str, Thresholds]:
        """Every override, as the engine uses them."""
        return {key: Thresholds(warn=r["warn"], alert=r["alert"]) for key, r in self.rows().items()}  # type: ignore[arg-type]

    def set(self, shard: str, thresholds: Thresholds, by: str = "") -> None:
        table = self._table(create=True)
        assert table is not None
        row = pa.table({"shard": [shard], "warn": [thresholds.warn], "alert": [thresholds.alert],
                        "updated_at": [time.time()], "updated_by": [by]}, schema=SCHEMA)
        table.merge_insert("shard").when_matched_update_all().when_not_matched_insert_all().execute(row)

    def delete(self, shard: str) -> None:
        table = self._table(create=False)
        if table is not None:
            table.delete(f"shard = '{shard.replace(chr(39), chr(39) * 2)}'")
