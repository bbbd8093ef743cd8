"""The Faust worker: raw topic in; scored, alerts and dead-letter topics out.

Faust is used thinly: the agent takes micro-batches without auto-acks, decodes, hands the
batch to the engine on a worker thread (never numpy or LanceDB on the event loop) and
publishes through librdkafka; the next batch is scored while outputs are in flight, and
each flush first waits for the broker to acknowledge all of them. Events are acked — and so become
committable — only after their outputs are delivered *and* the learning they caused has
been written to LanceDB by the periodic flush. That is at-least-once from raw to scored:
a crash replays uncommitted events, which the new owner scores from the last flushed
state; the sink's idempotency by event_id removes the copies.

Learning is exactly-once (issue 5): scoring a batch and publishing its outputs is one
step under a lock that the flush also takes, and the flush waits for every output's
acknowledgement before it snapshots, so flushed learning only ever includes events whose
outputs the broker acknowledged; each shard's flush records the last
offset it learned, and a re-delivered event at or below it is skipped (it was scored,
published and learned already). Events after it are scored from exactly the state the
dead owner had before them, so a takeover gives the same scores as one worker would.
On revocation every shard is flushed and evicted; the next owner reloads it from LanceDB.

Writes are fenced: at every assignment the worker claims its raw partitions in LanceDB
(a generation one above the last claim), and a shard is written only while its
partition's claim is still this worker's. A worker stopped past its session timeout
(SIGSTOP, a long GC, a frozen VM) whose partitions another worker claimed meanwhile
writes nothing when it resumes: its refused shards are counted, evicted and never acked,
and the new owner's learning stands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import faust
from confluent_kafka import KafkaError, KafkaException, Message
from faust.types import EventT

from ruleless import failpoints
from ruleless.kafka import check_copartitioned, ensure_topics, topic_incarnation
from ruleless.kafka import producer as make_producer
from ruleless.health import HealthServer, cached
from ruleless.metrics import WorkerMetrics
from ruleless.memory import return_freed_memory
from ruleless.settings import Settings
from ruleless.tenancy import verify
from schemas.errors import DecodeError, ServiceError, ShardUnreadable
from schemas.events import DeadLetter, RawEvent, ScoredEvent, dead_letter, decode, decode_feedback, encode
from streams import faust_transport
from streams.scoring import PendingWrite, ScoringService
from streams.store import Position, ShardStore, position_source
from streams.thresholds import ThresholdOverrides

log = logging.getLogger(__name__)

T = TypeVar("T")
# Python's thread switch interval in the worker (see run).
SWITCH_INTERVAL_S = 0.0005
# How long a batch's outputs may take to be acknowledged before the worker gives up.
DELIVERY_TIMEOUT_S = 60.0
# /readyz pings LanceDB at most this often; /healthz wants the event loop to answer
# within LOOP_ANSWER_S.
STORE_PING_S = 5.0
LOOP_ANSWER_S = 10.0
# Errors about one message itself, not the broker: that output is dead-lettered.
REFUSED_MESSAGE = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
})  # fmt: skip


def faust_broker_options(settings: Settings, stock_delivery: bool = False) -> dict[str, Any]:
    """Faust (aiokafka) connection options from the shared Kafka settings; with
    ``stock_delivery``, Faust's own per-message delivery (streams/faust_transport.py)."""
    kafka = settings.kafka
    faust_transport.register()
    scheme = faust_transport.STOCK_DELIVERY_SCHEME if stock_delivery else faust_transport.SCHEME
    opts: dict[str, Any] = {"broker": ";".join(f"{scheme}://{h}" for h in kafka.bootstrap.split(","))}
    if kafka.security_protocol != "PLAINTEXT":
        import ssl

        context = ssl.create_default_context(cafile=kafka.ssl_cafile) if "SSL" in kafka.security_protocol else None
        if context is not None and kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        if kafka.sasl_mechanism:
            opts["broker_credentials"] = faust.SASLCredentials(
                username=kafka.sasl_username,
                password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
                mechanism=kafka.sasl_mechanism,
                ssl_context=context,
            )
        elif context is not None:
            opts["broker_credentials"] = faust.SSLCredentials(context)
    return opts


