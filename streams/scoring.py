"""The engine wired to its shard store: what the stream worker and `ruleless score` run.

Shards are loaded whole from LanceDB the first time an event needs them, scored in
memory, and their changes written back in batches by :meth:`flush` — callers flush
before they commit offsets, so learning is never lost behind a commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from ruleless.settings import Settings
from schemas.events import RawEvent, ScoredEvent
from streams.engine import Engine
from streams.store import ShardStore

log = logging.getLogger(__name__)


class ScoringService:
    def __init__(self, settings: Settings, store: ShardStore | None = None, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or Engine(settings.engine)
        self.store = store or ShardStore(settings.lancedb.uri)
        self._last_compact = time.monotonic()

    @property
    def algorithm(self) -> str:
        return self.engine.algorithm.name

    def score(self, events: Sequence[RawEvent], now: float | None = None) -> list[ScoredEvent]:
        self._load(self.engine.missing(events))
        return self.engine.score(events, time.time() if now is None else now)

    def feedback(self, event: RawEvent, label: str) -> None:
        self._load(self.engine.missing([event]))
        self.engine.feedback(event, label)

    def _load(self, keys: Iterable[str]) -> None:
        for key in keys:
            table = self.store.load(self.algorithm, key)
            shard = self.engine.algorithm.load_shard(table) if table is not None else None
            self.engine.install(key, shard)
            if shard is not None:
                log.info("loaded shard %s (%d behaviours)", key, len(shard))

    def flush(self) -> int:
        """Persist every shard's changes; returns how many shards were written."""
        changes = self.engine.take_changes()
        for key, change in changes.items():
            self.store.save(self.algorithm, key, change)
        return len(changes)

    def release(self, keys: Iterable[str]) -> None:
        """Flush, then forget shards this process no longer owns (partition revoked)."""
        self.flush()
        for key in keys:
            self.engine.evict(key)

    def maintain(self) -> None:
        """Prune expired entries and compact tables when the compaction interval is up."""
        if time.monotonic() - self._last_compact < self.settings.lancedb.compact_interval_s:
            return
        pruned = self.engine.prune()
        self.flush()
        tables = self.store.compact()
        self._last_compact = time.monotonic()
        log.info("maintenance: pruned %d expired behaviours, compacted %d tables", pruned, tables)
