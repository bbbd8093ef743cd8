"""`ruleless replay`: rebuild shard baselines from the raw topic.

What a replay does, in order:

1. Refuses while the worker group has members (a running worker holds shards in memory
   and its next flush would write over the rebuilt ones): stop the workers first.
2. Captures, per partition of the raw topic, the range to read: from the earliest
   offset, a given offset, or the first message at or after a timestamp, to the high
   watermark at start — capped at the worker group's committed offset where it has one,
   so the rebuilt baseline ends exactly where the workers will resume (they score
   everything after it on top of it, nothing is learned twice or left unscored).
3. Reads every partition in order (a shard lives in one partition, so each shard sees
   its events in their original order), decodes, keeps the selected shards' events and
   scores them with a fresh in-memory engine — the stream's own scoring and learning.
4. Only after everything was read: swaps each rebuilt shard into LanceDB with
   :meth:`ShardStore.replace` (one atomic commit per raw partition) together with its position,
   the last offset it learned, which the workers then skip to. A replay that fails or is
   interrupted before this step changes nothing.

Events that the worker dead-letters are skipped the same way (invalid, or dated more
than ``engine.max_future_skew_s`` after the message's broker timestamp). Analyst
feedback is not replayed. Shards with no event in the range are left as they are.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from ruleless.kafka import consumer as make_consumer
from ruleless.kafka import topic_incarnation
from ruleless.settings import Settings
from schemas.errors import DecodeError, ReplayError, ServiceError
from schemas.events import NAME_PATTERN, RawEvent, decode
from streams.engine import Engine
from streams.store import OFFLINE, Position, ShardStore, Stored, claim_key, position_source

log = logging.getLogger(__name__)

BATCH = 2000
_TIMEOUT_S = 10.0
# Give up when an unfinished partition yields nothing for this long.
_STALL_S = 60.0


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition to read; ``capped`` when ``end`` is the
    worker group's committed offset rather than the high watermark."""

    partition: int
    start: int
    end: int
    high: int
    capped: bool = False

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class ReplaySummary:
    """What a replay read, learned and wrote."""

    ranges: list[PartitionRange] = field(default_factory=list)
    read: int = 0
    learned: int = 0
    invalid: int = 0
    other_shards: int = 0
    before_since: int = 0
    shards: Counter[str] = field(default_factory=Counter)
    positions: dict[str, Position] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0