class ScoringAgent:
    """The work of one worker process, independent of how Faust delivers batches.

    Three threads of work: Faust's event loop (consume, decode, ack), the engine thread
    (score a batch and hand its outputs to librdkafka; before a snapshot of the learning,
    wait for the broker's acks, so nothing stores learning whose outputs are not delivered), and the
    LanceDB thread (write flush snapshots, in the order they were taken, while scoring
    goes on). Outputs go through a confluent-kafka producer rather than Faust's topics:
    Faust's per-message send path capped a bare Faust agent at ~6,700 messages/s here,
    against ~14,000 for consuming and acking alone (issue 5, make bench).
    """

    def __init__(self, settings: Settings, app: faust.App, metrics: WorkerMetrics):
        self.settings = settings
        self.app = app
        self.metrics = metrics
        # A change log per partition: a flush appends what changed, compaction folds it.
        store = ShardStore(settings.lancedb.uri, settings.lancedb.cache_mib, change_log=True)
        self.service = ScoringService(settings, store)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancedb")
        # Delivery reports of failures only: _delivered has nothing to do for a success,
        # and a Python callback per output was measurable on the engine thread.
        self.producer = make_producer(settings.kafka, **{"linger.ms": 5, "delivery.report.only.error": True})
        self.topics = settings.topics
        self._pending: list[EventT] = []
        self._stream: Any = None
        # Held while a batch is scored and published, and while learning is snapshotted:
        # a snapshot never includes an event whose outputs are not delivered.
        self._lock = asyncio.Lock()
        # One LanceDB write at a time, so snapshots land in the order they were taken.
        self._write_lock = asyncio.Lock()
        self._last_maintenance = time.monotonic()
        self._last_flush = time.monotonic()
        # The time between timed flushes, stretched when snapshots grow (see _pace).
        self.flush_every = settings.lancedb.flush_interval_s
        # Set when a batch or a write failed: nothing after it may be flushed or acked.
        self.failed = False
        # The raw topic's id, read at every assignment (see ruleless.kafka.topic_incarnation).
        self.incarnation = ""
        self._discarded_seen = 0
        self._delivery_failures: list[str] = []
        # Who this worker is in the partition claims (streams.store: fencing).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Raw partitions assigned and claimed (readiness); emptied on revocation.
        self.assigned: list[int] = []
        self._store_reachable = cached(self._ping_store, STORE_PING_S)
        self._overrides = ThresholdOverrides(settings.lancedb.uri)

    # -- health (ruleless/health.py) ----------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Ready = raw partitions assigned and claimed, nothing failed, LanceDB answering."""
        if self.failed:
            return False, "a batch or a write failed: stopping"
        if not self.assigned:
            return False, f"no partition of {self.topics.raw} assigned (yet; or more workers than partitions)"
        ok, why = self._store_reachable()
        if not ok:
            return False, why
        return True, f"partitions {self.assigned} of {self.topics.raw}; {why}"

    def liveness(self) -> tuple[bool, str]:
        """Alive = Faust's event loop runs callbacks (a wedged loop consumes nothing)."""
        loop = self.app.loop
        if not loop.is_running():
            return True, "starting"
        answered = threading.Event()
        loop.call_soon_threadsafe(answered.set)
        if not answered.wait(LOOP_ANSWER_S):
            return False, f"event loop did not answer within {LOOP_ANSWER_S:.0f}s"
        return True, "event loop answering"

    def _ping_store(self) -> tuple[bool, str]:
        self.service.store.ping()
        return True, f"LanceDB at {self.settings.lancedb.uri} reachable"

    async def _engine(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- scoring -----------------------------------------------------------------------

    async def process(self, stream: Any, events: list[EventT]) -> None:
        """Score one micro-batch and publish its results; ack comes with the next flush."""
        async with self._lock:
            if self.failed:
                return
            try:
                await self._process(stream, self._owned(events))
            except BaseException:
                # In-memory shards now hold learning whose outputs may be lost: never
                # flush it. The caller stops the worker; the next owner re-scores.
                self.failed = True
                raise

    def _owned(self, events: list[EventT]) -> list[EventT]:
        """Drop events of partitions revoked while they sat in the take buffer: their
        new owner scores them, and learning them here would write a stale shard."""
        assigned = self.app.consumer.assignment()
        kept = [ev for ev in events if ev.message.tp in assigned and not self._lost(ev)]
        if len(kept) < len(events):
            log.info("dropped %d buffered events of revoked partitions", len(events) - len(kept))
        return kept

    def _lost(self, ev: EventT) -> bool:
        """True when the event's partition has a newer owner (found at a fenced write)."""
        return bool(self.service.lost) and f"{self.topics.raw}/{ev.message.partition}" in self.service.lost

    async def claim(self, partitions: list[int]) -> None:
        """Claim the raw partitions just assigned, before any of their shards is loaded."""
        sources = [f"{self.topics.raw}/{p}" for p in partitions]
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            async with self._lock:
                await loop.run_in_executor(self.writer, self.service.claim, sources, self.owner)
        held = self.service.fence.held if self.service.fence else {}
        log.info("claimed %d partitions as %s: %s", len(held), self.owner,
                 ", ".join(f"{src} (generation {gen})" for src, gen in sorted(held.items())) or "-")

    async def _process(self, stream: Any, events: list[EventT]) -> None:
        self._stream = stream
        started = time.perf_counter()
        good, bad = self._decode(events)
        positions = [Position(position_source(ev.message.topic, ev.message.partition, self.incarnation), ev.message.offset)
                     for _, ev in good]
        dead = [(ev.key, letter) for ev, letter in bad]
        scored, skipped = await self._engine(self._score_and_publish, [e for e, _ in good], positions, dead)
        discarded = self.service.positions_discarded
        if discarded > self._discarded_seen:
            self.metrics.positions_discarded.inc(discarded - self._discarded_seen)
            self._discarded_seen = discarded
        if skipped:
            self.metrics.already_learned.inc(skipped)
            log.info("skipped %d re-delivered events their shards had already learned", skipped)
        self._pending.extend(events)
        self.metrics.observe_batch(scored, len(bad), time.perf_counter() - started)

    def _score_and_publish(
        self, events: list[RawEvent], positions: list[Position], dead: list[tuple[bytes | None, DeadLetter]]
    ) -> tuple[list[ScoredEvent], int]:
        """(engine thread) Score and hand every output to librdkafka. Delivery is not
        awaited here — the next batch is scored while this one is in flight — but before
        any learning is snapshotted (see _snapshot); a failed delivery stops the worker."""
        self._raise_on_failed_delivery()
        scored, skipped = self.service.score_new(events, positions) if events else ([], 0)
        for event, why in self.service.take_refused():  # its shard cannot be read
            dead.append((event.shard_key.encode(), dead_letter(ShardUnreadable(why), "worker", encode(event), self.topics.raw)))
            self.metrics.dead_lettered.inc()
        for key, letter in dead:
            self._produce(self.topics.dead_letter, key, encode(letter))
        for out in scored:
            key, value = out.shard_key.encode(), encode(out)
            self._produce(self.topics.scored, key, value)
            if out.severity != "ok":
                self._produce(self.topics.alerts, key, value)
        self.producer.poll(0)
        failpoints.hit("worker.published")  # (kill only: outputs in flight, learning not flushed)
        return scored, skipped

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if err.code() in REFUSED_MESSAGE and msg.topic() != self.topics.dead_letter:
            self._refused(msg.topic(), msg.key(), msg.value() or b"", err.str())
        else:
            self._delivery_failures.append(str(err))

    def _refused(self, topic: str, key: bytes | None, value: bytes, why: str) -> None:
        """An output the broker or librdkafka refuses for what it is (too large, invalid)
        goes to the dead-letter topic with the reason; it never stops the worker, or one
        crafted event would switch detection off for its partition (issue 14)."""
        log.error("output to %s refused (%s): dead-lettered", topic, why)
        letter = dead_letter(ServiceError(f"output to {topic} refused: {why}"), "worker-output", value, topic)
        self.metrics.dead_lettered.inc()
        self._produce(self.topics.dead_letter, key, encode(letter))

    def _raise_on_failed_delivery(self) -> None:
        if self._delivery_failures:
            raise ServiceError(f"outputs not delivered: {len(self._delivery_failures)} failed {self._delivery_failures[:3]}")

    def _await_delivery(self) -> None:
        """(engine thread) Return once the broker acknowledged every output produced so
        far; raises :class:`ServiceError` if it did not."""
        left = self.producer.flush(DELIVERY_TIMEOUT_S)
        if left:
            raise ServiceError(f"outputs not delivered: {left} unacknowledged after {DELIVERY_TIMEOUT_S:.0f}s")
        self._raise_on_failed_delivery()

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._delivered)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused before sending, e.g. over message.max.bytes
                err = exc.args[0]
                if err.code() not in REFUSED_MESSAGE or topic == self.topics.dead_letter:
                    raise ServiceError(f"cannot publish to {topic}: {err}") from None
                self._refused(topic, key, value, err.str())
                return

    def _decode(self, events: list[EventT]) -> tuple[list[tuple[RawEvent, EventT]], list[tuple[EventT, DeadLetter]]]:
        good: list[tuple[RawEvent, EventT]] = []
        bad: list[tuple[EventT, DeadLetter]] = []
        horizon = time.time() + self.settings.engine.max_future_skew_s
        tenancy = self.settings.tenancy
        for ev in events:
            raw = ev.value if isinstance(ev.value, bytes) else bytes(ev.value or b"")
            try:
                event = decode(raw)
                if tenancy.signed:
                    verify(tenancy.agent_keys, event.org_id, raw, ev.message.headers, "raw event")
                if event.ts > horizon:
                    raise DecodeError(f"ts {event.ts} is further in the future than max_future_skew_s")
                good.append((event, ev))
            except DecodeError as exc:
                msg = ev.message
                bad.append((ev, dead_letter(exc, "worker", raw, msg.topic, msg.partition, msg.offset)))
        return good, bad

    async def apply_feedback(self, stream: Any, events: list[EventT]) -> None:
        """Analysts' verdicts: applied to the shard in order with scoring, then acked."""
        for ev in events:
            raw = ev.value if isinstance(ev.value, bytes) else bytes(ev.value or b"")
            try:
                fb = decode_feedback(raw)
                if self.settings.tenancy.signed:
                    verify(self.settings.tenancy.analyst_keys, fb.event.org_id, raw, ev.message.headers, "feedback")
                await self._engine(self.service.feedback, fb.event, fb.label, f"{self.topics.raw}/{ev.message.partition}")
            except (DecodeError, ShardUnreadable) as exc:
                msg = ev.message
                dead = dead_letter(exc, "feedback", raw, msg.topic, msg.partition, msg.offset)
                await self._engine(self._score_and_publish, [], [], [(ev.key, dead)])
                continue
            log.info("feedback %s on %s (%s)", fb.label, fb.event.event_id, fb.event.shard_key)
        await self.flush()
        for ev in events:
            await stream.ack(ev)

    async def refresh_thresholds(self) -> None:
        """Read the threshold overrides set through the API (streams.thresholds), off the
        event loop and off the shard writer's thread; the engine scores with them from
        its next batch on. A failed read keeps the overrides it had (and says so): it
        never stops scoring."""
        try:
            overrides = await asyncio.get_running_loop().run_in_executor(None, self._overrides.all)
        except Exception as exc:  # (LanceDB raises many kinds; none may stop the worker)
            log.warning("threshold overrides not read (%s); scoring with the ones read before", exc)
            return
        engine = self.service.engine
        if overrides != engine.overrides:
            log.info("threshold overrides: %s", ", ".join(f"{k} warn {t.warn:g} alert {t.alert:g}"
                                                           for k, t in sorted(overrides.items())) or "none")
            engine.overrides = overrides  # (one reference swap: the engine thread sees old or new)

    # -- flushing ----------------------------------------------------------------------

    def flush_due(self) -> bool:
        """True when the timer's next flush should run (see _pace)."""
        # (10 ms of slack: the timer ticks at flush_interval_s and may fire a little early)
        return time.monotonic() - self._last_flush >= self.flush_every - 0.01

    def _pace(self, changed_shards: int) -> None:
        """Space timed flushes by the number of shards the last one wrote: a snapshot
        costs ~35 µs a changed shard on the scoring thread (plus its rows), so 10,000 of
        them every 2 s left the worker behind its input. Paced by shards, not by the
        measured time: that time also grows with the rows each shard changed, which
        grow with the interval, and a rule on it stretched a 1,000-shard worker's
        flushes (and its lag and memory) further at each flush. Outputs are published
        as events are scored, so flushing less often delays acks and commits (a crash
        re-reads more), not results."""
        lance = self.settings.lancedb
        every = max(lance.flush_interval_s, changed_shards / lance.flush_shards_per_s)
        self.flush_every = min(every, max(lance.flush_interval_max_s, lance.flush_interval_s))
        self.metrics.flush_interval.set(self.flush_every)

    async def flush(self) -> None:
        """Snapshot the learning, write it to LanceDB (scoring goes on meanwhile), then
        ack everything scored before the snapshot began."""
        async with self._write_lock:
            async with self._lock:
                if self.failed:
                    return
                keys, compact = await self._engine(self._begin_snapshot)
                snapped = self._last_flush = time.monotonic()
                done, self._pending = self._pending, []
            pending = await self._take_in_slices(keys)
            if pending is None:
                return
            fenced = await self._write(pending, done, compact)
            if fenced:
                async with self._lock:
                    await self._engine(self.service.evict, fenced)
            await self._evict_idle(snapped)

    async def _take_in_slices(self, keys: list[str]) -> PendingWrite | None:
        """Take the shards' changes ``lancedb.snapshot_slice_shards`` at a time, scoring
        going on between slices, so a worker holding thousands of changed shards does
        not stop scoring for the whole snapshot (~35 µs a shard). Each slice first waits
        for every output so far to be delivered, so no stored learning is ahead of its
        outputs; a shard's rows and position are taken together in one slice. Events
        scored between slices are not acked by this flush (their shards may or may not
        be in a later slice: the stored position says which were learned)."""
        parts = []
        size = self.settings.lancedb.snapshot_slice_shards
        for start in range(0, len(keys), size):
            async with self._lock:
                if self.failed:
                    return None
                parts.append(await self._engine(self._take_slice, keys[start : start + size]))
        pending = PendingWrite.joined(parts)
        self._pace(len(pending))
        return pending

    async def _evict_idle(self, snapped: float) -> None:
        """Drop shards idle for ``worker.idle_shard_s``: learning unchanged since long
        before the snapshot just written, so LanceDB holds all of it."""
        idle_s = self.settings.worker.idle_shard_s
        if not idle_s:
            return
        async with self._lock:
            if self.failed:
                return
            keys = await self._engine(self._evict_idle_now, snapped - idle_s)
            if keys:
                self.metrics.shards.set(len(self.service.engine.shards))
                log.info("evicted %d idle shards (no events for %.0fs); the next event reloads them", len(keys), idle_s)

    def _begin_snapshot(self) -> tuple[list[str], bool]:
        """(engine thread) Wait until every output so far is delivered, prune expired
        behaviours when maintenance is due; the shards to take changes from."""
        self._await_delivery()
        due = time.monotonic() - self._last_maintenance >= self.settings.lancedb.compact_interval_s
        if due:
            pruned = self.service.engine.prune()
            self._last_maintenance = time.monotonic()
            log.info("maintenance: pruned %d expired behaviours", pruned)
        return list(self.service.engine.shards), due

    def _take_slice(self, keys: list[str]) -> PendingWrite:
        """(engine thread) Those shards' changes with their positions, once every output
        so far is delivered (learning is never stored ahead of the outputs it produced)."""
        self._await_delivery()
        return self.service.take_changes(keys)

    def _snapshot(self) -> tuple[PendingWrite, bool]:
        """(engine thread) The whole snapshot in one step (on revocation)."""
        keys, due = self._begin_snapshot()
        return self._take_slice(keys), due

    async def _write(self, pending: PendingWrite, done: list[EventT], compact: bool) -> list[str]:
        """Write a snapshot, then ack what it covers; returns the shards the fence refused
        (the caller evicts them: their learning in memory is not what LanceDB holds)."""
        loop = asyncio.get_running_loop()
        try:
            shards = await loop.run_in_executor(self.writer, self.service.write, pending)
        except Exception:
            self.failed = True  # acking now would skip events whose learning is not stored
            raise
        fenced = self.service.take_fenced()
        if fenced:
            self.metrics.fenced_writes.inc(len(fenced))
            log.error("refused to write %d shards: partitions %s were claimed by a newer owner while this worker "
                      "stalled; their learning here is dropped and their events left to that owner",
                      len(fenced), sorted(self.service.lost))
        if self._stream is not None:
            for ev in done:
                if not self._lost(ev):
                    await self._stream.ack(ev)
        self.metrics.shards.set(len(self.service.engine.shards))
        if shards:
            log.debug("flushed %d shards, acked %d events", shards, len(done))
        if compact:
            await self._compact()
        return fenced

    async def _compact(self) -> None:
        """(maintenance, after the acks: it does not hold them up)"""
        try:
            tables = await asyncio.get_running_loop().run_in_executor(self.writer, self.service.compact)
        except Exception:
            self.failed = True
            raise
        log.info("maintenance: compacted %d tables", tables)

    def _evict_idle_now(self, before: float) -> list[str]:
        """(engine thread, so no feedback can land between the check and the eviction)"""
        keys = self.service.idle_since(before)
        self.service.evict(keys)
        return keys

    async def release_all(self) -> None:
        """On revocation: persist, then forget every shard so no stale state survives."""
        self.assigned = []
        async with self._write_lock:
            async with self._lock:
                if self.failed:
                    return
                pending, compact = await self._engine(self._snapshot)
                done, self._pending = self._pending, []
                await self._write(pending, done, compact)
                keys = list(self.service.engine.shards)
                await self._engine(self.service.evict, keys)
        self.metrics.shards.set(0)
        if keys:
            log.info("released %d shards (partitions revoked); their next owner reloads them", len(keys))


