"""The engine wired to its shard store: what the stream worker and `ruleless score` run.

Shards are loaded whole from LanceDB the first time an event needs them, scored in
memory, and their changes written back in batches by :meth:`flush` — callers flush
before they commit offsets, so learning is never lost behind a commit.

Stream callers pass where each event came from (:meth:`score_new`): each shard then
remembers the last input offset it learned, writes it with its learning, and skips
events it has already learned when a partition is read again after a crash or a
rebalance — learning is exactly-once per event, so scores do not depend on where a
worker died.

Stream workers also fence their writes (issue 14): :meth:`ScoringService.claim` takes
the partitions a worker was assigned, and :meth:`write` writes a shard only while that
claim is still the latest — a worker that stalled while another took over writes
nothing, and the shards it refused to write are handed back by :meth:`take_fenced` for
eviction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from ruleless.settings import Settings
from schemas.errors import ShardUnreadable
from schemas.events import RawEvent, ScoredEvent
from streams.algorithm import Changes
from streams.engine import Engine
from streams.priors import STORED_WHERE, OrgPriors, key_hashes
from streams.store import OFFLINE, Position, ShardStore, Stored, claim_key, group_table

log = logging.getLogger(__name__)

# While writing a snapshot, claims are read again when this long has passed since the
# last read: a writer stopped mid-snapshot (for longer than this, necessarily: a session
# timeout is seconds) checks again before its next shard. Reads cost a LanceDB round trip
# each (~5 ms idle, far more with the engine busy): not one per shard.
RECHECK_CLAIMS_S = 1.0

# Shards read per LanceDB query when many are needed at once (a new owner's first batch):
# one query per partition, holding all of them as Arrow and Python rows at once, left a
# replacement worker's RSS ~180 MiB above its predecessor's for good.
LOAD_CHUNK = 50


@dataclass(frozen=True, slots=True)
class Fence:
    """The partitions a stream worker claimed: claim key -> generation, and who it is."""

    owner: str
    held: dict[str, int]

@dataclass(frozen=True, slots=True)
class PendingWrite:
    """Changed shards' rows, the positions they include and the groups they are stored
    in (taken with the snapshot: the shards may be evicted before it is written), not
    yet in LanceDB."""

    changes: dict[str, Changes]
    positions: dict[str, Position | None]
    groups: dict[str, str]

    def __len__(self) -> int:
        return len(self.changes)

    @classmethod
    def joined(cls, parts: Sequence["PendingWrite"]) -> "PendingWrite":
        """One snapshot of several taken one after the other over disjoint shards."""
        out = cls({}, {}, {})
        for part in parts:
            out.changes.update(part.changes)
            out.positions.update(part.positions)
            out.groups.update(part.groups)
        return out


class ScoringService:
    def __init__(self, settings: Settings, store: ShardStore | None = None, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or Engine(settings.engine)
        self.store = store or ShardStore(settings.lancedb.uri, settings.lancedb.cache_mib)
        self._last_compact = time.monotonic()
        # Per shard in memory: the last input event its learning includes (stream only).
        self.positions: dict[str, Position] = {}
        # Stored positions set aside because they were of another topic incarnation.
        self.positions_discarded = 0
        # Per shard in memory: when (monotonic) its learning last changed.
        self.last_active: dict[str, float] = {}
        # Shards whose stored table cannot be read, and why (issue 14): their events are
        # refused (the worker dead-letters them), never scored against an empty baseline.
        self.unreadable: dict[str, str] = {}
        # The events score_new refused since take_refused() was last called.
        self._refused: list[tuple[RawEvent, str]] = []
        # Stream workers only: the partitions claimed, each shard's partition (claim key),
        # the claims found superseded, and the shards a write refused since take_fenced().
        self.fence: Fence | None = None
        self.partition_of: dict[str, str] = {}
        self.lost: set[str] = set()
        self._fenced: list[str] = []
        # Per group: the shards its store holds (see _stored_in), kept current by write().
        self._stored: dict[str, set[str] | None] = {}
        # Whether the org priors read what the store knows (offline; see _stored_priors_once).
        self._stored_priors_read = False
        # The day of the org priors snapshot last saved (offline state only).
        self._saved_priors_day = float("-inf")

    @property
    def algorithm(self) -> str:
        return self.engine.algorithm.name

    def score(self, events: Sequence[RawEvent], now: float | None = None) -> list[ScoredEvent]:
        """Score and learn; raises :class:`ShardUnreadable` for an event whose shard's
        stored table cannot be read."""
        self._stored_priors_once()
        self._load(self.engine.missing(events))
        for event in events:
            if event.shard_key in self.unreadable:
                raise ShardUnreadable(self.unreadable[event.shard_key])
        return self.engine.score(events, time.time() if now is None else now)

    def take_refused(self) -> list[tuple[RawEvent, str]]:
        """Events score_new did not score because their shard is unreadable, with why."""
        refused, self._refused = self._refused, []
        return refused

    def score_new(
        self, events: Sequence[RawEvent], positions: Sequence[Position], now: float | None = None
    ) -> tuple[list[ScoredEvent], int]:
        """Score the events their shard has not learned yet, in order; skip the others.

        ``positions[i]`` is where ``events[i]`` was read (topic/partition, offset); a
        shard's events come from one partition in offset order. Returns the scored
        events (input order) and how many were skipped as already learned — events a
        previous owner scored, published and flushed before it died or lost the partition.
        """
        for event, position in zip(events, positions, strict=True):
            self.partition_of[event.shard_key] = claim_key(position.source)  # (where it is stored)
        self._load(self.engine.missing(events))
        fresh: list[RawEvent] = []
        touched: set[str] = set()
        refused = 0
        for event, position in zip(events, positions, strict=True):
            key = event.shard_key
            if key in self.unreadable:
                self._refused.append((event, self.unreadable[key]))
                refused += 1
                continue
            known = self.positions.get(key)
            if known is not None and known.covers(position.source, position.offset):
                continue
            if known is not None and known.source != position.source:
                # Another topic incarnation (or partition): its offsets say nothing here.
                self.positions_discarded += 1
                log.warning("shard %s: stored position %s@%d is not of %s; discarded, scoring from offset %d",
                            key, known.source, known.offset, position.source, position.offset)
            fresh.append(event)
            touched.add(key)
            self.positions[key] = position
        scored = self.engine.score(fresh, time.time() if now is None else now) if fresh else []
        active = time.monotonic()
        for key in touched:
            self.last_active[key] = active
        return scored, len(events) - len(fresh) - refused

    def feedback(self, event: RawEvent, label: str, source: str | None = None) -> None:
        """Apply a verdict; raises :class:`ShardUnreadable` when the shard cannot be read.
        ``source`` is the raw partition ("topic/partition") the shard is read from."""
        if source is not None:
            self.partition_of[event.shard_key] = source
        self._load(self.engine.missing([event]))
        if event.shard_key in self.unreadable:
            raise ShardUnreadable(self.unreadable[event.shard_key])
        self.engine.feedback(event, label)
        self.last_active[event.shard_key] = time.monotonic()

    def group_of(self, key: str) -> str:
        """Where a shard is stored: the raw partition it is read from, in a stream."""
        return self.partition_of.get(key, OFFLINE)

    def _load(self, keys: Iterable[str]) -> None:
        by_group: dict[str, list[str]] = {}
        for key in keys:
            by_group.setdefault(self.group_of(key), []).append(key)
        for group, members in by_group.items():
            known = self._stored_in(group)
            if known is not None:  # a shard the store has never held starts empty, unqueried
                for key in members:
                    if key not in known:
                        self._install(key, None)
                by_group[group] = [key for key in members if key in known]
        chunks = [(group, members[i : i + LOAD_CHUNK]) for group, members in by_group.items() for i in range(0, len(members), LOAD_CHUNK)]
        for group, members in chunks:
            try:
                stored = self.store.load(self.algorithm, group, members)
            except ShardUnreadable as exc:
                for key in members:
                    if key not in self.unreadable:
                        log.error("shard %s: %s; its events are dead-lettered until it can be read (tried again on every batch)", key, exc.message)
                    self.unreadable[key] = exc.message
                continue
            for key in members:
                self._install(key, stored.get(key))
            del stored
        if by_group:
            pa.default_memory_pool().release_unused()  # (the rows read: back to the OS)

    def _stored_in(self, group: str) -> set[str] | None:
        """The shards stored in ``group``, read once per claim (a new workload then costs
        no LanceDB query: issue 17); None when the store cannot say."""
        if group not in self._stored:
            try:
                self._stored[group] = self.store.stored_shards(self.algorithm, group)
            except Exception as exc:  # noqa: BLE001 - the per-shard reads decide (and report) unreadability
                log.warning("shards of group %s not listed (%s); each is looked up", group, exc)
                return None
        return self._stored[group]

    def _install(self, key: str, stored: Stored | None) -> None:
        if self.unreadable.pop(key, None) is not None:
            log.warning("shard %s can be read again", key)
        shard = self.engine.algorithm.load_shard(stored.table) if stored is not None else None
        self.engine.install(key, shard)
        # Loaded because an event needs it: active now, even when every event it gets is
        # one it already learned (skipped: they do not count as activity below).
        self.last_active[key] = time.monotonic()
        self.positions.pop(key, None)
        position = stored.position if stored is not None else None
        if position is not None:
            self.positions[key] = position
        if shard is not None:
            log.info("loaded shard %s (%d behaviours, learned up to %s@%s)", key, len(shard),
                     position.source if position else "-", position.offset if position else "-")

    def flush(self) -> int:
        """Persist every shard's changes, each with its position; returns shards written.
        Offline, also the org priors snapshot when a new one was taken."""
        written = self.write(self.take_changes())
        engine = self.engine
        if self.fence is None and engine.priors is not None and engine.priors_day != self._saved_priors_day:
            self.store.save_priors(self.algorithm, engine.priors_day, engine.priors.by_org)
            self._saved_priors_day = engine.priors_day
        return written

    def take_changes(self, keys: Iterable[str] | None = None) -> PendingWrite:
        """Snapshot what changed since the last call (in memory, fast): each changed
        shard's rows and the position they include, of every shard or of ``keys``.
        Write it with :meth:`write` — on another thread if scoring must go on
        meanwhile; snapshots must be written in the order they were taken."""
        changes = self.engine.take_changes(keys)
        return PendingWrite(changes, {key: self.positions.get(key) for key in changes}, {key: self.group_of(key) for key in changes})

    def claim(self, sources: list[str], owner: str) -> None:
        """Claim input partitions ("topic/partition") for this worker (see streams.store)."""
        self.fence = Fence(owner, self.store.claim(sources, owner))
        self.lost.clear()
        self._stored.clear()  # (a previous owner may have written since they were listed)

    def write(self, pending: PendingWrite) -> int:
        """Write a snapshot to LanceDB, one commit per group (a stream's raw partition);
        returns shards written.

        With a :attr:`fence`, a group is written only while the claim of its partition
        is still this worker's; the others' shards are refused and kept for
        :meth:`take_fenced`. Stream callers write on a thread of their own while scoring
        goes on.
        """
        by_group: dict[str, dict[str, tuple[Changes, Position | None]]] = {}
        for key, change in pending.changes.items():
            by_group.setdefault(pending.groups[key], {})[key] = (change, pending.positions[key])
        written = 0
        holding: set[str] = set()
        checked = float("-inf")
        for group, shards in by_group.items():
            if self.fence is not None:
                if time.monotonic() - checked > RECHECK_CLAIMS_S:
                    holding = self.store.holds(self.fence.held, self.fence.owner)
                    self.lost |= set(self.fence.held) - holding
                    checked = time.monotonic()
                if group not in holding:
                    self._fenced.extend(shards)
                    continue
            self.store.write(self.algorithm, group, shards)
            known = self._stored.get(group)
            if known is not None:
                known.update(shards)
            written += len(shards)
        return written

    def compact(self) -> int:
        """Fold change logs and compact the tables written since the last call; with a
        fence, only those of partitions whose claim is still this worker's."""
        if self.fence is None:
            return self.store.compact()
        holding = self.store.holds(self.fence.held, self.fence.owner)
        mine = {group_table(self.algorithm, group) for group in holding}
        return self.store.compact(keep=mine.__contains__)

    def take_fenced(self) -> list[str]:
        """Shards whose changes a write refused (their partition has a newer owner)."""
        fenced, self._fenced = self._fenced, []
        return fenced

    def release(self, keys: Iterable[str]) -> None:
        """Flush, then forget shards this process no longer owns (partition revoked)."""
        self.flush()
        self.evict(keys)

    def evict(self, keys: Iterable[str]) -> None:
        """Forget shards (their changes must have been written): the next event reloads."""
        for key in keys:
            self.engine.evict(key)
            self.positions.pop(key, None)
            self.last_active.pop(key, None)
            self.partition_of.pop(key, None)

    def idle_since(self, before: float) -> list[str]:
        """Shards in memory whose learning has not changed since ``before`` (monotonic)."""
        return [key for key in self.engine.shards if self.last_active.get(key, float("-inf")) < before]

    def _stored_priors_once(self) -> None:
        """(Offline only.) What the store knows of the shards not in memory, for the org
        priors, and the snapshot an offline state saved: it scores on with it, as if it
        had never stopped. A stream worker's priors come from the shards it holds: a
        scan of every group table reads nearly every row of the store (370,000 of 422,000
        in the soak's), and grew a replacement worker's RSS for good."""
        if self._stored_priors_read or not self.engine.uses_priors:
            return
        self._stored_priors_read = True
        lists: dict[str, list[str]] = {}
        for rows in self.store.scan(self.algorithm, ["_shard", "key"], STORED_WHERE):
            for shard, key in zip(rows.column("_shard").to_pylist(), rows.column("key").to_pylist()):
                lists.setdefault(shard, []).append(key)
        self.engine.stored_known = {shard: key_hashes(keys) for shard, keys in lists.items()}
        saved = self.store.load_priors(self.algorithm)
        if saved is not None:
            self.engine.restore_priors(saved[0], OrgPriors(saved[1]))
            self._saved_priors_day = saved[0]

    def maintain(self) -> None:
        """Prune expired entries and compact tables when the compaction interval is up."""
        if time.monotonic() - self._last_compact < self.settings.lancedb.compact_interval_s:
            return
        pruned = self.engine.prune()
        self.flush()
        tables = self.store.compact()
        self._last_compact = time.monotonic()
        log.info("maintenance: pruned %d expired behaviours, compacted %d tables", pruned, tables)
