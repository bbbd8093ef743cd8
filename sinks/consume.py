"""The sink process: scored topic → ``security_events``, offsets committed after the write.

The loop (STYLE.md #5): consume, decode each message, buffer its row; when the buffer
holds ``sink.batch_rows`` messages or its first message is ``sink.batch_age_s`` old, seal
it as a batch and write it: dead letters delivered, rows inserted, then — only then —
the batch's offsets committed synchronously. A failed write is retried with backoff,
unchanged (same rows, same dedup token) while the partitions are paused; nothing past
it is ever committed. Undecodable messages go to the dead-letter topic and the loop
goes on.

Delivery: at-least-once into the table (a crash between insert and commit replays the
batch) and exactly-once rows by ``event_id`` for readers using ``FINAL`` (see
:mod:`sinks.clickhouse`). A rebalance drops the unwritten buffer: those offsets were
never committed, so the partitions' next owner reads them again.

Run as ``python -m sinks.consume`` or ``ruleless sink``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ruleless import failpoints
from ruleless.health import HealthServer, cached
from ruleless.lifecycle import backoff, stop_on_signals
from ruleless.kafka import consumer as make_consumer
from ruleless.kafka import ensure_topics
from ruleless.kafka import producer as make_producer
from ruleless.settings import Settings
from schemas.errors import BackpressureError, DecodeError, ServiceError, SinkWriteError
from schemas.events import dead_letter, decode_scored, encode
from sinks.clickhouse import INSERT_COLUMNS, Backend, Row, dedup_token, event_row, open_backend, rows_table
from sinks.indexer import BehaviourIndexer
from sinks.query import QueryServer, check_bind, ensure_token

log = logging.getLogger(__name__)

# Retry delays for a failed write: doubling from MIN to MAX; at least BACKPRESSURE_MIN
# when the store says it is overloaded.
# After stop, a failing write gets this many more attempts before the sink gives up
# (without committing: the batch is read again on the next start).
SHUTDOWN_ATTEMPTS = 3
SUMMARY_EVERY_S = 30.0
_MAX_CONSUME = 1000
# /healthz fails when the loop has not polled Kafka for this long (a write stuck past
# every timeout); the store is pinged for /readyz at most this often.
STALLED_S = 120.0
STORE_PING_S = 5.0


class SinkMetrics:
    """The sink's Prometheus metrics, in their own registry (several sinks may run in
    one process, e.g. in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("ruleless_sink_messages_total", "Messages read from the scored topic", registry=r)
        self.rows = Counter("ruleless_sink_rows_inserted_total", "Rows inserted into ClickHouse", registry=r)
        self.batches = Counter("ruleless_sink_batches_total", "Batches written and committed", registry=r)
        self.dead_lettered = Counter(
            "ruleless_sink_dead_lettered_total", "Messages sent to the dead-letter topic", registry=r
        )
        self.write_failures = Counter(
            "ruleless_sink_write_failures_total", "Failed batch write attempts (each is retried)", ["kind"], registry=r
        )
        self.dropped_on_rebalance = Counter(
            "ruleless_sink_rebalance_dropped_total", "Unwritten buffered messages dropped on a rebalance (re-read later)", registry=r
        )
        self.insert_seconds = Histogram(
            "ruleless_sink_insert_seconds",
            "Time of one successful insert",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.buffered = Gauge("ruleless_sink_buffered_messages", "Messages read but not yet committed", registry=r)
        self.lag = Gauge("ruleless_sink_consumer_lag", "Messages behind the end of the scored topic (librdkafka stats)", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, 0 when absent (for tests and summaries)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def on_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: total consumer lag over assigned partitions."""
        stats = json.loads(stats_json)
        lag = 0
        for topic in stats.get("topics", {}).values():
            for pid, part in topic.get("partitions", {}).items():
                if pid != "-1" and part.get("consumer_lag", -1) >= 0:
                    lag += part["consumer_lag"]
        self.lag.set(lag)


@dataclass
class Batch:
    """Messages read since the last write: rows, dead-letter count, last offsets."""

    rows: list[Row] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: int = 0
    dead: int = 0
    started: float = 0.0
    # Set when a rebalance took the partitions away: the batch must not be committed.
    abandoned: bool = False

    def track(self, msg: Message) -> None:
        if not self.messages:
            self.started = time.monotonic()
        self.messages += 1
        self.offsets[(msg.topic(), msg.partition())] = msg.offset()

    def commit_offsets(self) -> list[TopicPartition]:
        """Offsets to commit once the batch is written: the next one to read."""
        return [TopicPartition(t, p, off + 1) for (t, p), off in sorted(self.offsets.items())]


class Sink:
    """One sink process: consumer, dead-letter producer, store, query endpoint, metrics.

    ``backend`` lets the caller own the store (it is then neither opened nor closed
    here); by default the store named by ``settings.clickhouse`` is opened and closed.
    """

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.metrics = SinkMetrics()
        self.query_url: str | None = None
        self.query_token: str | None = None
        self._backend = backend
        self._owns_backend = backend is None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._open = Batch()
        self._sealed: Batch | None = None
        self._dead_failed: list[tuple[bytes | None, bytes]] = []
        # Set when a batch was given up at shutdown: nothing after it may be committed.
        self._gave_up = False
        # A row the table holds, re-inserted (a no-op) to tell a refused row from a failing store.
        self._probe: pa.Table | None = None
        self._last_summary = (time.monotonic(), 0.0, 0.0)
        self._assigned: set[tuple[str, int]] = set()
        self._last_poll: float | None = None
        self._store_reachable = cached(self._ping_store, STORE_PING_S)
        self.indexer: BehaviourIndexer | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise ServiceError("sink not started")
        return self._backend

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Consume until ``stop`` is set, then write and commit what is buffered.

        Sets ``ready`` once the table exists, the query endpoint listens and the consumer
        is subscribed. Raises :class:`ServiceError` when a part cannot start.
        """
        self._stop = stop
        with self._started():
            if ready is not None:
                ready.set()
            while not stop.is_set():
                self._poll(self._poll_timeout())
                if self._due():
                    self._write_open()
                self._summarise()
            self._write_open()

    # -- lifecycle ---------------------------------------------------------------

    @contextmanager
    def _started(self) -> Iterator[None]:
        s = self.settings
        if self._backend is None:
            self._backend = open_backend(s.clickhouse)
        query_server: QueryServer | None = None
        metrics_server: HealthServer | None = None
        try:
            self.backend.ensure_schema()
            if s.sink.behaviours:
                self.indexer = BehaviourIndexer(s, self.backend).start()
            try:
                configured = s.sink.query_token.get_secret_value() if s.sink.query_token else None
                # Beyond loopback only with a token someone configured (and so can hand out).
                check_bind(s.sink.query_host, configured, "the query endpoint")
                self.query_token = ensure_token(configured, s.data_dir)
                query_server = QueryServer(self.backend, self.query_token, s.sink.query_host, s.sink.query_port).start()
                self.query_url = query_server.url
                if s.sink.metrics_port:
                    metrics_server = HealthServer(
                        s.sink.metrics_port, s.metrics_host, ready=self.readiness, alive=self.liveness,
                        registry=self.metrics.registry,
                    ).start()  # fmt: skip
            except OSError as exc:
                raise ServiceError(f"sink cannot listen: {exc}") from None
            ensure_topics(s.kafka, s.topics, names=[s.topics.scored, s.topics.dead_letter])
            self._producer = make_producer(s.kafka)
            self._consumer = make_consumer(
                s.kafka,
                s.sink.group_id,
                # Eager rebalancing: on revoke every partition goes back to its committed
                # offset, which is what dropping the unwritten buffer relies on.
                **{
                    "partition.assignment.strategy": "range",
                    "statistics.interval.ms": 5000,
                    "stats_cb": self.metrics.on_stats,
                },
            )
            self._consumer.subscribe([s.topics.scored], on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info(
                "sink: %s -> %s (%s), group %s, batches of %d rows or %.1fs",
                s.topics.scored, self.backend.table, self.backend.kind, s.sink.group_id,
                s.sink.batch_rows, s.sink.batch_age_s,
            )
            yield
        finally:
            self._shutdown(query_server, metrics_server)

    def _shutdown(self, query_server: QueryServer | None, metrics_server: HealthServer | None) -> None:
        if self.indexer is not None:
            self.indexer.close()
            self.indexer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            left = self._producer.flush(10)
            if left:
                log.error("%d dead letters not delivered at shutdown", left)
            self._producer = None
        if query_server is not None:
            query_server.close()
        if metrics_server is not None:
            metrics_server.close()
        if self._owns_backend and self._backend is not None:
            self._backend.close()
            self._backend = None
        log.info(
            "sink stopped: %d rows inserted, %d dead-lettered",
            self.metrics.value("ruleless_sink_rows_inserted_total"),
            self.metrics.value("ruleless_sink_dead_lettered_total"),
        )

    # -- health (ruleless/health.py) ---------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Ready = partitions of the scored topic assigned and the store answering."""
        if not self._assigned:
            return False, f"no partition of {self.settings.topics.scored} assigned (yet)"
        ok, why = self._store_reachable()
        if not ok:
            return False, why
        return True, f"{len(self._assigned)} partitions assigned; {why}"

    def liveness(self) -> tuple[bool, str]:
        """Alive = the loop polled Kafka recently (it does at least every 0.5 s, also
        while a failing write is retried)."""
        if self._last_poll is None:
            return True, "starting"
        idle = time.monotonic() - self._last_poll
        if idle > STALLED_S:
            return False, f"the consume loop has not run for {idle:.0f}s"
        return True, "consuming"

    def _ping_store(self) -> tuple[bool, str]:
        if self._backend is None:
            return False, "store not open"
        self._backend.query("SELECT 1")
        return True, f"store {self._backend.kind} reachable"

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %d partitions: %s", len(partitions), _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}
        # No I/O here: the unwritten messages were never committed, so whoever owns the
        # partitions next (maybe us) reads them again, and event_id dedup absorbs any copy.
        dropped = self._open.messages + (self._sealed.messages if self._sealed else 0)
        if self._sealed is not None:
            self._sealed.abandoned = True
        self._open = Batch()
        self.metrics.buffered.set(0)
        if dropped:
            self.metrics.dropped_on_rebalance.inc(dropped)
        log.info("revoked %d partitions (%d unwritten messages will be re-read)", len(partitions), dropped)

    # -- reading -----------------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        assert self._consumer is not None
        self._last_poll = time.monotonic()
        room = max(1, min(_MAX_CONSUME, self.settings.sink.batch_rows - self._open.messages))
        taken = sum(self._take(msg) for msg in self._consumer.consume(num_messages=room, timeout=timeout))
        if taken:  # (once per poll: a Prometheus counter takes a lock per call)
            self.metrics.consumed.inc(taken)
        self.metrics.buffered.set(self._open.messages + (self._sealed.messages if self._sealed else 0))

    def _poll_timeout(self) -> float:
        if not self._open.messages:
            return 0.5
        left = self.settings.sink.batch_age_s - (time.monotonic() - self._open.started)
        return min(0.5, max(0.0, left))

    def _due(self) -> bool:
        batch = self._open
        if not batch.messages:
            return False
        return (
            batch.messages >= self.settings.sink.batch_rows
            or time.monotonic() - batch.started >= self.settings.sink.batch_age_s
        )

    def _take(self, msg: Message) -> bool:
        """Buffer one message's row (or dead-letter it); False for a consumer error."""
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return False
            if err.fatal():
                raise ServiceError(f"Kafka consumer failed: {err}")
            log.warning("consumer: %s", err)
            return False
        self._open.track(msg)
        try:
            self._open.rows.append(event_row(decode_scored(msg.value() or b"")))
        except DecodeError as exc:
            self._dead_letter(msg, exc)
            self._open.dead += 1
        return True

    def _dead_letter(self, msg: Message, exc: DecodeError) -> None:
        letter = dead_letter(exc, "sink", msg.value() or b"", msg.topic(), msg.partition(), msg.offset())
        self._produce_dead(msg.key(), encode(letter))
        self.metrics.dead_lettered.inc()
        log.debug("dead-lettered %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc.message)

    def _produce_dead(self, key: bytes | None, value: bytes) -> None:
        assert self._producer is not None

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._dead_failed.append((key, value))

        while True:
            try:
                self._producer.produce(self.settings.topics.dead_letter, value, key, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.1)

    # -- writing -----------------------------------------------------------------

    def _write_open(self) -> None:
        """Seal the open buffer and write it, retrying until it is written, the
        partitions are revoked, or (after stop) the shutdown attempts are used up."""
        batch, self._open = self._open, Batch()
        if not batch.messages or self._gave_up:
            return
        self._sealed = batch
        try:
            self._write_with_retry(batch)
        finally:
            self._sealed = None

    def _write_with_retry(self, batch: Batch) -> None:
        table = rows_table(batch.rows)
        token = dedup_token(table) if table.num_rows else None
        attempt = after_stop = 0
        while not batch.abandoned:
            try:
                self._write(batch, table, token)
            except (SinkWriteError, BackpressureError) as exc:
                attempt += 1
                after_stop += self._stop.is_set()
                kind = "backpressure" if isinstance(exc, BackpressureError) else "error"
                self.metrics.write_failures.labels(kind).inc()
                if kind == "error" and attempt % self.settings.sink.max_attempts == 0 and self._isolate(batch, table):
                    self._commit(batch)
                    self._resume()
                    return
                if after_stop >= SHUTDOWN_ATTEMPTS:
                    # Committing any later batch would skip this one: stop committing.
                    self._gave_up = True
                    log.error(
                        "giving up on a batch of %d messages at shutdown: %s; offsets not committed, "
                        "it will be read again on the next start", batch.messages, exc.message,
                    )
                    return
                delay = backoff(attempt, self.settings.sink.retry_min_s, self.settings.sink.retry_max_s, kind == "backpressure")
                log.warning(
                    "batch of %d rows not written (attempt %d, %s): %s; retrying in %.1fs, offsets not committed",
                    table.num_rows, attempt, kind, exc.message, delay,
                )
                self._idle(delay)
                continue
            self._commit(batch)
            if attempt:
                log.info("batch of %d rows written after %d failed attempts", table.num_rows, attempt)
                self._resume()
            return
        log.info("batch of %d messages abandoned after a rebalance; it will be re-read", batch.messages)

    def _isolate(self, batch: Batch, table: pa.Table) -> bool:
        """Insert a failing batch in halves, quarters… down to the rows refused on their
        own, and dead-letter those. False (nothing dead-lettered; retry the batch) when the
        store, not the data, is at fault: a row already in the table (its dedup token
        makes it a no-op) fails too, before or right after a row is refused, or no row
        goes in at all (issue 14: a store recovering mid-isolation had good rows
        dead-lettered; 3,000 single-row chdb inserts took two minutes)."""
        probe = self._probe
        if probe is not None and not self._takes(probe):
            return False
        refused: list[tuple[int, SinkWriteError]] = []
        pending = [range(table.num_rows)]
        while pending:
            part = pending.pop()
            rows = rows_table([batch.rows[i] for i in part])  # (not a slice: dedup_token hashes whole buffers)
            try:
                self._insert(rows, dedup_token(rows))
                probe = probe or rows_table([batch.rows[part[0]]])
            except BackpressureError:
                return False
            except SinkWriteError as exc:
                if len(part) > 1:
                    half = len(part) // 2
                    pending += [part[half:], part[:half]]
                elif probe is not None and not self._takes(probe):
                    return False
                else:
                    refused.append((part[0], exc))
        if probe is None:
            return False
        for i, exc in refused:
            row = json.dumps(dict(zip(INSERT_COLUMNS, batch.rows[i])), default=str).encode()
            self._produce_dead(None, encode(dead_letter(exc, "sink", row, self.settings.topics.scored)))
        if self._producer is not None and self._producer.flush(10):
            raise SinkWriteError(f"dead-letter topic {self.settings.topics.dead_letter}: delivery not confirmed")
        self.metrics.dead_lettered.inc(len(refused))
        self.metrics.rows.inc(table.num_rows - len(refused))
        if refused:
            log.error("%d of %d rows refused by the store after %d attempts, dead-lettered: %s",
                      len(refused), table.num_rows, self.settings.sink.max_attempts, refused[0][1].message)
        else:
            log.info("batch of %d rows written in parts after %d failed attempts; no row refused on its own",
                     table.num_rows, self.settings.sink.max_attempts)
        return True

    def _takes(self, probe: pa.Table) -> bool:
        """Whether the store takes a row it already holds (a no-op insert): if not, the
        store is at fault, not the row just refused."""
        try:
            self._insert(probe, dedup_token(probe))
            return True
        except (SinkWriteError, BackpressureError):
            return False

    def _write(self, batch: Batch, table: pa.Table, token: str | None) -> None:
        """Dead letters delivered, then rows inserted; raises on either failing."""
        assert self._producer is not None
        failed, self._dead_failed = self._dead_failed, []
        for key, value in failed:
            self._produce_dead(key, value)
        if self._producer.flush(10) or self._dead_failed:
            raise SinkWriteError(f"dead-letter topic {self.settings.topics.dead_letter}: delivery not confirmed")
        if table.num_rows:
            started = time.perf_counter()
            self._insert(table, token)
            self.metrics.insert_seconds.observe(time.perf_counter() - started)
            self.metrics.rows.inc(table.num_rows)
            self._probe = rows_table([batch.rows[-1]])

    def _insert(self, table: pa.Table, token: str | None) -> None:
        failpoints.hit("sink.insert", SinkWriteError)
        self.backend.insert(table, token)
        failpoints.hit("sink.inserted")  # (kill only: the rows are in, offsets not committed)

    def _commit(self, batch: Batch) -> None:
        assert self._consumer is not None
        offsets = batch.commit_offsets()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are in the table; not committing only means they are read and
            # collapsed by event_id again.
            log.warning("batch written but offsets not committed (%s); it will be re-read", exc)
            return
        self.metrics.batches.inc()
        log.debug("wrote %d rows, %d dead letters; committed %s", len(batch.rows), batch.dead, _names(offsets))

    def _idle(self, seconds: float) -> None:
        """Wait between write attempts with the partitions paused, polling so the
        consumer stays in its group; anything already fetched joins the open buffer."""
        assert self._consumer is not None
        self._consumer.pause(self._consumer.assignment())
        started = time.monotonic()
        while not (self._sealed and self._sealed.abandoned):
            # A stop shortens the wait so shutdown is not held up by a long backoff.
            limit = min(seconds, 1.0) if self._stop.is_set() else seconds
            left = started + limit - time.monotonic()
            if left <= 0:
                break
            self._poll(min(0.2, left))

    def _resume(self) -> None:
        assert self._consumer is not None
        self._consumer.resume(self._consumer.assignment())

    def _summarise(self) -> None:
        now = time.monotonic()
        since, rows0, dead0 = self._last_summary
        if now - since < SUMMARY_EVERY_S:
            return
        rows = self.metrics.value("ruleless_sink_rows_inserted_total")
        dead = self.metrics.value("ruleless_sink_dead_lettered_total")
        if rows > rows0 or dead > dead0:
            log.info(
                "sink: %d rows inserted, %d dead-lettered in the last %.0fs; lag %d",
                rows - rows0, dead - dead0, now - since, self.metrics.value("ruleless_sink_consumer_lag"),
            )
        self._last_summary = (now, rows, dead)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" + (f"@{tp.offset}" if tp.offset >= 0 else "") for tp in partitions)


def run(settings: Settings, stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
    """Run the sink until ``stop`` is set (or, without ``stop`` in the main thread,
    until SIGINT/SIGTERM); buffered messages are written and committed before return.

    Sets ``ready`` once the table exists and the consumer is subscribed.
    """
    with stop_on_signals("sink (stopping after the current batch)", stop) as event:
        Sink(settings).run(event, ready)


if __name__ == "__main__":
    from ruleless.logs import configure
    from ruleless.settings import load_settings

    main_settings = load_settings()
    configure(main_settings.log_format, main_settings.log_level)
    run(main_settings)