class App(faust.App):
    """Faust's app without its Monitor among the per-event sensors: the Monitor keeps
    statistics for Faust's web views (disabled here) through a callback on every event
    in and out of a stream, ~3 % of the event loop's time in a py-spy profile of the
    worker; the worker's own Prometheus metrics are counted per batch. (The consumer
    still reports offsets to the Monitor directly.)"""

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies


def create_app(settings: Settings) -> faust.App:
    """The Faust app for these settings (a factory: nothing global, nothing at import)."""
    worker = settings.worker
    app = App(
        worker.group_id,
        **faust_broker_options(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=5,
        web_enabled=False,
        datadir=worker.data_dir,
        # Events are acked only by our flushes: on stop, Faust waiting for every buffered
        # event to be acked held a worker up to its kill timeout. We flush once more
        # instead (on_before_shutdown); what stays unacked is re-read by the next owner,
        # which skips what that flush stored (per-shard positions).
        stream_wait_empty=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
    )
    app.fetch_wait_max_ms = settings.kafka.fetch_wait_max_ms  # type: ignore[attr-defined]  # (see faust_transport)
    metrics = WorkerMetrics()
    agent_state = ScoringAgent(settings, app, metrics)
    raw = app.topic(settings.topics.raw, key_type=bytes, value_type=bytes)

    @app.agent(raw, name="score")
    async def score(stream: Any) -> None:
        async for events in stream.noack_take(worker.batch_size, within=worker.batch_window_s):
            try:
                await agent_state.process(stream, events)
            except Exception as exc:
                # Faust would restart the agent past the failed batch; stop the worker
                # instead, so its partitions go to an owner that re-scores the batch.
                log.exception("scoring failed; stopping this worker without flushing")
                await app.crash(exc)
                return

    feedback = app.topic(settings.topics.feedback, key_type=bytes, value_type=bytes)

    @app.agent(feedback, name="feedback")
    async def on_feedback(stream: Any) -> None:
        async for events in stream.noack_take(100, within=0.5):
            await agent_state.apply_feedback(stream, events)

    @app.timer(interval=settings.lancedb.flush_interval_s)
    async def flush() -> None:
        try:
            if agent_state.flush_due():
                await agent_state.flush()
        except Exception as exc:
            log.exception("writing shards to LanceDB failed; stopping this worker without acking")
            await app.crash(exc)
        await agent_state.refresh_thresholds()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        await agent_state.release_all()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: faust.App, **kwargs: Any) -> None:
        try:
            await agent_state.flush()
            if agent_state.failed:
                log.warning("stopping after a failure: nothing flushed; the next owner re-scores from the last flush")
            else:
                log.info("stopping: learning flushed to LanceDB")
        except Exception:
            log.exception("stopping: the last flush failed; the next owner re-scores from the previous one")

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.topics.raw)
        # A broker restarted with its topics gone (or a topic re-created) has a new
        # incarnation, and every member gets a new assignment: read it again here.
        async with agent_state._lock:
            agent_state.incarnation = await asyncio.get_running_loop().run_in_executor(
                None, topic_incarnation, settings.kafka, settings.topics.raw)
        log.info("assigned %d partitions of %s (topic id %s): %s", len(mine), settings.topics.raw,
                 agent_state.incarnation or "-", mine)
        await agent_state.claim(mine)
        agent_state.assigned = mine

    app.ruleless = agent_state  # type: ignore[attr-defined]
    return app


