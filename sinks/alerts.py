"""`ruleless alerts`: tail the alerts topic and forward notifications (a sink of alerts).

The loop: consume alerts (scored events with severity warn/alert, keyed org_id/workload),
let :class:`~sinks.throttle.Throttle` de-duplicate and group them, deliver each due
notification to the target, retrying with exponential backoff while the partitions are
paused (the consumer stays in its group), and commit an offset only once every alert
before it is settled — covered by an accepted notification, dropped as a duplicate, or
dead-lettered. So a webhook outage loses nothing; a notification goes out once per
running forwarder; only a crash between an accepted post and its commit can repeat one,
with the same ``id`` (and ``Idempotency-Key`` header) a receiver can drop.

A behaviour's follow-up window keeps its alerts unsettled until the window's ``repeat``
notification goes out, so committed offsets may trail by up to ``window_s``; a restart
re-reads that span (and may repeat its ``new`` notifications, same ids).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ruleless.kafka import consumer as make_consumer
from ruleless.lifecycle import backoff, stop_on_signals
from ruleless.kafka import ensure_topics
from ruleless.kafka import producer as make_producer
from ruleless.settings import Settings
from schemas.errors import BackpressureError, DecodeError, DeliveryRejected, ServiceError, SinkWriteError
from schemas.events import dead_letter, decode_scored, encode
from sinks.throttle import Outgoing, Ref, Throttle, route_summary
from sinks.webhook import StreamTarget, Target, WebhookTarget

log = logging.getLogger(__name__)

SHUTDOWN_ATTEMPTS = 3


class AlertMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.alerts = Counter("ruleless_alerts_consumed_total", "Alerts read from the alerts topic", registry=r)
        self.duplicates = Counter("ruleless_alerts_dropped_total", "Alerts dropped (duplicate event_id, below min severity)", registry=r)
        self.sent = Counter("ruleless_alerts_notifications_total", "Notifications accepted by the target", ["kind"], registry=r)
        self.failures = Counter("ruleless_alerts_delivery_failures_total", "Failed delivery attempts (retried)", ["kind"], registry=r)
        self.rejected = Counter("ruleless_alerts_rejected_total", "Notifications the target refused for good (dead-lettered)", registry=r)
        self.held = Gauge("ruleless_alerts_held", "Alerts read but not yet in an accepted notification", registry=r)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class _Offsets:
    """Per partition: offsets read and whether each is settled; commit = first unsettled."""

    def __init__(self) -> None:
        self._parts: dict[int, OrderedDict[int, bool]] = {}
        self._next: dict[int, int] = {}

    def read(self, ref: Ref) -> None:
        self._parts.setdefault(ref[0], OrderedDict())[ref[1]] = False
        self._next[ref[0]] = ref[1] + 1

    def settle(self, refs: list[Ref]) -> None:
        for part, offset in refs:
            book = self._parts.get(part)
            if book is not None and offset in book:
                book[offset] = True

    def committable(self) -> dict[int, int]:
        """Offset to commit per partition: everything before it is settled."""
        out = {}
        for part, book in self._parts.items():
            while book and next(iter(book.values())):
                book.popitem(last=False)
            out[part] = next(iter(book)) if book else self._next[part]
        return out

    def forget(self, partitions: set[int]) -> None:
        for part in partitions:
            self._parts.pop(part, None)
            self._next.pop(part, None)


class AlertForwarder:
    """One `ruleless alerts` process: consumer, throttle, target, dead letters, metrics."""

    def __init__(self, settings: Settings, target: Target, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.target = target
        self.clock = clock
        self.metrics = AlertMetrics()
        self.throttle = Throttle(settings.alerts)
        self._offsets = _Offsets()
        self._committed: dict[int, int] = {}
        self._consumer: Consumer | None = None
        self._stop = threading.Event()

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Forward until ``stop`` is set; then deliver what is held, commit and return."""
        self._stop = stop
        s = self.settings
        ensure_topics(s.kafka, s.topics, names=[s.topics.alerts, s.topics.dead_letter])
        self._producer = make_producer(s.kafka)
        self._consumer = make_consumer(s.kafka, s.alerts.group_id, **{"partition.assignment.strategy": "range"})
        self._consumer.subscribe([s.topics.alerts], on_revoke=self._on_revoke)
        log.info("alerts: %s -> %s, group %s (%s)", s.topics.alerts, self.target.describe(),
                 s.alerts.group_id, route_summary(s.alerts.default))
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                self._poll()
                self._deliver(self.throttle.due(self.clock()))
                self._commit()
            self._deliver(self.throttle.due(self.clock(), everything=True))
            self._commit()
        finally:
            self._consumer.close()
            self._producer.flush(10)

    # -- reading -----------------------------------------------------------------------

    def _poll(self) -> None:
        assert self._consumer is not None
        due = self.throttle.next_due()
        wait = 0.5 if due is None else min(0.5, max(0.0, due - self.clock()))
        for msg in self._consumer.consume(500, timeout=wait):
            self._take(msg)
        self.metrics.held.set(self.throttle.held())

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise ServiceError(f"Kafka consumer failed: {err}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
            return
        ref = (msg.partition(), msg.offset())
        self._offsets.read(ref)
        self.metrics.alerts.inc()
        try:
            alert = decode_scored(msg.value() or b"")
        except DecodeError as exc:
            self._dead_letter(msg.value() or b"", exc, msg)
            self._offsets.settle([ref])
            return
        if not self.throttle.add(alert, ref, self.clock()):
            self.metrics.duplicates.inc()
            self._offsets.settle([ref])

    # -- delivering ----------------------------------------------------------------------

    def _deliver(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            if self._deliver_one(out):
                self._offsets.settle(out.refs)

    def _deliver_one(self, out: Outgoing) -> bool:
        """Deliver with retries; True once accepted or dead-lettered (settled)."""
        attempt = after_stop = 0
        while True:
            try:
                self.target.deliver(out.notification)
            except DeliveryRejected as exc:
                self.metrics.rejected.inc()
                log.error("%s; notification %s dead-lettered", exc.message, out.notification.id)
                self._dead_letter(encode(out.notification), exc, None)
                return True
            except (SinkWriteError, BackpressureError) as exc:
                attempt += 1
                after_stop += self._stop.is_set()
                kind = "backpressure" if isinstance(exc, BackpressureError) else "error"
                self.metrics.failures.labels(kind).inc()
                if after_stop >= SHUTDOWN_ATTEMPTS:
                    log.error("giving up on notification %s at shutdown: %s; not committed, it is re-read on restart",
                              out.notification.id, exc.message)
                    return False
                delay = backoff(attempt, self.settings.alerts.retry_min_s, self.settings.alerts.retry_max_s, kind == "backpressure")
                log.warning("notification %s not delivered (attempt %d): %s; retrying in %.1fs",
                            out.notification.id, attempt, exc.message, delay)
                self._idle(delay)
                continue
            self.metrics.sent.labels(out.notification.kind).inc()
            if attempt:
                log.info("notification %s delivered after %d failed attempts", out.notification.id, attempt)
            return True

    def _idle(self, seconds: float) -> None:
        """Wait with the partitions paused, still polling so the group keeps us."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        self._consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                for msg in self._consumer.consume(100, timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    self._take(msg)  # fetched before the pause: keep, never lose
        finally:
            self._consumer.resume(self._consumer.assignment())

    def _dead_letter(self, raw: bytes, exc: Exception, msg: Message | None) -> None:
        where = (msg.topic(), msg.partition(), msg.offset()) if msg is not None else (None, None, None)
        letter = dead_letter(exc, "alerts", raw, *where)
        self._producer.produce(self.settings.topics.dead_letter, encode(letter))
        if self._producer.flush(10):
            raise ServiceError(f"dead-letter topic {self.settings.topics.dead_letter}: delivery not confirmed")

    # -- committing --------------------------------------------------------------------

    def _commit(self) -> None:
        assert self._consumer is not None
        offsets = {p: o for p, o in self._offsets.committable().items() if self._committed.get(p) != o}
        if not offsets:
            return
        tps = [TopicPartition(self.settings.topics.alerts, p, o) for p, o in sorted(offsets.items())]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            log.warning("offsets not committed (%s); those alerts may be re-read", exc)
            return
        self._committed.update(offsets)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Held alerts of these partitions were never committed: their next owner re-reads them.
        parts = {tp.partition for tp in partitions}
        dropped = self.throttle.drop_partitions(parts)
        self._offsets.forget(parts)
        for p in parts:
            self._committed.pop(p, None)
        if dropped:
            log.info("revoked %d partitions; %d held alerts will be re-read by their next owner", len(parts), dropped)


def run(settings: Settings, webhook: str | None = None) -> None:
    """`ruleless alerts`: forward to ``webhook`` (else ``alerts.webhook``, else stdout)
    until SIGINT/SIGTERM."""
    url = webhook or settings.alerts.webhook
    target: Target = WebhookTarget(url, settings.alerts) if url else StreamTarget(sys.stdout)
    forwarder = AlertForwarder(settings, target)
    if settings.alerts.metrics_port:
        start_http_server(settings.alerts.metrics_port, addr=settings.metrics_host, registry=forwarder.metrics.registry)
    with stop_on_signals("alerts") as stop:
        forwarder.run(stop)
    log.info("alerts stopped: %d alerts read, %d notifications delivered",
             forwarder.metrics.value("ruleless_alerts_consumed_total"),
             sum(forwarder.metrics.value("ruleless_alerts_notifications_total", kind=k) for k in ("new", "repeat", "digest")))