def parse_since(value: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReplayError(f"--since wants epoch seconds or an ISO 8601 time, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_shards(values: Iterable[str]) -> set[str]:
    """``org/workload`` strings, validated like the event fields they match."""
    out: set[str] = set()
    for value in values:
        org, sep, workload = value.partition("/")
        if not sep or not NAME_PATTERN.fullmatch(org) or not NAME_PATTERN.fullmatch(workload):
            raise ReplayError(f"--shard wants org_id/workload, not {value!r}")
        out.add(value)
    return out


def replay(
    settings: Settings,
    *,
    since: float | None = None,
    from_offset: int | None = None,
    shards: set[str] | None = None,
    force: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Rebuild the selected shards (all when ``shards`` is None) from the raw topic.

    ``since`` is epoch seconds compared with the messages' broker timestamps;
    ``from_offset`` applies to every partition; neither means from the earliest offset.
    ``on_start(total)`` gets the number of messages to read, ``on_progress(n)`` each
    batch's count. Raises :class:`ReplayError` while workers run (unless ``force``) or
    when the range is bad, :class:`ServiceError` when Kafka does not answer.
    """
    if since is not None and from_offset is not None:
        raise ReplayError("give a timestamp or an offset, not both")
    if from_offset is not None and from_offset < 0:
        raise ReplayError(f"offset must be >= 0, not {from_offset}")
    _refuse_running_workers(settings, force)
    started = time.monotonic()
    summary = ReplaySummary()
    engine = Engine(settings.engine)
    cons = make_consumer(settings.kafka, f"{settings.worker.group_id}-replay-{time.time_ns()}",
                         **{"enable.partition.eof": True})
    try:
        summary.ranges = plan(cons, settings, since=since, from_offset=from_offset)
        if on_start is not None:
            on_start(sum(r.size for r in summary.ranges))
        _read(cons, settings, engine, summary, since, shards, on_progress)
    finally:
        cons.close()
    _write(settings, engine, summary)
    summary.elapsed_s = time.monotonic() - started
    return summary


# -- planning ------------------------------------------------------------------------


def plan(cons: Consumer, settings: Settings, *, since: float | None, from_offset: int | None) -> list[PartitionRange]:
    """The per-partition ranges to read, fixed now (later messages are not replayed)."""
    topic = settings.topics.raw
    parts = _partitions(cons, topic)
    highs = _high_watermarks(cons, topic, parts)
    committed = _committed(settings, topic, parts)
    starts = _starts(cons, topic, parts, highs, since, from_offset)
    ranges = []
    for p in parts:
        low, high = highs[p]
        end, capped = high, False
        if committed.get(p) is not None and committed[p] < high:
            end, capped = committed[p], True
        ranges.append(PartitionRange(p, min(max(starts[p], low), end), end, high, capped))
    return ranges


def _partitions(cons: Consumer, topic: str) -> list[int]:
    try:
        meta = cons.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
    except KafkaException as exc:
        raise ServiceError(f"cannot reach Kafka: {exc}") from None
    if meta is None or meta.error is not None or not meta.partitions:
        raise ReplayError(f"raw topic {topic} does not exist")
    return sorted(meta.partitions)


def _high_watermarks(cons: Consumer, topic: str, parts: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) per partition. The listed high watermark is checked against a fetch:
    tansu 0.6 lists the last *batch's* base offset + 1 when that batch holds several
    records (verified here), while its fetch responses carry the true high watermark."""
    listed = {p: cons.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S) for p in parts}
    probe = [TopicPartition(topic, p, max(low, high - 1)) for p, (low, high) in listed.items() if high > low]
    if not probe:
        return listed
    cons.assign(probe)
    pending = {tp.partition for tp in probe}
    deadline = time.monotonic() + _TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for msg in cons.consume(500, timeout=0.2):
            pending.discard(msg.partition())
    fetched = {}
    for p, (low, high) in listed.items():
        cached = cons.get_watermark_offsets(TopicPartition(topic, p), cached=True)
        fetched[p] = (low, max(high, cached[1] if cached and cached[1] >= 0 else high))
    cons.unassign()
    return fetched


def _committed(settings: Settings, topic: str, parts: list[int]) -> dict[int, int | None]:
    """The worker group's committed offsets (None where it never committed)."""
    cons = make_consumer(settings.kafka, settings.worker.group_id)
    try:
        tps = cons.committed([TopicPartition(topic, p) for p in parts], timeout=_TIMEOUT_S)
    finally:
        cons.close()
    return {tp.partition: tp.offset if tp.offset >= 0 and tp.offset != OFFSET_INVALID else None for tp in tps}


def _starts(
    cons: Consumer, topic: str, parts: list[int], highs: dict[int, tuple[int, int]],
    since: float | None, from_offset: int | None,
) -> dict[int, int]:
    if from_offset is not None:
        return {p: from_offset for p in parts}
    if since is None:
        return {p: highs[p][0] for p in parts}
    # The broker's time index only narrows where to start; messages before ``since`` are
    # still skipped while reading (tansu 0.6 answers every time lookup with offset 0).
    query = [TopicPartition(topic, p, int(since * 1000)) for p in parts]
    found = cons.offsets_for_times(query, timeout=_TIMEOUT_S)
    return {tp.partition: tp.offset if tp.offset >= 0 else highs[tp.partition][1] for tp in found}


def _refuse_running_workers(settings: Settings, force: bool) -> None:
    """A running worker would overwrite rebuilt shards with its in-memory ones."""
    group = settings.worker.group_id
    admin = AdminClient(settings.kafka.confluent_config())
    try:
        described = admin.describe_consumer_groups([group])[group].result(_TIMEOUT_S)
    except KafkaException as exc:
        log.warning("cannot describe worker group %s (%s): make sure no worker runs", group, exc)
        return
    members = len(described.members or [])
    if members and not force:
        raise ReplayError(
            f"worker group {group} has {members} running members: stop the workers before a replay "
            "(their in-memory shards would overwrite the rebuilt ones), or pass --force"
        )
    if members:
        log.warning("replaying while %d workers of %s run (--force)", members, group)


# -- reading and learning --------------------------------------------------------------


def _read(
    cons: Consumer, settings: Settings, engine: Engine, summary: ReplaySummary,
    since: float | None, shards: set[str] | None, on_progress: Callable[[int], None] | None,
) -> None:
    topic = settings.topics.raw
    todo = {r.partition: r for r in summary.ranges if r.size}
    if not todo:
        return
    incarnation = topic_incarnation(settings.kafka, topic)
    cons.assign([TopicPartition(topic, p, r.start) for p, r in todo.items()])
    wanted = {s.encode() for s in shards} if shards is not None else None
    skew = settings.engine.max_future_skew_s
    idle_since = time.monotonic()
    while todo:
        batch: list[RawEvent] = []
        read = 0
        messages = cons.consume(BATCH, timeout=1.0)
        if messages:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > _STALL_S:
            raise ServiceError(f"no message from partitions {sorted(todo)} of {topic} for {_STALL_S:.0f}s")
        for msg in messages:
            if not _in_range(msg, todo):
                if _at_end(msg, todo):
                    cons.pause([TopicPartition(topic, todo.pop(msg.partition()).partition)])
                continue
            read += 1
            if msg.offset() >= todo[msg.partition()].end - 1:
                cons.pause([TopicPartition(topic, todo.pop(msg.partition()).partition)])
            event = _accept(msg, summary, wanted, since, skew)
            if event is not None:
                batch.append(event)
                summary.shards[event.shard_key] += 1
                summary.positions[event.shard_key] = Position(position_source(topic, msg.partition(), incarnation), msg.offset())
        if batch:
            engine.score(batch)
            summary.learned += len(batch)
        summary.read += read
        if on_progress is not None and read:
            on_progress(read)


def _in_range(msg: Message, todo: dict[int, PartitionRange]) -> bool:
    err = msg.error()
    if err is not None:
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        raise ServiceError(f"reading the raw topic failed: {err}")
    r = todo.get(msg.partition())
    return r is not None and r.start <= msg.offset() < r.end


def _at_end(msg: Message, todo: dict[int, PartitionRange]) -> bool:
    """End of partition reached past the range (its last offsets held no record)."""
    err = msg.error()
    r = todo.get(msg.partition())
    return err is not None and err.code() == KafkaError._PARTITION_EOF and r is not None and msg.offset() >= r.end


def _accept(
    msg: Message, summary: ReplaySummary, wanted: set[bytes] | None, since: float | None, skew: float
) -> RawEvent | None:
    """The message's event if the worker would have learned it and it is selected."""
    if wanted is not None and msg.key() not in wanted:
        summary.other_shards += 1
        return None
    kind, ms = msg.timestamp()
    if since is not None and ms >= 0 and ms / 1000.0 < since:
        summary.before_since += 1
        return None
    try:
        event = decode(msg.value() or b"")
    except DecodeError:
        summary.invalid += 1
        return None
    if wanted is not None and event.shard_key.encode() not in wanted:
        summary.other_shards += 1
        return None
    if ms >= 0 and event.ts > ms / 1000.0 + skew:
        summary.invalid += 1  # the worker dead-letters it (max_future_skew_s)
        return None
    return event


# -- writing -------------------------------------------------------------------------------


def _write(settings: Settings, engine: Engine, summary: ReplaySummary) -> None:
    """Swap every rebuilt shard in with its position: one atomic LanceDB commit per raw
    partition (the group a worker reads the shard from)."""
    store = ShardStore(settings.lancedb.uri, settings.lancedb.cache_mib)
    algorithm = engine.algorithm.name
    groups: dict[str, dict[str, Stored]] = {}
    for key in sorted(engine.shards):
        at = summary.positions.get(key)
        group = claim_key(at.source) if at is not None else OFFLINE
        groups.setdefault(group, {})[key] = Stored(engine.shards[key].to_table(), at)
    for group, shards in sorted(groups.items()):
        store.replace(algorithm, group, shards)
        summary.written.extend(shards)
        log.debug("replaced %d shards of %s", len(shards), group)
    log.info("replaced %d shards in %s", len(summary.written), settings.lancedb.uri)


# -- command line --------------------------------------------------------------------------


def run(
    settings: Settings, *, since: float | None, from_offset: int | None, shards: set[str] | None, force: bool
) -> ReplaySummary:
    """`ruleless replay`: :func:`replay` with a progress bar (events, rate, ETA) and a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("replaying {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(settings.topics.raw, total=None, rate=0.0)
        started = time.monotonic()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            bar.update(task, advance=n, rate=done / max(1e-9, time.monotonic() - started))

        summary = replay(
            settings, since=since, from_offset=from_offset, shards=shards, force=force,
            on_start=lambda total: bar.update(task, total=total), on_progress=advance,
        )
    _print_summary(console, settings, summary, shards)
    return summary


def _print_summary(console: object, settings: Settings, summary: ReplaySummary, shards: set[str] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    table = Table("partition", "from", "to", "high watermark", "note", title=f"replayed {settings.topics.raw}")
    for r in summary.ranges:
        note = f"stopped at {settings.worker.group_id}'s committed offset" if r.capped else ""
        table.add_row(str(r.partition), str(r.start), str(r.end), str(r.high), note)
    console.print(table)
    console.print(
        f"{summary.read:,} messages read in {summary.elapsed_s:.1f}s ({summary.rate:,.0f}/s); "
        f"{summary.learned:,} events learned into {len(summary.written)} shards "
        f"({settings.engine.algorithm}); skipped: {summary.other_shards:,} of other shards, "
        f"{summary.before_since:,} before the start time, {summary.invalid:,} invalid"
    )
    if shards is not None:
        missing = sorted(shards - set(summary.written))
        if missing:
            console.print(f"no events in range for {', '.join(missing)}: left as they were")
    console.print("start the workers: they resume after each shard's replayed position")