def run(settings: Settings) -> None:
    """Start one worker process; returns when it is stopped (SIGINT/SIGTERM)."""
    # Every LanceDB call hands work to LanceDB's event-loop thread and back; with the
    # engine thread computing, each handoff waited out Python's 5 ms switch interval
    # (a shard's merge: ~86 ms instead of ~41 ms at 0.5 ms, next to a busy thread).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return_freed_memory()
    ensure_topics(settings.kafka, settings.topics)
    check_copartitioned(settings.kafka, [settings.topics.raw, settings.topics.feedback])
    app = create_app(settings)
    if settings.worker.metrics_port:
        state: ScoringAgent = app.ruleless  # type: ignore[attr-defined]
        HealthServer(settings.worker.metrics_port, settings.metrics_host, ready=state.readiness, alive=state.liveness).start()
    log.info(
        "worker %s: %s -> %s (alerts %s, dead letters %s), shards in %s, algorithm %s (%s build)",
        settings.worker.group_id, settings.topics.raw, settings.topics.scored,
        settings.topics.alerts, settings.topics.dead_letter, settings.lancedb.uri,
        settings.engine.algorithm, getattr(app.ruleless.service.engine.algorithm, "build", "python"),  # type: ignore[attr-defined]
    )
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, override_logging=False)
    worker.execute_from_commandline()
