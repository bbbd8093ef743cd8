"""Where the agent's events go: the raw Kafka topic, or JSON lines in a file or stdout.

Both outputs meet :class:`Output`. Counting is by outcome, not by attempt: ``delivered``
goes up when the broker acknowledged an event (Kafka) or the line was handed to the
file (JSON lines); ``failed`` when an event is known lost.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message
from pydantic import SecretStr

from ruleless.kafka import producer
from ruleless.settings import KafkaSettings
from ruleless.tenancy import sign_headers
from schemas.events import RawEvent, encode

log = logging.getLogger(__name__)


class Output(Protocol):
    """A sink for raw events.

    ``publish`` never blocks for long. ``flush(timeout)`` waits up to ``timeout`` s for
    everything published so far to be delivered or failed and returns how many are still
    outstanding (``flush(0)`` must not block). ``close`` flushes and releases.
    ``delivered`` and ``failed`` are running totals.
    """

    delivered: int
    failed: int

    def publish(self, event: RawEvent) -> None: ...

    def flush(self, timeout: float = 30.0) -> int: ...

    def close(self) -> None: ...


class KafkaPublisher:
    """Publish to one topic with the idempotent producer of :func:`ruleless.kafka.producer`.

    Key = ``event.shard_key`` (``org_id/workload``), so one shard's events stay in order
    on one partition; value = :func:`schemas.events.encode`. Delivery is at-least-once:
    librdkafka retries until ``message.timeout.ms`` (default 5 min), after which the
    event counts as failed and is lost (no spool yet). ``producer_config`` overrides
    librdkafka settings.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, signing_key: SecretStr | None = None, **producer_config: Any) -> None:
        self.topic = topic
        self.signing_key = signing_key
        self.delivered = 0
        self.failed = 0
        self._producer = producer(kafka, **producer_config)
        self._last_error: str | None = None

    def publish(self, event: RawEvent) -> None:
        """Queue one event. Waits for room when librdkafka's local queue is full."""
        key = event.shard_key.encode()
        value = encode(event)
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, headers=sign_headers(self.signing_key, value),
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full (broker slow or down): serve callbacks to make room.
                self._producer.poll(0.5)
            except KafkaException as exc:
                self._count_failure(str(exc))
                break
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for outstanding deliveries; return how many remain.

        ``flush(0)`` only serves delivery callbacks, for a caller that must not block.
        """
        remaining = int(self._producer.flush(timeout))
        if remaining and timeout > 0:
            log.warning("kafka: %d events still undelivered after %.0fs", remaining, timeout)
        return remaining

    def close(self) -> None:
        """Flush (up to 30 s); events still undelivered after that count as failed."""
        remaining = int(self._producer.flush(30.0))
        if remaining:
            self.failed += remaining
            log.error("kafka: closing with %d events undelivered; counted as failed", remaining)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._count_failure(err.str())

    def _count_failure(self, reason: str) -> None:
        self.failed += 1
        # Log when the reason changes, not once per event: an outage fails thousands.
        if reason != self._last_error:
            log.error("kafka: event to %s not delivered: %s", self.topic, reason)
            self._last_error = reason


class JsonLinesOutput:
    """One JSON event per line (the raw event contract) to ``path``, or stdout for "-".

    A file is opened for appending, so a restarted agent does not erase earlier events.
    Lines reach the file on :meth:`flush`; stdout is left open on :meth:`close`. Write
    errors (disk full, closed pipe) raise OSError: there is nowhere else to put events.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.delivered = 0
        self.failed = 0
        self._stream: IO[bytes]
        if path == "-":
            self._stream = sys.stdout.buffer
            self._owned = False
        else:
            self._stream = open(path, "ab")
            self._owned = True

    def publish(self, event: RawEvent) -> None:
        self._stream.write(encode(event) + b"\n")
        self.delivered += 1

    def flush(self, timeout: float = 30.0) -> int:
        self._stream.flush()
        return 0

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._stream.close()
